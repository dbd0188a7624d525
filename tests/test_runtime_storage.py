"""Train storage paths: URIs reach Ray unchanged, local paths become absolute."""

from __future__ import annotations

from pathlib import Path

import pytest

from cadc_ray.runtime.trainer import local_checkpoint_root, train_storage_path


def test_uri_storage_is_passed_through_unchanged() -> None:
    assert train_storage_path("s3://bucket/sweeps/ratio/train") == "s3://bucket/sweeps/ratio/train"
    # Local mode writes with plain file I/O: no local folder may be derived from a URI.
    assert local_checkpoint_root("s3://bucket/x", "ttnn") is None


def test_local_storage_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert train_storage_path("runs/train") == str(tmp_path / "runs" / "train")
    assert local_checkpoint_root("runs/train", "ttnn") == "runs/train/ttnn/local_checkpoints"
    assert train_storage_path(None) is None
