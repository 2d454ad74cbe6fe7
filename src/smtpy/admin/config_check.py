"""Checks on settings beyond their types: files exist, pairs are complete (pure but for reads)."""

from __future__ import annotations

import os

from smtpy.config import LoadedSettings, Settings


def check_loaded(loaded: LoadedSettings) -> list[str]:
    """The SMTPY_* variables that are no setting (they were ignored), then `check_settings`."""
    return [*loaded.warnings, *check_settings(loaded.settings)]


def check_settings(settings: Settings) -> list[str]:
    """Every problem found, each as one line that says what to fix; [] when all is well."""
    problems: list[str] = []
    if (settings.tls_cert is None) != (settings.tls_key is None):
        problems.append("SMTPY_TLS_CERT and SMTPY_TLS_KEY must be set together")
    for name in ("tls_cert", "tls_key"):
        path = getattr(settings, name)
        if path is not None and not os.access(path, os.R_OK):
            problems.append(f"SMTPY_{name.upper()}: {path} is missing or not readable")
    if settings.tls_cert is not None and settings.tls_key is not None and not problems:
        import ssl

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(settings.tls_cert, settings.tls_key)
        except (ssl.SSLError, OSError) as exc:
            problems.append(f"SMTPY_TLS_CERT/SMTPY_TLS_KEY cannot be loaded: {exc}")
    if (settings.relay_username is None) != (settings.relay_password is None):
        problems.append("SMTPY_RELAY_USERNAME and SMTPY_RELAY_PASSWORD must be set together")
    if settings.relay_username is not None and settings.relay_host is None:
        problems.append("SMTPY_RELAY_USERNAME is set but SMTPY_RELAY_HOST is not")
    if settings.hostname in ("localhost", "localhost.localdomain") or "." not in settings.hostname:
        problems.append(
            f"SMTPY_HOSTNAME is {settings.hostname!r}: set it to this forwarder's public FQDN"
        )
    return problems
