"""scripts/_setup and scripts/test, run against fakes: a fake python whose venv holds fake
pip, ruff, mypy and pytest, and fake apt-get and id on a PATH without any Chromium. No
network, no real installs; each run takes well under a second."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "scripts" / "_setup"
TEST = ROOT / "scripts" / "test"

# What Debian's python3 says without python3-venv (it leaves a venv with python, no pip).
DEBIAN_NO_ENSUREPIP = """\
The virtual environment was not created successfully because ensurepip is not
available.  On Debian/Ubuntu systems, you need to install the python3-venv
package using the following command.

    apt install python3.11-venv

You may need to use sudo with that command."""

# The fake python: `-m venv DIR` makes DIR/bin/{python,pip,ruff,mypy} (copies of itself) or,
# with FAKE_NO_ENSUREPIP, fails as Debian's does; anything else is logged to $FAKE_CALLS.
# pip warns like this machine's pip configuration does, and fails where FAKE_PIP_FAIL says.
FAKE_PYTHON = f"""#!/bin/sh
if [ "$1 $2" = "-m venv" ]; then
    mkdir -p "$3/bin" && cp "$0" "$3/bin/python"
    if [ -n "$FAKE_NO_ENSUREPIP" ]; then
        cat >&2 <<'EOF'
{DEBIAN_NO_ENSUREPIP}
EOF
        exit 1
    fi
    for tool in pip ruff mypy; do cp "$0" "$3/bin/$tool"; done
    exit 0
fi
echo "$(basename "$0") $*" >>"$FAKE_CALLS"
if [ "$1 $2" = "-m pip" ]; then
    echo "WARNING: Location 'file:///opt/pypi-more/simple/x/' is ignored" >&2
    case "$*" in *"$FAKE_PIP_FAIL"*) echo "ERROR: no matching distribution" >&2; exit 1;; esac
fi
exit 0
"""

# apt-get: logs its arguments and DEBIAN_FRONTEND; `install` puts a chromium on the PATH.
FAKE_APT_GET = """#!/bin/sh
echo "DEBIAN_FRONTEND=$DEBIAN_FRONTEND $*" >>"$FAKE_CALLS"
echo "Reading package lists..."
[ -n "$FAKE_APT_FAIL" ] && { echo "E: Unable to locate package chromium" >&2; exit 100; }
[ "$1" = install ] && printf '#!/bin/sh\\n' >"$(dirname "$0")/chromium" \\
    && chmod +x "$(dirname "$0")/chromium"
