"""The ``residual`` integration (METHOD 1.7), the calibrated ALS rows and Figure 1's references.

Starts at the teacher exactly, learns a nonzero correction, keeps the teacher's tables frozen
and counted once; ALS rows keep ALS's ranking; epoch 0 (the teacher) can be the best epoch.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cadc_ray.config import ConfigError, ExperimentConfig, ModelConfig, from_dict, validate
from cadc_ray.data.features import EntityFeatures
from cadc_ray.models import PretrainedTables, build_two_tower, count_parameters
from cadc_ray.models.embeddings import FrozenIdEmbedding
from cadc_ray.models.residual import ResidualTwoTower, TeacherLogits
from cadc_ray.pretrain.als import calibrated_tables, fit_als, platt_scale
from cadc_ray.training.loops import train_two_tower_epoch
from cadc_ray.training.optim import make_optimizer
from cadc_ray.training.samplers import build_negative_sampler

NUM_USERS, NUM_ITEMS, WIDTH = 7, 9, 5  # WIDTH = d + 1
CONFIG = ModelConfig(embedding_dim=WIDTH, feature_embedding_dim=3, tower_hidden=(8,), output_dim=4)


def _tables(pretrainer: str = "mf", global_bias: float = 0.7, seed: int = 0) -> PretrainedTables:
    rng = np.random.default_rng(seed)
    return PretrainedTables(
        user=rng.normal(0.0, 0.5, (NUM_USERS, WIDTH)).astype(np.float32),
        item=rng.normal(0.0, 0.5, (NUM_ITEMS, WIDTH)).astype(np.float32),
        pretrainer=pretrainer,
        global_bias=global_bias,
    )


def _item_features() -> EntityFeatures:
    rng = np.random.default_rng(1)
    return EntityFeatures(
        categorical=rng.integers(0, 3, (NUM_ITEMS, 1)).astype(np.int64),
        categorical_names=("year",),
        categorical_cardinalities=(3,),
        multi_hot=(rng.random((NUM_ITEMS, 2)) < 0.5).astype(np.float32),
        multi_hot_name="genres",
    )


def _model(tables: PretrainedTables, seed: int = 0) -> ResidualTwoTower:
    torch.manual_seed(seed)
    model = build_two_tower(
        CONFIG, NUM_USERS, NUM_ITEMS, None, _item_features(), tables, "residual"
    )
    assert isinstance(model, ResidualTwoTower)
    return model


def _hand_teacher(tables: PretrainedTables) -> np.ndarray:
    """(U, I) float64 teacher logits as trained: MF with biases and b; ALS u.v + b."""
    user, item = tables.user.astype(np.float64), tables.item.astype(np.float64)
    if tables.pretrainer == "als":
        return user @ item.T + tables.global_bias
    return user[:, :-1] @ item[:, :-1].T + user[:, -1:] + item[:, -1][None, :] + tables.global_bias


@pytest.mark.parametrize("pretrainer", ["mf", "als"])
def test_at_init_the_model_is_the_teacher_exactly(pretrainer: str) -> None:
    tables = _tables(pretrainer)
    model = _model(tables)
    users = torch.tensor([0, 0, 3, 6, 2])
    items = torch.tensor([1, 8, 3, 0, 8])
    expected = _hand_teacher(tables)
    logits = model(users, items)
    assert logits.shape == (5,)
    assert np.allclose(logits.detach().numpy(), expected[users, items], atol=1e-5)
    assert torch.equal(model.correction(users, items), torch.zeros(5))  # exactly zero
    all_users = torch.arange(NUM_USERS)
    scores = model.ranking_scorer()(all_users)
    assert scores.shape == (NUM_USERS, NUM_ITEMS)
    assert np.allclose(scores.numpy(), expected, atol=1e-5)
    # Only the user tower starts at zero: the item tower's output is random, so the zeroed
    # layer gets the gradient item_output * dLoss/dlogit (zeroing both would never train).
    assert model.user_tower(all_users).abs().max() == 0
    assert model.item_tower(torch.arange(NUM_ITEMS)).abs().max() > 0


@pytest.mark.parametrize("pretrainer", ["mf", "als"])
def test_candidate_lists_score_as_the_flat_pairs(pretrainer: str) -> None:
    model = _model(_tables(pretrainer))
    last = model.user_tower.mlp[-1]
    assert isinstance(last, torch.nn.Linear)
    with torch.no_grad():  # a nonzero correction, so both terms are compared
        last.weight.normal_()
    users = torch.tensor([0, 3, 6])
    candidates = torch.tensor([[1, 2, 8, 0], [3, 3, 5, 7], [0, 4, 2, 6]])  # (B, M)
    flat = model(users.repeat_interleave(4), candidates.reshape(-1)).view(3, 4)
    assert model.candidate_list_forward
    torch.testing.assert_close(model(users, candidates), flat)


@pytest.mark.parametrize("pretrainer", ["mf", "als"])
def test_the_ranking_scorer_is_score_users_as_one_product(pretrainer: str) -> None:
    """The fused scorer (teacher and towers' factors side by side) scores as
    ``teacher.score_all + correction`` does, away from the initialisation too."""
    model = _model(_tables(pretrainer))
    last = model.user_tower.mlp[-1]
    assert isinstance(last, torch.nn.Linear)
    with torch.no_grad():  # a nonzero correction, a scale other than 1 and a new offset
        last.weight.normal_()
        model.teacher.log_scale.fill_(0.4)
        model.teacher.offset.fill_(-2.5)
    users = torch.tensor([6, 0, 3, 3])
    expected = model.score_users(users)
    assert model.correction(users, torch.zeros(4, dtype=torch.int64)).abs().max() > 1e-3
    torch.testing.assert_close(model.ranking_scorer()(users), expected)
    hand = np.exp(0.4) * (_hand_teacher(_tables(pretrainer)) - 0.7) - 2.5  # minus b, then affine
    teacher = model.teacher.score_all(users).detach().numpy()
    assert np.allclose(teacher, hand[users.numpy()], atol=1e-5)


def test_training_moves_the_correction_off_zero_and_lowers_the_loss() -> None:
    tables = _tables("mf")
    model = _model(tables)
    optimizer = make_optimizer(model, 0.02, 0.0)
    users = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5, 6])
    items = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2, 3, 4])
    sampler = build_negative_sampler("uniform", NUM_ITEMS)
    losses = [
        train_two_tower_epoch(
            model, [(users, items)], optimizer, sampler, 4, torch.Generator().manual_seed(epoch)
        )
        for epoch in range(30)
    ]
    assert losses[-1] < 0.8 * losses[0], losses
    assert model.correction(users, items).abs().max() > 1e-3
    assert model.teacher.log_scale.grad is not None  # the teacher's scale trains too


def test_teacher_tables_are_frozen_buffers_stored_and_counted_once() -> None:
    tables = _tables("mf")
    model = _model(tables)
    teacher_parameters = {n for n, _ in model.named_parameters() if n.startswith("teacher.")}
    assert teacher_parameters == {"teacher.log_scale", "teacher.offset"}
    buffers = {name: buffer for name, buffer in model.named_buffers()}
    frozen = [name for name in buffers if name.endswith("frozen_weight")]
    # The towers' id rows and the teacher's rows are the same tensors (registered twice,
    # yielded once): zero-copy views of the object-store arrays.
    assert len(frozen) == 2
    assert model.teacher.user_rows.frozen_weight is model.user_tower.id_embedding.frozen_weight
    assert model.teacher.user_rows.frozen_weight.data_ptr() == tables.user.ctypes.data
    trainable, frozen_count = count_parameters(model)
    assert frozen_count == (NUM_USERS + NUM_ITEMS) * WIDTH
    from cadc_ray.models.id_tables import model_bytes

    assert model_bytes(model)["frozen"] == (NUM_USERS + NUM_ITEMS) * WIDTH * 4  # float32, once
    init_frz = build_two_tower(
        CONFIG, NUM_USERS, NUM_ITEMS, None, _item_features(), tables, "init_frz"
    )
    # Same towers as init_frz plus the teacher's two scalars (log_scale, offset).
    assert (trainable, frozen_count) == (
        count_parameters(init_frz)[0] + 2,
        count_parameters(init_frz)[1],
    )
    optimizer = make_optimizer(model, 1e-3, 0.0)
    optimized = {id(p) for p in optimizer.params}
    assert id(model.teacher.offset) in optimized
    assert all(id(buffer) not in optimized for buffer in buffers.values())
    # A device / dtype move converts the shared table once: still one tensor afterwards.
    model.to(torch.float64)
    assert model.teacher.item_rows.frozen_weight is model.item_tower.id_embedding.frozen_weight
    assert model.teacher.item_rows.frozen_weight.dtype == torch.float64


def test_teacher_scale_stays_positive_and_keeps_the_ranking() -> None:
    tables = _tables("mf")
    model = _model(tables)
    before = model.teacher.score_all(torch.arange(NUM_USERS)).argsort(dim=1)
    with torch.no_grad():
        model.teacher.log_scale.fill_(-3.0)
        model.teacher.offset.fill_(-5.0)
    after = model.teacher.score_all(torch.arange(NUM_USERS))
    assert torch.equal(after.argsort(dim=1), before)
    pair = model.teacher(torch.tensor([2]), torch.tensor([4]))
    assert torch.allclose(pair, after[2, 4].reshape(1))


def test_mf_mlp_teacher_is_refused_by_the_model_and_the_config() -> None:
    with pytest.raises(ValueError, match="mf_mlp teacher's interaction MLP is not exported"):
        _model(_tables("mf_mlp"))
    with pytest.raises(ValueError, match="needs a teacher that scores"):
        TeacherLogits(
            FrozenIdEmbedding(torch.zeros(2, 3)),
            FrozenIdEmbedding(torch.zeros(4, 3)),
            "mf_mlp",
            0.0,
        )
    raw = {"method": "cadc_mlp", "model": {"integration": "residual"}}
    config = from_dict(ExperimentConfig, raw, "exp.yaml")
    with pytest.raises(ConfigError, match=r"exp.yaml: model.integration: 'residual' .*mf_mlp"):
        validate(config, "exp.yaml")
    for method in ("cadc", "cadc_als"):  # the two scoring teachers are accepted
        validate(from_dict(ExperimentConfig, {**raw, "method": method}, "exp.yaml"), "exp.yaml")


def test_residual_needs_frozen_rows_of_the_model_width() -> None:
    with pytest.raises(ValueError, match="'residual': embedding_dim 6 must equal"):
        build_two_tower(
            ModelConfig(**{**CONFIG.__dict__, "embedding_dim": 6}),
            NUM_USERS,
            NUM_ITEMS,
            None,
            None,
            _tables(),
            "residual",
        )


# --- ALS rows ---------------------------------------------------------------------------


def test_platt_scale_recovers_a_known_logistic_model() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(0.0, 1.0, 200_000)
    labels = (rng.random(scores.size) < 1.0 / (1.0 + np.exp(-(3.0 * scores - 1.5)))).astype(float)
    scale, offset = platt_scale(scores, labels)
    assert scale == pytest.approx(3.0, abs=0.06) and offset == pytest.approx(-1.5, abs=0.04)


def test_calibrated_als_rows_keep_the_ranking_and_balance_the_scale() -> None:
    rng = np.random.default_rng(3)
    user = rng.normal(0.0, 0.05, (30, 4)).astype(np.float32)  # deliberately unbalanced
    item = rng.normal(0.0, 2.0, (20, 4)).astype(np.float32)
    raw = user.astype(np.float64) @ item.T.astype(np.float64)
    # Positives: each user's 3 best items by raw score, so the fitted scale must be > 0.
    positives = np.argsort(-raw, axis=1)[:, :3]
    user_id = np.repeat(np.arange(30), 3)
    tables = calibrated_tables(user, item, user_id, positives.reshape(-1), seed=0)
    assert tables.user.shape == (30, 5) and tables.item.shape == (20, 5)
    assert tables.user.dtype == np.float32 and tables.pretrainer == "als"
    assert np.all(tables.user[:, -1] == 0) and np.all(tables.item[:, -1] == 0)  # bias column
    calibrated = tables.user.astype(np.float64) @ tables.item.T.astype(np.float64)
    scale = calibrated / raw
    assert scale.min() > 0 and np.allclose(scale, scale.mean(), rtol=1e-4)  # one a > 0
    assert np.array_equal(np.argsort(-calibrated, axis=1), np.argsort(-raw, axis=1))
    user_rms = np.sqrt(np.mean(np.square(tables.user[:, :-1])))
    item_rms = np.sqrt(np.mean(np.square(tables.item[:, :-1])))
    assert user_rms == pytest.approx(item_rms, rel=1e-4)
    # The offset is the fitted logistic intercept: positives score above it on average.
    assert np.isfinite(tables.global_bias)
    logits = calibrated + tables.global_bias
    assert logits[np.arange(30)[:, None], positives].mean() > logits.mean()


def test_fit_als_exports_d_factors_and_a_zero_bias_column() -> None:
    rng = np.random.default_rng(0)
    users = rng.integers(0, 25, 400)
    items = (users % 5) * 3 + rng.integers(0, 3, 400)  # 5 blocks of 3 items
    tables = fit_als(users, items, 25, 15, 4, 5, 0.01, 1.0, seed=0, num_threads=1)
    assert tables.user.shape == (25, 4) and tables.item.shape == (15, 4)
    assert np.all(tables.user[:, -1] == 0) and np.all(tables.item[:, -1] == 0)
    assert tables.global_bias != 0.0
    with pytest.raises(ValueError, match="dim_plus_bias must be >= 2"):
        fit_als(users, items, 25, 15, 1, 5, 0.01, 1.0, seed=0, num_threads=1)
    # pretrain.als_export: raw gives back the export before the calibration, for comparison.
    raw = fit_als(users, items, 25, 15, 4, 5, 0.01, 1.0, seed=0, num_threads=1, calibrate=False)
    assert raw.user.shape == (25, 4) and raw.global_bias == 0.0
    assert np.abs(raw.item[:, -1]).max() > 0  # the last column is a factor there
    config = from_dict(ExperimentConfig, {"pretrain": {"als_export": "raw"}}, "exp.yaml")
    assert config.pretrain.als_export == "raw"
    with pytest.raises(ConfigError, match=r"pretrain\.als_export"):
        from_dict(ExperimentConfig, {"pretrain": {"als_export": "scaled"}}, "exp.yaml")


# --- Figure 1's reference lines ---------------------------------------------------------


def _rounded(line: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(ratio, round(value, 9)) for ratio, value in line]


def test_ratio_plot_draws_gs_and_each_teacher_as_references(tmp_path: Path) -> None:
    from cadc_ray.sweep.report import make_record, plot_quality_vs_ratio, ratio_plot_data

    base = ExperimentConfig()

    def record(trial: str, overrides: dict[str, Any], hr: float, **extra: float) -> Any:
        metrics = {"test_hr@10": hr, "test_ndcg@10": hr / 2, **extra}
        return make_record(
            trial_id=trial, overrides=overrides, base=base, metrics=metrics, error=None
        )

    teacher = {"teacher_test_hr@10": 0.07, "teacher_test_ndcg@10": 0.03}
    records = [
        record("g", {"method": "gs"}, 0.075),
        record("a", {"method": "cadc", "data.filter_ratio": 10}, 0.06, **teacher),
        record("b", {"method": "cadc", "data.filter_ratio": 2}, 0.07, **teacher),
        record(
            "c",
            {"method": "cadc", "model.integration": "residual", "data.filter_ratio": 10},
            0.072,
            **teacher,
        ),
        record(
            "d",
            {"method": "cadc_als", "data.filter_ratio": 10},
            0.05,
            **{"teacher_test_hr@10": 0.08, "teacher_test_ndcg@10": 0.04},
        ),
        record("r", {"method": "random", "data.filter_ratio": 10}, 0.03),
    ]
    hr, ndcg = ratio_plot_data(records)
    assert hr.references == pytest.approx(
        {"GS (all data)": 7.5, "MF teacher alone": 7.0, "ALS teacher alone": 8.0}
    )
    assert ndcg.references == pytest.approx(
        {"GS (all data)": 3.75, "MF teacher alone": 3.0, "ALS teacher alone": 4.0}
    )
    assert _rounded(hr.series["CADC (init_frz)"]) == [(2, 7.0), (10, 6.0)]
    assert _rounded(hr.series["CADC (residual)"]) == [(10, 7.2)]
    assert _rounded(hr.series["Random"]) == [(10, 3.0)]
    assert plot_quality_vs_ratio(records, tmp_path / "figure1.png")
    assert (tmp_path / "figure1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ratio_plot_data(records[:2]) == []  # one sampled ratio: no figure
    from cadc_ray.sweep.report import results_table

    _, rows = results_table(records, (10,))
    by_trial = {row["trial_id"]: row for row in rows}
    assert by_trial["d"]["teacher_test_hr@10_pct"] == pytest.approx(8.0)
    assert by_trial["r"]["teacher_test_hr@10_pct"] is None  # Random has no teacher


# --- the TTNN stage: epoch 0 is the teacher ---------------------------------------------


@pytest.mark.ray
def test_epoch_zero_is_the_teacher_and_can_be_the_best_epoch(
    ray_session: None, tmp_path: Path
) -> None:
    """With a zero learning rate nothing ever beats epoch 0: the stage keeps the teacher."""
    import ray

    from cadc_ray.data import Manifest, materialize_split, prepare_dataset
    from cadc_ray.runtime.ttnn import build_ttnn_inputs, fit_ttnn

    raw = {
        "method": "cadc",
        "output_root": str(tmp_path),
        "data": {
            "dataset": "synthetic",
            "filter_ratio": 2,
            "synthetic": {"num_users": 80, "num_items": 40, "num_interactions": 2000},
        },
        "pretrain": {"embedding_dim": 7},
        "model": {
            "embedding_dim": 8,
            "integration": "residual",
            "feature_embedding_dim": 2,
            "tower_hidden": [8],
            "output_dim": 4,
        },
        "train": {"epochs": 5, "learning_rate": 0.0, "early_stopping_patience": 2},
        "resources": {"num_workers": 0, "use_gpu": "no", "torch_threads": 1},
    }
    config = from_dict(ExperimentConfig, raw, "residual-test")
    validate(config, "residual-test")
    prepared = prepare_dataset(config.data, tmp_path)
    manifest = Manifest.load(prepared)
    split = materialize_split(prepared)
    rng = np.random.default_rng(0)
    tables = PretrainedTables(  # global_bias 0: the scores equal the teacher's bit for bit
        user=rng.normal(0.0, 1.0, (manifest.num_users, 8)).astype(np.float32),
        item=rng.normal(0.0, 1.0, (manifest.num_items, 8)).astype(np.float32),
        pretrainer="mf",
    )
    inputs = build_ttnn_inputs(config, prepared, split, pretrained=[ray.put(tables)])
    result = fit_ttnn(config, inputs, storage_path=str(tmp_path / "train"))
    assert result.best_epoch == 0
    assert result.early_stopped and result.epochs_run == 2  # patience 2 after epoch 0
    assert [epoch["best_epoch"] for epoch in result.history] == [0, 0]
    assert result.best_val_metrics == {
        "hr@10": result.history[0]["val_hr@10"],
        "ndcg@10": result.history[0]["val_ndcg@10"],
    }
    assert set(result.teacher_test_metrics) == {"hr@10", "ndcg@10"}
    assert result.test_metrics == result.teacher_test_metrics  # the teacher, kept
    assert result.frozen_parameters == (manifest.num_users + manifest.num_items) * 8


def test_table2_reports_each_teacher_alone_once_per_seed() -> None:
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "scripts" / "reproduce_tables.py"
    spec = importlib.util.spec_from_file_location("reproduce_tables", script)
    assert spec is not None and spec.loader is not None
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    assert "residual" in tables.TABLE2_TECHNIQUES

    def run(label: str, seed: int, pretrainer: str, teacher_hr: float) -> dict[str, Any]:
        result = {
            "test_percent": {"hr@10": 7.0, "ndcg@10": 3.0},
            "teacher_test_percent": {"hr@10": teacher_hr, "ndcg@10": teacher_hr / 2},
            "pretrainer": pretrainer,
            "pretrain_seconds": 1.0,
            "train_seconds": 2.0,
            "best_epoch": 0,
            "epochs_run": 3,
            "train_interactions": 10,
            "trainable_parameters": 5,
            "frozen_parameters": 6,
        }
        return {"table": 2, "label": label, "seed": seed, "result": result}

    runs = [
        run("init_frz", 0, "mf", 7.0),
        run("residual", 0, "mf", 7.0),  # same teacher as the row above: counted once
        run("init_frz", 1, "mf", 8.0),
        run("residual (CADC-ALS)", 0, "als", 9.0),
    ]
    lines = tables.markdown_tables(runs)
    assert "| MF teacher alone | 7.50 ± 0.71 | 3.75 ± 0.35 | - | - | - | - | 7.00, 8.00 |" in lines
    assert "| ALS teacher alone | 9.00 | 4.50 | - | - | - | - | 9.00 |" in lines
    assert any(line.startswith("| residual | 7.00 | 3.00 | 1+2 | 0 of 3 |") for line in lines)


def test_saved_sweep_tables_keep_the_global_bias_and_old_ones_are_not_reused(
    tmp_path: Path,
) -> None:
    import json

    from cadc_ray.pipeline import load_pretrained, save_pretrained

    tables = _tables("als", global_bias=-2.5)
    save_pretrained(tmp_path, "als-d4-x", tables, 3.0)
    loaded = load_pretrained(tmp_path, "als-d4-x")
    assert loaded is not None
    again, seconds = loaded
    assert again.global_bias == -2.5 and again.pretrainer == "als" and seconds == 3.0
    assert np.array_equal(again.user, tables.user) and np.array_equal(again.item, tables.item)
    meta_file = tmp_path / "als-d4-x.json"
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    del meta["global_bias"]  # as written before the tables carried it
    meta_file.write_text(json.dumps(meta), encoding="utf-8")
    assert load_pretrained(tmp_path, "als-d4-x") is None


def test_residual_starts_at_the_mf_logit_it_was_trained_to_output() -> None:
    from cadc_ray.models.mf import MatrixFactorization

    torch.manual_seed(0)
    mf = MatrixFactorization(NUM_USERS, NUM_ITEMS, WIDTH - 1)
    with torch.no_grad():
        mf.global_bias.fill_(-1.25)  # b is exported and used: the logit as trained
        mf.user_table.weight[:, -1] = torch.linspace(-1.0, 1.0, NUM_USERS)
    tables = mf.export_tables()
    assert tables.global_bias == -1.25
    model = _model(tables)
    users = torch.tensor([0, 1, 2, 6, 6])
    items = torch.tensor([8, 0, 4, 4, 1])
    torch.testing.assert_close(model(users, items), mf(users, items).detach())
    torch.testing.assert_close(
        model.ranking_scorer()(torch.arange(NUM_USERS)),
        mf.score_users(torch.arange(NUM_USERS)).detach(),
    )


# ---------------------------------------------------------------------------------------
# model.frozen_rows: what the towers read of the frozen rows (issue #14 item 2)


def test_standardized_rows_have_unit_columns_and_a_constant_column_stays_zero() -> None:
    from cadc_ray.models.embeddings import frozen_row_map

    rng = np.random.default_rng(3)
    table = rng.normal(0.0, 1.0, (500, 4)) * [0.01, 1.0, 30.0, 0.0] + [0.0, 5.0, -2.0, 0.0]
    tensor = torch.tensor(table, dtype=torch.float32)
    mean, transform = frozen_row_map(tensor, "standardized")
    mapped = ((tensor - mean) @ transform).double().numpy()
    np.testing.assert_allclose(mapped.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(mapped[:, :3].std(axis=0), 1.0, rtol=1e-4)
    assert np.all(mapped[:, 3] == 0.0)  # the zero bias column of ALS rows
    assert np.count_nonzero(transform - torch.diag(torch.diagonal(transform))) == 0


def test_whitened_rows_are_decorrelated_with_unit_variance() -> None:
    from cadc_ray.models.embeddings import frozen_row_map

    rng = np.random.default_rng(4)
    mixing = rng.normal(0.0, 1.0, (3, 3)) * [[1.0], [0.1], [10.0]]  # correlated, unequal
    table = np.concatenate([rng.normal(0.0, 1.0, (2000, 3)) @ mixing, np.zeros((2000, 1))], axis=1)
    tensor = torch.tensor(table, dtype=torch.float32)
    mean, transform = frozen_row_map(tensor, "whitened")
    mapped = ((tensor - mean) @ transform).double().numpy()
    covariance = np.cov(mapped, rowvar=False)
    np.testing.assert_allclose(covariance[:3, :3], np.eye(3), atol=2e-3)
    assert np.all(mapped[:, 3] == 0.0)
    with pytest.raises(ValueError, match="standardized or whitened"):
        frozen_row_map(tensor, "raw")


@pytest.mark.parametrize("frozen_rows", ["standardized", "whitened"])
@pytest.mark.parametrize("pretrainer", ["mf", "als"])
def test_mapped_rows_feed_the_towers_and_the_teacher_keeps_its_own(
    frozen_rows: str, pretrainer: str
) -> None:
    from cadc_ray.models.embeddings import MappedFrozenIdEmbedding

    tables = _tables(pretrainer)
    config = ModelConfig(
        embedding_dim=WIDTH,
        feature_embedding_dim=3,
        tower_hidden=(8,),
        output_dim=4,
        frozen_rows=frozen_rows,  # type: ignore[arg-type]
    )
    torch.manual_seed(0)
    model = build_two_tower(
        config, NUM_USERS, NUM_ITEMS, None, _item_features(), tables, "residual"
    )
    rows = model.user_tower.id_embedding
    assert isinstance(rows, MappedFrozenIdEmbedding) and rows.kind == frozen_rows
    users = torch.arange(NUM_USERS)
    assert np.allclose(rows.frozen_weight.numpy(), tables.user)  # the table is untouched
    mapped = rows(users).detach().numpy()
    assert not np.allclose(mapped, tables.user, atol=1e-3)
    np.testing.assert_allclose(mapped.mean(axis=0), 0.0, atol=1e-5)
    # residual still starts at the teacher exactly: its score reads the raw rows.
    scores = model.ranking_scorer()(users)
    assert np.allclose(scores.numpy(), _hand_teacher(tables), atol=1e-5)
    init_frz = build_two_tower(config, NUM_USERS, NUM_ITEMS, None, None, tables, "init_frz")
    assert isinstance(init_frz.item_tower.id_embedding, MappedFrozenIdEmbedding)
    assert (
        count_parameters(init_frz)[1]
        == count_parameters(
            build_two_tower(
                replace(config, frozen_rows="raw"),
                NUM_USERS,
                NUM_ITEMS,
                None,
                None,
                tables,
                "init_frz",
            )
        )[1]
    )  # the map is not a frozen table: the frozen count is the rows alone


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method": "gs"}, "integration 'none'"),
        ({"model": {"integration": "init"}}, "integration 'init'"),
        (
            {"model": {"id_table": {"item": {"kind": "hashing", "fraction": 0.5}}}},
            "compressed item",
        ),
    ],
)
def test_frozen_rows_need_frozen_full_tables(overrides: dict[str, Any], message: str) -> None:
    raw: dict[str, Any] = {"method": "cadc", "model": {"frozen_rows": "whitened"}}
    for key, value in overrides.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    with pytest.raises(ConfigError, match=rf"model\.frozen_rows.*{message}"):
        validate(from_dict(ExperimentConfig, raw), "test")
