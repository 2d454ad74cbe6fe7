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
echo "==> smtpy api as the smtpy user (the command of smtpy-api.service): ready, docs, SIGTERM exits 0"
test -f /lib/systemd/system/smtpy-api.service
api_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_smtpy=(setpriv --reuid=smtpy --regid=smtpy --init-groups env HOME=/var/lib/smtpy SMTPY_HOSTNAME=mx.example.net
    SMTPY_API_LISTEN="127.0.0.1:$api_port")
"${as_smtpy[@]}" smtpy db upgrade >/dev/null
"${as_smtpy[@]}" smtpy api 2>/tmp/smtpy-api-test.log &
api_pid=$!
trap 'kill "$api_pid" 2>/dev/null || true; dpkg --purge smtpy >/dev/null 2>&1 || true' EXIT
python3 - "$api_port" <<'PY'
import sys, time, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(120):
    try:
        with urllib.request.urlopen(base + "/readyz", timeout=2) as answer:
            assert answer.status == 200
            break
    except OSError:
        time.sleep(0.5)
else:
    sys.exit("smtpy api did not become ready within 60 s")
with urllib.request.urlopen(base + "/api/docs", timeout=10) as answer:
    assert b"smtpy API" in answer.read() and answer.headers["X-Frame-Options"] == "DENY"
with urllib.request.urlopen(base + "/api/docs/docs.css", timeout=10) as answer:
    assert answer.headers["Content-Type"].startswith("text/css")
print("ready, /api/docs served from the package")
PY
kill -TERM "$api_pid"
api_status=0
wait "$api_pid" || api_status=$?
[ "$api_status" = 0 ] || { echo "smtpy api exited $api_status after SIGTERM:" >&2; cat /tmp/smtpy-api-test.log >&2; exit 1; }
grep -q '"event": "started"' /tmp/smtpy-api-test.log
rm -f /tmp/smtpy-api-test.log
trap 'dpkg --purge smtpy >/dev/null 2>&1 || true' EXIT
echo "smtpy api: exit 0 after SIGTERM"

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
