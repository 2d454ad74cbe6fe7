"""What installs smtpy: the wheel and sdist, shell completion, the systemd units.

The .deb is built, installed and purged by packaging/test-deb.sh (scripts/test.sh
runs it as root); these tests check what every install path relies on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from smtpy import __version__

ROOT = Path(__file__).resolve().parent.parent
SMTPY = Path(sys.executable).parent / "smtpy"
MIGRATIONS = sorted(
    path.relative_to(ROOT / "src").as_posix()
    for path in (ROOT / "src/smtpy/store/migrations").rglob("*")
    if path.is_file() and path.suffix in (".py", ".mako")
)


def _smtpy_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTPY_", "_SMTPY_"))}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_wheel_carries_the_migrations_and_the_man_pages(dist: Path) -> None:
    (wheel,) = dist.glob("smtpy-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        data = f"smtpy-{__version__}.data/data/share/man"
        assert archive.read(f"{data}/man1/smtpy.1") == (ROOT / "man/smtpy.1").read_bytes()
        assert archive.read(f"{data}/man5/smtpy.toml.5") == (ROOT / "man/smtpy.toml.5").read_bytes()
    assert "smtpy/store/migrations/versions/0001_initial_schema.py" in MIGRATIONS
    # the API's offline docs page (smtpy api serves them from the package)
    assert {"smtpy/api/templates/docs.html", "smtpy/api/static/docs.css"} <= names
    missing = [name for name in MIGRATIONS if name not in names]
    assert missing == []


@pytest.mark.slow
def test_sdist_carries_sources_docs_units_and_examples(dist: Path) -> None:
    (sdist,) = dist.glob("smtpy-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.partition("/")[2] for name in archive.getnames()}
    expected = {
        "man/smtpy.1",
        "man/smtpy.toml.5",
        "systemd/smtpy.service",
        "systemd/smtpy-api.service",
        "examples/smtpy.toml",
        "packaging/build-deb.sh",
        "LICENSE",
        "README.md",
        *(f"src/{name}" for name in MIGRATIONS),
    }
    assert expected - names == set()
    assert not [name for name in names if "__pycache__" in name or ".mypy_cache" in name]


@pytest.mark.slow
def test_pip_installs_the_man_pages_where_man_looks(dist: Path, tmp_path: Path) -> None:
    """pip (and so pipx) puts them in PREFIX/share/man, which man derives from PREFIX/bin."""
    (wheel,) = dist.glob("smtpy-*.whl")
    prefix = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(prefix)], check=True, timeout=120
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(prefix / "bin/python"), "install",
         "--quiet", "--no-deps", "--no-index", "--disable-pip-version-check", str(wheel)],
        check=True,
        timeout=120,
    )  # fmt: skip
    assert (prefix / "share/man/man1/smtpy.1").read_bytes() == (ROOT / "man/smtpy.1").read_bytes()
    assert (prefix / "share/man/man5/smtpy.toml.5").is_file()
    assert (prefix / "bin/smtpy").is_file()
    if shutil.which("man"):
        found = subprocess.run(
            ["man", "-w", "smtpy"],
            env={**_smtpy_env(), "PATH": f"{prefix / 'bin'}:/usr/bin:/bin", "MANPATH": ""},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert found.stdout.strip() == str(prefix / "share/man/man1/smtpy.1")


@pytest.mark.parametrize(
    ("shell", "marker"),
    [("bash", "complete -o default -F _smtpy_completion smtpy"), ("zsh", "#compdef smtpy"),
     ("fish", "complete --command smtpy")],
)  # fmt: skip
def test_completion_script_for_each_shell(shell: str, marker: str) -> None:
    result = subprocess.run(
        [str(SMTPY)],
        env=_smtpy_env(_SMTPY_COMPLETE=f"source_{shell}"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert marker in result.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completion_completes_commands_and_options() -> None:
    script = subprocess.run(
        [str(SMTPY)],
        env=_smtpy_env(_SMTPY_COMPLETE="source_bash"),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    probe = (
        script
        + '\nCOMP_WORDS=(smtpy ali); COMP_CWORD=1; _smtpy_completion smtpy; echo "${COMPREPLY[*]}"'
        + "\nCOMP_WORDS=(smtpy alias import --d); COMP_CWORD=3; _smtpy_completion smtpy;"
        + ' echo "${COMPREPLY[*]}"\n'
    )
    env = _smtpy_env(PATH=f"{SMTPY.parent}:{os.environ.get('PATH', '')}")
    result = subprocess.run(
        ["bash", "-c", probe], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.splitlines() == ["alias", "--domain --dry-run"], result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd is not installed")
def test_systemd_units_verify_and_rate_two_or_lower() -> None:
    result = subprocess.run(
        [str(ROOT / "packaging/check-systemd.sh")],
        env=_smtpy_env(PATH=f"{SMTPY.parent}:{os.environ.get('PATH', '')}"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "verify: OK" in result.stdout
    assert result.stdout.count("Overall exposure level") == 2
