"""pip constraints that pin every run-time requirement of pyproject.toml at its floor.

    python scripts/lowest_constraints.py pyproject.toml > lowest.txt

``ray[default,train,tune,data]>=2.60,<3`` becomes ``ray==2.60``: the oldest release each
requirement admits, so that ``scripts/check_versions.sh --lowest`` installs and tests the
floors we declare rather than the newest releases CI gets. Extras are dropped (pip refuses
them in constraints); what the floors pull in resolves as it would for a user. A
requirement without a floor (``>=`` or ``==``) is refused: it promises every release, and
no one release can check that.

Runs on any Python the package declares (3.10 has no ``tomllib``: ``tomli`` then, which
``check_versions.sh`` installs into the checking environment).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the checking environment of the oldest Python
    import tomli as tomllib


def floor_pin(requirement: str) -> str:
    """One requirement -> ``name==floor``; ValueError when it has no floor."""
    parsed = Requirement(requirement)
    floors = [spec.version for spec in parsed.specifier if spec.operator in (">=", "==")]
    if len(floors) != 1:
        raise ValueError(
            f"requirement {requirement!r} needs exactly one floor (>= or ==) to pin, "
            f"has {len(floors)}"
        )
    return f"{parsed.name}=={floors[0]}"


def lowest_constraints(requirements: Iterable[str]) -> list[str]:
    """Every requirement pinned at its floor, in the order given."""
    return [floor_pin(requirement) for requirement in requirements]


def project_requirements(pyproject: Path) -> list[str]:
    """``[project] dependencies`` of a pyproject.toml (not its optional extras)."""
    with pyproject.open("rb") as file:
        project = tomllib.load(file).get("project", {})
    requirements = project.get("dependencies")
    if not isinstance(requirements, list) or not requirements:
        raise ValueError(f"{pyproject}: no [project] dependencies to pin")
    return [str(requirement) for requirement in requirements]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pyproject", type=Path, help="the project's pyproject.toml")
    args = parser.parse_args(argv)
    try:
        pins = lowest_constraints(project_requirements(args.pyproject))
    except (OSError, ValueError) as error:
        print(f"lowest_constraints: {error}", file=sys.stderr)
        return 2
    print("\n".join(pins))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