exit 0
"""

# The commands the scripts (and the fakes) call: linked into one folder that serves as the
# whole PATH, so that no Chromium of this machine is found.
TOOLS = "bash sh dirname basename cat cp chmod sha1sum cut touch tail sed mkdir date".split()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        if found is None:
            pytest.skip(f"{tool} not found")
        (bin_dir / tool).symlink_to(found)
    _write(bin_dir / "apt-get", FAKE_APT_GET)
    _write(bin_dir / "id", '#!/bin/sh\necho "${FAKE_UID:-0}"\n')
    return {
        "PATH": str(bin_dir),
        "HOME": str(tmp_path),
        "PYTHON": str(_write(tmp_path / "python3", FAKE_PYTHON)),
        "CXRSSL_VENV": str(tmp_path / "venv"),
        "FAKE_CALLS": str(tmp_path / "calls"),
        "FAKE_PIP_FAIL": "no such step",
    }


def _run(script: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(script), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def _calls(env: dict[str, str]) -> list[str]:
    path = Path(env["FAKE_CALLS"])
    return path.read_text().splitlines() if path.exists() else []


def test_setup_without_python3_venv_says_so_in_one_line(env: dict[str, str]) -> None:
    env["FAKE_NO_ENSUREPIP"] = "1"
    for _ in range(2):  # the second run meets the broken venv left by the first
        run = _run(SETUP, env, "report")
        assert run.returncode != 0
        assert run.stdout == ""
        lines = run.stderr.splitlines()
        assert len(lines) == 1, run.stderr
        assert lines[0].startswith("cxrssl setup: cannot create")
        assert "python3-venv" in lines[0] and "apt-get install python3-venv" in lines[0]
    assert _calls(env) == []  # pip never ran in the broken venv


def test_setup_prints_one_line_per_step_then_nothing(env: dict[str, str]) -> None:
    run = _run(SETUP, env, "report,dev")
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    assert run.stderr.splitlines() == [
        "cxrssl setup: pip ... ok",
        "cxrssl setup: torch==2.13.0 ... ok",
        "cxrssl setup: cxrssl[report,dev] ... ok",
    ]
    log = Path(env["CXRSSL_VENV"]) / "setup.log"
    assert "is ignored" in log.read_text()  # pip's warnings went to the log
    installs = [c for c in _calls(env) if c.startswith("python -m pip install")]
    assert installs[1].endswith("torch==2.13.0")
    assert installs[2].endswith(f"-e {ROOT}[report,dev]")  # torch before cxrssl

    again = _run(SETUP, env, "report,dev")
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    assert len(_calls(env)) == len(installs)  # stamped: no pip run


def test_setup_failure_names_the_log(env: dict[str, str]) -> None:
    env["FAKE_PIP_FAIL"] = "-e "
    run = _run(SETUP, env, "report")
    log = Path(env["CXRSSL_VENV"]) / "setup.log"
    assert run.returncode != 0
    lines = run.stderr.splitlines()
    assert lines[2] == f"cxrssl setup: cxrssl[report] ... failed; see {log}"
    assert "ERROR: no matching distribution" in run.stderr  # the log's last lines
    assert not list(log.parent.glob(".cxrssl-setup-*"))  # not stamped: the next run retries


def test_test_script_installs_chromium_as_root_with_apt_get(env: dict[str, str]) -> None:
    env["FAKE_UID"] = "1000"  # not root: no install, the browser test will skip
    run = _run(TEST, env, "-q")
    assert run.returncode == 0, run.stderr
    assert not [c for c in _calls(env) if "apt-get" in c or "install -y" in c]

    env["FAKE_UID"] = "0"
    run = _run(TEST, env, "-q")
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines() == ["cxrssl test: chromium (apt-get) ... ok"]
    apt = [c for c in _calls(env) if c.startswith("DEBIAN_FRONTEND=")]
    assert apt == [
        "DEBIAN_FRONTEND= update",
        "DEBIAN_FRONTEND=noninteractive install -y --no-install-recommends chromium",
    ]
    apt_log = Path(env["CXRSSL_VENV"]) / "chromium-install.log"
    assert "Reading package lists" in apt_log.read_text()  # apt-get's output went to the log
    assert _calls(env)[-1] == "python -m pytest -n 2 -q"

    again = _run(TEST, env)  # chromium is there now
    assert again.returncode == 0 and again.stderr == ""
    assert len([c for c in _calls(env) if c.startswith("DEBIAN_FRONTEND=")]) == 2


def test_test_script_goes_on_when_chromium_install_fails(env: dict[str, str]) -> None:
    env["FAKE_APT_FAIL"] = "1"
    run = _run(TEST, env)
    log = Path(env["CXRSSL_VENV"]) / "chromium-install.log"
    assert run.returncode == 0
    assert f"cxrssl test: chromium (apt-get) ... failed; see {log}" in run.stderr
    assert "Unable to locate package chromium" in run.stderr
    assert _calls(env)[-1].startswith("python -m pytest")  # the suite still runs


def _pyproject() -> dict[str, Any]:
    tomllib = pytest.importorskip("tomllib")
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _requirements(reqs: list[str]) -> dict[str, SpecifierSet]:
    """{name: specifier} of requirement strings such as ``"ruff==0.17.6"``."""
    return {(r := Requirement(req)).name.lower(): r.specifier for req in reqs}


def test_pyproject_floors_and_pinned_tools() -> None:
    project = _pyproject()["project"]
    deps = _requirements(project["dependencies"])
    # pydicom.pixels needs pydicom 3; torch.amp.GradScaler("cuda") needs torch 2.3.
    for name, floor, older in (("pydicom", "3.0.1", "2.4.4"), ("torch", "2.3.0", "2.2.2")):
        spec = deps[name]
        assert floor in spec and older not in spec, (name, spec)
    dev = _requirements(project["optional-dependencies"]["dev"])
    for tool in ("ruff", "mypy"):
        assert re.fullmatch(r"==[0-9.]+", str(dev[tool])), dev[tool]


@pytest.mark.parametrize("tool", ["ruff", "mypy"])
def test_pinned_tools_are_the_installed_ones(tool: str) -> None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version(tool)
    except PackageNotFoundError:
        pytest.skip(f"{tool} not installed here")
    dev = _requirements(_pyproject()["project"]["optional-dependencies"]["dev"])
    assert str(dev[tool]) == f"=={installed}"


def test_setup_cites_no_missing_file() -> None:
    text = SETUP.read_text()
    assert "DEVELOPERS.md" not in text
    assert "set -euo pipefail" in text
