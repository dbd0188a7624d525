"""The repository explains itself: no file sends the reader to notes outside it.

Ray facts the code relies on are in docs/ray_notes.md, modelling choices in
docs/method_notes.md. (The raw datasets under ``../shared/data`` are inputs, not docs.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SEARCHED = ("cadc_ray", "scripts", "tests", "docs", "configs", "tune_specs")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".txt"}
# Spelled in two pieces so that this file does not match itself.
OUTSIDE_REFERENCES = ("../shared/" + "docs", "RAY_" + "NOTES")


def searched_files() -> list[Path]:
    files = [REPO / "README.md", REPO / "cluster.yaml", REPO / "pyproject.toml"]
    for folder in SEARCHED:
        files.extend(p for p in sorted((REPO / folder).rglob("*")) if p.suffix in SUFFIXES)
    return [path for path in files if path.is_file()]


def test_the_search_sees_the_code_and_the_docs() -> None:
    names = {path.relative_to(REPO).as_posix() for path in searched_files()}
    assert {"cadc_ray/run.py", "tests/conftest.py", "docs/ray_notes.md"} <= names


@pytest.mark.parametrize("reference", OUTSIDE_REFERENCES)
def test_no_file_points_outside_the_repository(reference: str) -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for path in searched_files()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if reference in line
    ]
    assert not offenders, (
        f"{reference!r} (use docs/ray_notes.md or docs/method_notes.md): {offenders}"
    )
