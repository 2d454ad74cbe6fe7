#!/usr/bin/env bash
# Build the Debian package, install it on this machine, check what an admin
# would check, and purge it again so the machine stays as it was. Run as root
# (CI and scripts/test.sh do). Also runs packaging/check-systemd.sh against the
# installed command and man pages.
#
# Usage: packaging/test-deb.sh [WHEEL]
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

if dpkg-query -W -f='${Status}' smtpy 2>/dev/null | grep -q installed; then
    echo "test-deb: a smtpy package is already installed here; purge it first (dpkg --purge smtpy), or skip this check with SMTPY_TEST_SKIP_DEB=1" >&2
    exit 2
fi
if getent passwd smtpy >/dev/null || [ -e /var/lib/smtpy ] || [ -e /etc/smtpy ]; then
    echo "test-deb: a smtpy user, /var/lib/smtpy or /etc/smtpy exists already; not touching them (SMTPY_TEST_SKIP_DEB=1 skips this check)" >&2
    exit 2
fi

deb=$(packaging/build-deb.sh "$@" | tail -1)
built=$(date +%s)
echo "==> dpkg -i $deb"
trap 'dpkg --purge smtpy >/dev/null 2>&1 || true' EXIT
dpkg -i "$deb" >/dev/null

echo "==> smtpy --version"
smtpy --version
echo "==> man smtpy; man 5 smtpy.toml"
MANPAGER=cat MANWIDTH=80 man smtpy | head -8
MANPAGER=cat MANWIDTH=80 man 5 smtpy.toml | grep -q SMTPY_DATABASE_URL
echo "==> the smtpy user runs the command with the installed settings"
id smtpy
SMTPY_HOSTNAME=mx.example.net runuser -u smtpy -- smtpy config check
echo "==> bash completion"
completed=$(bash -c 'source /usr/share/bash-completion/completions/smtpy
    COMP_WORDS=(smtpy ali); COMP_CWORD=1; _smtpy_completion smtpy; echo "${COMPREPLY[*]}"')
[ "$completed" = "alias" ] || { echo "bash completion offered '$completed'" >&2; exit 1; }
echo "alias"
packaging/check-systemd.sh

echo "==> dpkg --purge smtpy"
dpkg --purge smtpy >/dev/null
trap - EXIT
for leftover in /usr/bin/smtpy /usr/lib/smtpy /etc/smtpy /var/lib/smtpy; do
    if [ -e "$leftover" ]; then echo "purge left $leftover behind" >&2; exit 1; fi
done
if getent passwd smtpy >/dev/null || getent group smtpy >/dev/null; then
    echo "purge left the smtpy user or group behind" >&2
    exit 1
fi
end=$(date +%s)
echo "==> Debian package OK: built in $((built - start)) s, installed, checked and purged in $((end - built)) s"
