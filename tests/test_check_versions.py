"""scripts/check_versions.sh and scripts/lowest_constraints.py: the floors we declare are
the versions the lowest check installs (the check itself builds a 5.9 GB environment:
docs/versions.md)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import REPO_ROOT, load_script, run_bash_script
from packaging.requirements import Requirement

lowest = load_script("lowest_constraints")
tomllib = lowest.tomllib  # tomli on Python 3.10
CHECK = REPO_ROOT / "scripts" / "check_versions.sh"
PYPROJECT = REPO_ROOT / "pyproject.toml"


@pytest.mark.parametrize(
    ("requirement", "pin"),
    [
        ("ray[default,train,tune,data]>=2.60,<3", "ray==2.60"),
        ("numpy>=1.26", "numpy==1.26"),
        ("pandas >= 2.2.3", "pandas==2.2.3"),
        ("tensorboardX==2.6", "tensorboardX==2.6"),
        ("py-spy>=0.2; python_version < '3.12'", "py-spy==0.2"),
    ],
)
def test_a_requirement_is_pinned_at_its_floor(requirement: str, pin: str) -> None:
    assert lowest.floor_pin(requirement) == pin


@pytest.mark.parametrize("requirement", ["torch", "numpy<3", "x>=1,>=2"])
def test_a_requirement_without_one_floor_is_refused_by_name(requirement: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(requirement))):
        lowest.floor_pin(requirement)


def test_every_declared_requirement_gets_its_floor_in_order(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with PYPROJECT.open("rb") as file:
        declared = tomllib.load(file)["project"]["dependencies"]
    assert lowest.main([str(PYPROJECT)]) == 0
    pins = capsys.readouterr().out.split()
    assert [pin.split("==")[0] for pin in pins] == [Requirement(r).name for r in declared]
    floors = dict(pin.split("==") for pin in pins)
    assert floors["ray"] == "2.60" and floors["threadpoolctl"] == "3.1"


def test_a_pyproject_without_dependencies_fails_with_its_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\n', encoding="utf-8")
    assert lowest.main([str(pyproject)]) == 2
    assert f"{pyproject}: no [project] dependencies" in capsys.readouterr().err


def test_the_lowest_check_builds_with_the_oldest_python_declared() -> None:
    with PYPROJECT.open("rb") as file:
        requires_python = tomllib.load(file)["project"]["requires-python"]
    assert requires_python.startswith(">=")
    oldest = re.search(r"^OLDEST_PYTHON=(\S+)", CHECK.read_text("utf-8"), re.MULTILINE)
    assert oldest is not None and oldest.group(1) == f"python{requires_python[2:]}"


@pytest.fixture
def checkout_copy(tmp_path: Path) -> Path:
    """A copy of the script in a folder of its own, beside a stand-in development ``.venv``:
    were a refusal to break, the script would remove and rebuild that one, not the real."""
    (tmp_path / "scripts").mkdir()
    shutil.copy2(CHECK, tmp_path / "scripts" / CHECK.name)
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "pyvenv.cfg").write_text("home = stand-in\n", encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frobnicate"], "unknown option --frobnicate"),
        (["--python"], "--python needs a value"),
        (["--lowest", "--python", "no-such-python3"], "no interpreter 'no-such-python3' on PATH"),
        (["--python", "false"], "'false' does not run"),  # as a pyenv shim of no active version
        (["--venv", ".venv"], "--venv .venv is the development environment"),
        (["--venv", "./.venv/"], "--venv ./.venv/ is the development environment"),
    ],
)
def test_bad_arguments_are_refused_before_any_environment_is_made(
    checkout_copy: Path, args: list[str], message: str
) -> None:
    script = checkout_copy / "scripts" / CHECK.name
    done = run_bash_script(script, args, dict(os.environ), cwd=checkout_copy, timeout=60)
    assert done.returncode == 2 and message in done.stderr
    assert sorted(path.name for path in checkout_copy.iterdir()) == [".venv", "scripts"]
    assert (checkout_copy / ".venv" / "pyvenv.cfg").read_text(encoding="utf-8") == (
        "home = stand-in\n"
    )


def test_a_folder_that_is_not_a_virtual_environment_is_never_removed(
    checkout_copy: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("not-a-venv")
    kept = folder / "notes.txt"
    kept.write_text("mine", encoding="utf-8")
    script = checkout_copy / "scripts" / CHECK.name
    done = run_bash_script(script, ["--venv", str(folder)], dict(os.environ), timeout=60)
    assert done.returncode == 2
    assert f"{folder} exists and is not a virtual environment" in done.stderr
    assert kept.read_text(encoding="utf-8") == "mine"
