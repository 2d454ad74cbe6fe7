#!/usr/bin/env bash
# Check smtpy's systemd units without a running systemd: `systemd-analyze
# verify` must pass and `systemd-analyze security --offline=true` must rate
# each unit 2.0 or lower. Prints both reports; exits non-zero on a failure.
#
# verify checks that ExecStart's program and the Documentation= man pages
# exist. With the Debian package installed (scripts/test.sh checks at that
# point) the units are verified as they are; otherwise a copy pointing at the
# smtpy on PATH (or .venv/bin/smtpy) is verified, without the man page check.
#
# Usage: packaging/check-systemd.sh [UNIT_FILE...]   (default: systemd/*.service)
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_EXPOSURE=2.0
# systemd-analyze's --threshold is on the 0-100 scale behind the 0.0-10.0 rating.
threshold=$(awk -v max="$MAX_EXPOSURE" 'BEGIN { printf "%d", max * 10 }')

if [ $# -gt 0 ]; then units=("$@"); else units=(systemd/*.service); fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
verify_args=()
if [ -x /usr/bin/smtpy ]; then
    to_verify=("${units[@]}")
else
    smtpy=$(command -v smtpy || true)
    [ -n "$smtpy" ] || smtpy="$PWD/.venv/bin/smtpy"
    if [ ! -x "$smtpy" ]; then
        echo "check-systemd: no smtpy program to verify the units against; install smtpy first" >&2
        exit 2
    fi
    echo "==> /usr/bin/smtpy is not installed: verifying copies that run $smtpy, without the man page check"
    to_verify=()
    for unit in "${units[@]}"; do
        sed "s#/usr/bin/smtpy#$smtpy#" "$unit" >"$work/$(basename "$unit")"
        to_verify+=("$work/$(basename "$unit")")
    done
    verify_args=(--man=no)
fi

status=0
echo "==> systemd-analyze verify ${units[*]}"
if systemd-analyze verify "${verify_args[@]}" "${to_verify[@]}"; then
    echo "verify: OK"
else
    echo "verify: FAILED" >&2
    status=1
fi

for unit in "${units[@]}"; do
    echo "==> systemd-analyze security --offline=true $unit (must be $MAX_EXPOSURE or lower)"
    if ! systemd-analyze security --offline=true --threshold="$threshold" --no-pager "$unit"; then
        echo "security: $unit is rated above $MAX_EXPOSURE" >&2
        status=1
    fi
done
exit $status
