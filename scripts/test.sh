#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh Debian machine, then run it
# on SQLite and PostgreSQL: Debian packages (PostgreSQL, the reference SRS and
# DKIM implementations the interop tests compare against), a virtualenv with
# smtpy and its test extras, a PostgreSQL cluster started here. Before pytest
# it builds the wheel and sdist, and builds, installs and purges the .deb.
# Usage: scripts/test.sh [PYTEST ARGS...]     (run as root or with sudo)
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

packages=(postgresql libmail-srs-perl libmail-dkim-perl swaks man-db python3-venv systemd clamav-daemon spamassassin spamd chromium)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "==> virtualenv .venv with smtpy[postgres,test]"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[postgres,test]'
# Bytecode for the editable source too (PYTHONDONTWRITEBYTECODE may be set): each
# `smtpy` process the tests start would compile it again.
.venv/bin/python -m compileall -q src >/dev/null

echo "==> PostgreSQL"
version=$(ls /usr/lib/postgresql | sort -V | tail -1)
pg_lsclusters -h | awk '{print $1, $2}' | grep -q "^$version main$" || $SUDO pg_createcluster "$version" main >/dev/null
pg_ctlcluster "$version" main status >/dev/null 2>&1 || $SUDO pg_ctlcluster "$version" main start
$SUDO su postgres -c "psql -v ON_ERROR_STOP=1 -q" <<'SQL'
DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='smtpy') THEN CREATE ROLE smtpy LOGIN CREATEDB PASSWORD 'smtpy'; END IF; END$$;
SELECT 'CREATE DATABASE smtpy OWNER smtpy' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname='smtpy')\gexec
SQL
export SMTPY_TEST_POSTGRES_URL="postgresql://smtpy:smtpy@127.0.0.1:5432/smtpy"

echo "==> ruff and mypy"
.venv/bin/ruff check src tests bench
.venv/bin/mypy

echo "==> wheel and sdist (python -m build)"
rm -rf build dist
.venv/bin/python -m build --outdir dist . >dist.log 2>&1 || { cat dist.log; exit 1; }
rm -f dist.log
ls dist

# Builds the .deb from that wheel, installs it, checks `smtpy --version`,
# `man smtpy`, completion and the systemd units (systemd-analyze verify and
# security), then purges it. SMTPY_TEST_SKIP_DEB=1 skips it on a machine
# where smtpy is installed for real.
if [ "${SMTPY_TEST_SKIP_DEB:-}" = 1 ]; then
    echo "==> Debian package: skipped (SMTPY_TEST_SKIP_DEB=1)"
else
    echo "==> Debian package"
    $SUDO packaging/test-deb.sh dist/smtpy-*-py3-none-any.whl
fi

echo "==> pytest (SQLite and PostgreSQL)"
# Three workers on two cores: most tests wait on the real processes they start.
exec .venv/bin/pytest -n 3 -p no:cacheprovider "$@"
