# smtpy in a container: `smtpy serve` as an unprivileged user, the store in a
# volume at /var/lib/smtpy. See compose.yaml for a ready setup (with an
# optional PostgreSQL). Build: docker build -t smtpy .
#
# Settings come from SMTPY_* variables (or a TOML file mounted at
# /etc/smtpy/smtpy.toml); SMTPY_HOSTNAME must be this forwarder's public name.
# Port 25 binds without root: Docker (20.10 and later) and Podman let
# unprivileged processes bind low ports inside a container.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml MANIFEST.in README.md LICENSE ./
COPY man ./man
COPY src ./src
RUN python -m venv /opt/smtpy \
    && /opt/smtpy/bin/pip install --no-cache-dir --disable-pip-version-check ".[postgres]"

FROM python:${PYTHON_VERSION}-slim-bookworm
LABEL org.opencontainers.image.title="smtpy" \
      org.opencontainers.image.description="Self-hosted mail forwarder: SRS, DKIM, a durable queue" \
      org.opencontainers.image.licenses="MIT"
# A fixed uid/gid, so volume ownership is the same on every host.
RUN groupadd --system --gid 10025 smtpy \
    && useradd --system --uid 10025 --gid smtpy --home-dir /var/lib/smtpy \
        --shell /usr/sbin/nologin smtpy \
    && install -d -o smtpy -g smtpy -m 0750 /var/lib/smtpy
COPY --from=build /opt/smtpy /opt/smtpy
ENV PATH="/opt/smtpy/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    SMTPY_STATE_DIR=/var/lib/smtpy \
    SMTPY_LISTEN="0.0.0.0:25"
USER 10025:10025
WORKDIR /var/lib/smtpy
VOLUME ["/var/lib/smtpy"]
EXPOSE 25
# Healthy when the SMTP listener answers with its 220 greeting.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import smtplib; smtplib.SMTP('127.0.0.1', 25, timeout=4).quit()"]
STOPSIGNAL SIGTERM
CMD ["smtpy", "serve"]
