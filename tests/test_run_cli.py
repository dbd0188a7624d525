"""``python -m cadc_ray.run``: bad configs and bad data paths exit 2 before Ray starts."""

from __future__ import annotations

from pathlib import Path

import pytest

import cadc_ray.runtime.session
from cadc_ray import run

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to start or join Ray fails the test."""

    def refuse(*args: object, **kwargs: object) -> bool:
        raise AssertionError("Ray must not start for a bad config")

    monkeypatch.setattr(cadc_ray.runtime.session, "init_ray", refuse)


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_unknown_key_exits_2_naming_the_key(
    tmp_path: Path, no_ray: None, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write(tmp_path, "train:\n  epochz: 3\n")
    assert run.main([config]) == 2
    error = capsys.readouterr().err
    assert "config error" in error and "train.epochz: unknown key" in error and config in error


@pytest.mark.parametrize(
    ("config_text", "override", "message"),
    [
        ("method: cadc\n", "train.epochs=many", "train.epochs: expected an integer, got 'many'"),
        ("method: cadc\n", "eval.validation_users=0", "eval.validation_users: must be >= 1"),
        (
            "method: gs\ntrain:\n  weight_decay: 0.001\n",
            "train.id_table_updates=sparse",
            "train.id_table_updates: 'sparse' (torch.optim.SparseAdam) has no weight decay",
        ),
    ],
)
def test_a_bad_override_exits_2_naming_the_key(
    tmp_path: Path,
    no_ray: None,
    capsys: pytest.CaptureFixture[str],
    config_text: str,
    override: str,
    message: str,
) -> None:
    config = _write(tmp_path, config_text)
    assert run.main([config, "--set", override]) == 2
    assert message in capsys.readouterr().err


def test_cross_field_error_and_missing_file_exit_2(
    tmp_path: Path, no_ray: None, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write(tmp_path, "method: random\nmodel:\n  integration: init_frz\n")
    assert run.main([config]) == 2
    assert "model.integration" in capsys.readouterr().err
    assert run.main([str(tmp_path / "absent.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_missing_dataset_folder_exits_2_before_ray(
    tmp_path: Path, no_ray: None, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write(
        tmp_path,
        f"output_root: {tmp_path / 'runs'}\ndata:\n  dataset: ml-100k\n  path: {tmp_path / 'nowhere'}\n",
    )
    assert run.main([config]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_shipped_configs_load() -> None:
    from cadc_ray.config import load_config

    for name in ("synthetic", "ml-100k", "ml-1m"):
        config = load_config(REPO_ROOT / "configs" / f"{name}.yaml")
        assert config.model.embedding_dim == config.pretrain.embedding_dim + 1
        assert config.data.path is None  # never a hard-coded data location
