#!/usr/bin/env bash
# Refresh the dashboard's vendored JavaScript (for maintainers; `pip install` never runs it).
#
# Fetches each library's published package with `npm pack`, copies its minified file and
# licence into src/smtpy/web/static/vendor/, and rewrites VERSIONS with the versions and
# sha256 sums. Pages load only these files: no CDN, no Node build at install.
#
# Usage: scripts/vendor-web.sh                 the versions pinned below
#        scripts/vendor-web.sh --latest        each package's current `latest` (see `npm view`)
# Review the diff (and the libraries' changelogs) before committing.
set -euo pipefail
cd "$(dirname "$0")/.."

# package@version  file-in-package  vendored-name
# Alpine is the CSP build: the pages' Content-Security-Policy has no 'unsafe-eval'.
LIBS=(
    "htmx.org@4.0.1 dist/htmx.min.js htmx.min.js"
    "@alpinejs/csp@3.17.4 dist/cdn.min.js alpine-csp.min.js"
    "chart.js@4.6.1 dist/chart.umd.min.js chart.umd.min.js"
)

if [ "${1:-}" = "--latest" ]; then
    for i in "${!LIBS[@]}"; do
        read -r spec file name <<<"${LIBS[$i]}"
        pkg="${spec%@*}"
        [ -n "$pkg" ] || pkg="$spec"
        latest=$(npm view "$pkg" version)
        LIBS[$i]="$pkg@$latest $file $name"
    done
fi

dest=src/smtpy/web/static/vendor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$dest"

# Alpine's packages ship no licence file; its licence (MIT) as published in its repository.
alpine_licence() {
    cat <<'EOF'
MIT License

Copyright © 2019-2021 Caleb Porzio and contributors

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
EOF
}

{
    echo "# The dashboard's vendored JavaScript: package@version, file, sha256 (scripts/vendor-web.sh)"
} >"$work/VERSIONS"

for entry in "${LIBS[@]}"; do
    read -r spec file name <<<"$entry"
    echo "==> $spec"
    (cd "$work" && npm pack --silent "$spec" >/dev/null)
    tarball=$(ls -t "$work"/*.tgz | head -1)
    mkdir -p "$work/pkg"
    rm -rf "$work/pkg/package"
    tar xzf "$tarball" -C "$work/pkg"
    rm -f "$tarball"
    cp "$work/pkg/package/$file" "$dest/$name"
    base="${name%%.*}"
    licence=$(find "$work/pkg/package" -maxdepth 1 -iname 'licen[cs]e*' | head -1)
    if [ -n "$licence" ]; then
        cp "$licence" "$dest/$base.LICENSE"
    else
        alpine_licence >"$dest/$base.LICENSE"
    fi
    sum=$(sha256sum "$dest/$name" | cut -d' ' -f1)
    echo "$spec $name $sum" >>"$work/VERSIONS"
done
cp "$work/VERSIONS" "$dest/VERSIONS"
cat "$dest/VERSIONS"
