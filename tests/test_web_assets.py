"""The dashboard's files: vendored JavaScript as VERSIONS says, with licences; no inline script
or style (the Content-Security-Policy would block it); templates and static files in the
wheel."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "src/smtpy/web"
VENDOR = WEB / "static/vendor"


def test_vendored_files_match_versions_and_have_licences() -> None:
    lines = [
        line.split()
        for line in (VENDOR / "VERSIONS").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    names = {"htmx.min.js", "alpine-csp.min.js", "chart.umd.min.js"}
    assert {name for _, name, _ in lines} == names
    for spec, name, digest in lines:
        data = (VENDOR / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, f"{name} is not {spec}"
        licence = VENDOR / (name.split(".")[0] + ".LICENSE")
        assert licence.read_text().strip(), f"{name} has no licence"
    assert any(spec.startswith("htmx.org@4.") for spec, _, _ in lines)


INLINE = [
    (re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I), "an inline <script>"),
    (re.compile(r"<style\b", re.I), "a <style> element"),
    (re.compile(r"\sstyle=", re.I), "a style attribute"),
    (re.compile(r"\son[a-z]+=", re.I), "an on… event handler attribute"),
    (re.compile(r"javascript:", re.I), "a javascript: URL"),
    (re.compile(r"\shx-on", re.I), "hx-on (evaluated code)"),
    (re.compile(r"//(?:cdn|unpkg|cdnjs)\.", re.I), "a CDN"),
]


JINJA_COMMENT = re.compile(r"\{#.*?#\}", re.S)


def test_templates_hold_no_inline_script_or_style() -> None:
    templates = sorted((WEB / "templates").rglob("*.html"))
    assert templates
    found = [
        f"{path.relative_to(WEB)}: {what}"
        for path in templates
        for pattern, what in INLINE
        if pattern.search(JINJA_COMMENT.sub("", path.read_text()))
    ]
    assert found == []


def test_own_scripts_evaluate_no_strings() -> None:
    for path in (WEB / "static/js").glob("*.js"):
        text = path.read_text()
        assert "eval(" not in text and "new Function" not in text, path.name


@pytest.mark.slow
def test_the_wheel_ships_every_template_and_static_file(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = tmp_path.glob("smtpy-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    wanted = {
        path.relative_to(ROOT / "src").as_posix()
        for folder in ("templates", "static")
        for path in (WEB / folder).rglob("*")
        if path.is_file()
    }
    assert wanted
    assert sorted(wanted - names) == []
