#!/usr/bin/env bash
# Build a Debian package of smtpy from its wheel.
#
# The package holds a self-contained virtualenv in /usr/lib/smtpy, made with
# Debian's own python3 and holding smtpy[postgres] and its dependencies from
# PyPI (the only network access), with /usr/bin/smtpy linked to its command.
# It also installs the systemd units (not enabled: configure, then
# `systemctl enable --now smtpy`), the man pages, shell completion for bash,
# zsh and fish, and /etc/smtpy/smtpy.toml (a conffile: every setting commented
# out). postinst creates the `smtpy` system user; purge removes the user, the
# store in /var/lib/smtpy and /etc/smtpy.
#
# Usage: packaging/build-deb.sh [WHEEL]     (default: builds the wheel first)
# Prints the path of the .deb on its last line, in dist/ (or $OUT).
# Needs: dpkg-deb, Debian's python3 with venv, and a Python with `build`
# ($PYTHON, default .venv/bin/python) when no wheel is given.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-dist}
PREFIX=/usr/lib/smtpy
# Debian's interpreter, by its versioned name: the virtualenv's compiled
# dependencies fit this Python version only, so the package depends on it.
target_python=$(readlink -f "${DEB_PYTHON:-/usr/bin/python3}")
python_version=$("$target_python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
arch=$(dpkg --print-architecture)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$OUT"
wheel=${1:-}
if [ -z "$wheel" ]; then
    rm -rf build  # setuptools reuses build/lib, stale files included
    "$PYTHON" -m build --wheel --outdir "$work/wheel" . >&2
    cp "$work"/wheel/smtpy-*-py3-none-any.whl "$OUT/"
    wheel=$(echo "$work"/wheel/smtpy-*-py3-none-any.whl)
fi
version=$(basename "$wheel" | cut -d- -f2)
deb_version="$version-1"
stage="$work/smtpy_$deb_version"
venv="$stage$PREFIX"

echo "==> [${SECONDS}s] virtualenv $PREFIX with $(basename "$wheel") for python$python_version" >&2
"$target_python" -m venv --without-pip "$venv"
"$PYTHON" -m pip --python "$venv/bin/python" install --quiet --disable-pip-version-check \
    --no-compile --no-warn-script-location "$(readlink -f "$wheel")[postgres]" >&2

echo "==> [${SECONDS}s] shell completion" >&2
completions=(
    "bash:usr/share/bash-completion/completions/smtpy"
    "zsh:usr/share/zsh/vendor-completions/_smtpy"
    "fish:usr/share/fish/vendor_completions.d/smtpy.fish"
)
for entry in "${completions[@]}"; do
    shell=${entry%%:*} path=${entry#*:}
    mkdir -p "$(dirname "$stage/$path")"
    _SMTPY_COMPLETE="source_$shell" "$venv/bin/smtpy" >"$stage/$path"
    grep -q smtpy "$stage/$path"
done

echo "==> [${SECONDS}s] relocating the virtualenv to $PREFIX" >&2
grep -rlI --null "$venv" "$venv/bin" "$venv/pyvenv.cfg" | xargs -0 sed -i "s#$venv#$PREFIX#g"
find "$venv" -name direct_url.json -delete  # names the build's temporary wheel path
"$target_python" -m compileall -q -j0 -s "$stage" -p / --invalidation-mode unchecked-hash \
    "$venv/lib" >/dev/null
mkdir -p "$stage/usr/bin"
ln -s "$PREFIX/bin/smtpy" "$stage/usr/bin/smtpy"

echo "==> [${SECONDS}s] man pages, units, settings, docs" >&2
# The pages the wheel installed (dependencies' own pages stay inside the virtualenv).
for page in man1/smtpy.1 man5/smtpy.toml.5; do
    mkdir -p "$stage/usr/share/man/$(dirname "$page")"
    gzip -9n -c "$venv/share/man/$page" >"$stage/usr/share/man/$page.gz"
    rm "$venv/share/man/$page"
done
install -D -m 0644 -t "$stage/lib/systemd/system" systemd/*.service
mkdir -p "$stage/etc/smtpy"
{
    echo "# Installed by the smtpy Debian package. Every setting is commented out: smtpy"
    echo "# uses its defaults until you uncomment and edit one (hostname first)."
    echo "# This file is readable by the smtpy group only: it may hold secrets."
    echo "#"
    sed -E 's/^([a-z_]+ *=|\[)/# \1/' examples/smtpy.toml
} >"$stage/etc/smtpy/smtpy.toml"
chmod 0640 "$stage/etc/smtpy/smtpy.toml"
doc="$stage/usr/share/doc/smtpy"
install -D -m 0644 LICENSE "$doc/copyright"
install -m 0644 README.md "$doc/"
[ ! -e CHANGELOG.md ] || gzip -9n -c CHANGELOG.md >"$doc/changelog.gz"
mkdir -p "$doc/examples"
cp -r examples/. "$doc/examples/"
find "$doc/examples" -type d -exec chmod 0755 {} + && find "$doc/examples" -type f -exec chmod 0644 {} +

echo "==> [${SECONDS}s] control files" >&2
mkdir -p "$stage/DEBIAN"
installed_size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat >"$stage/DEBIAN/control" <<EOF
Package: smtpy
Version: $deb_version
Architecture: $arch
Maintainer: The smtpy developers <maintainers@smtpy.example>
Installed-Size: $installed_size
Depends: python$python_version, passwd
Recommends: man-db
Section: mail
Priority: optional
Homepage: https://smtpy.example/
Description: self-hosted mail forwarder with SRS, DKIM and a durable queue
 smtpy serve is the MX of your domains: it accepts mail for known
 recipients only, resolves aliases, rewrites the envelope sender with SRS,
 signs with DKIM, stores every accepted message durably before it answers
 250, and delivers it with retries or bounces it with a DSN. The smtpy
 command manages domains, aliases, DKIM keys and the queue, on SQLite or
 PostgreSQL.
EOF
echo "/etc/smtpy/smtpy.toml" >"$stage/DEBIAN/conffiles"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm \
    "$stage/DEBIAN/"

deb="$OUT/smtpy_${deb_version}_${arch}.deb"
# zstd: a second where xz takes half a minute; dpkg reads it since 1.21.18 (Debian 12).
dpkg-deb --root-owner-group -Zzstd --build "$stage" "$deb" >&2
echo "==> [${SECONDS}s] built $deb" >&2
echo "$deb"
