"""The one atomic-write module: files through a callback, text, and whole folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cadc_ray.atomic import atomic_directory, write_atomic, write_text_atomic


def test_text_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "new" / "results.json"  # the folder is created
    write_text_atomic(target, "one")
    write_text_atomic(target, "two")
    assert target.read_text(encoding="utf-8") == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["results.json"]


def test_a_failing_writer_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "state.bin"
    target.write_bytes(b"old")

    def half_then_fail(temporary: Path) -> None:
        temporary.write_bytes(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, half_then_fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]


def test_keep_suffix_lets_np_savez_write_the_named_file(tmp_path: Path) -> None:
    target = tmp_path / "mf-d3.npz"
    write_atomic(target, lambda temporary: np.savez(temporary, user=np.eye(2)), keep_suffix=True)
    with np.load(target) as loaded:
        np.testing.assert_array_equal(loaded["user"], np.eye(2))
    assert [p.name for p in tmp_path.iterdir()] == ["mf-d3.npz"]


def test_directory_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "split"
    with pytest.raises(RuntimeError), atomic_directory(target) as temp:
        (temp / "part-0").write_text("x")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(target) as temp:
        (temp / "part-0").write_text("first")
    # A concurrent writer that loses keeps the existing copy...
    with atomic_directory(target) as temp:
        (temp / "part-0").write_text("second")
    assert (target / "part-0").read_text() == "first"
    # ...unless it is told to replace it.
    with atomic_directory(target, replace_existing=True) as temp:
        (temp / "part-0").write_text("third")
    assert (target / "part-0").read_text() == "third"
    assert [p.name for p in tmp_path.iterdir()] == ["split"]
