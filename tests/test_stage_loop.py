"""Both stages' epoch bodies through the shared loop (``runtime.stage``), without Ray.

Every method in ``METHODS`` runs stage 1 (MF / MF-MLP through the loop, ALS directly) and
stage 2 on a tiny in-memory latent-factor dataset, split leave-last-two-out and sampled
exactly as the data layer does, in a ``local_environment`` (rank 0 of 1, reports kept in
memory). Fast: no Ray, a few seconds in all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from cadc_ray.config import ExperimentConfig, MethodName, from_dict, validate
from cadc_ray.data import HeldOutSets
from cadc_ray.data.known import KnownPositives
from cadc_ray.data.sampling import sample_mask
from cadc_ray.data.split import ROLE_TEST, ROLE_VALIDATION, leave_last_two_out_roles
from cadc_ray.methods import METHODS
from cadc_ray.models.pretrained import PretrainedTables
from cadc_ray.runtime.pretrain import train_als_stage, train_mf_stage
from cadc_ray.runtime.stage import StreamedRows, TrainingData, local_environment
from cadc_ray.runtime.ttnn import ResolvedInputs, train_ttnn_stage, ttnn_training_data

NUM_USERS, NUM_ITEMS = 150, 80
FILTER_RATIO = 2

BASE_CONFIG: dict[str, Any] = {
    "name": "stage-loop",
    "seed": 0,
    "data": {"dataset": "synthetic", "filter_ratio": FILTER_RATIO},
    "pretrain": {
        "embedding_dim": 7,
        "epochs": 4,
        "batch_size": 256,
        "learning_rate": 0.02,
        "als_iterations": 3,
    },
    "model": {
        "embedding_dim": 8,
        "use_features": False,
        "tower_hidden": [16],
        "output_dim": 8,
    },
    "train": {"epochs": 4, "batch_size": 128, "learning_rate": 0.01, "early_stopping_patience": 0},
    "resources": {"num_workers": 0, "use_gpu": "no", "torch_threads": 1},
}


@dataclass(frozen=True)
class TinyInteractions:
    train: dict[str, np.ndarray]  # D_full: user_id, item_id, row_index
    held_out: HeldOutSets


def _latent_factor_interactions(seed: int = 7, per_user: int = 20) -> TinyInteractions:
    """Each user picks ``per_user`` distinct items, more likely the ones its factors like."""
    rng = np.random.default_rng(seed)
    user_factors = rng.normal(size=(NUM_USERS, 4))
    item_factors = rng.normal(size=(NUM_ITEMS, 4))
    logits = 2.0 * user_factors @ item_factors.T
    users, items = [], []
    for user in range(NUM_USERS):
        weights = np.exp(logits[user] - logits[user].max())
        chosen = rng.choice(NUM_ITEMS, size=per_user, replace=False, p=weights / weights.sum())
        users.append(np.full(per_user, user))
        items.append(chosen)
    user_id = np.concatenate(users).astype(np.int64)
    item_id = np.concatenate(items).astype(np.int64)
    row_index = np.arange(user_id.size, dtype=np.int64)
    roles = leave_last_two_out_roles(user_id, row_index, row_index)  # row order = time
    is_train = roles == 0
    train = {"user_id": user_id[is_train], "item_id": item_id[is_train], "row_index": row_index}
    train["row_index"] = row_index[is_train]
    order = np.argsort(train["user_id"], kind="stable")
    indptr = np.zeros(NUM_USERS + 1, dtype=np.int64)
    np.cumsum(np.bincount(train["user_id"], minlength=NUM_USERS), out=indptr[1:])
    known = KnownPositives(
        indptr=indptr, indices=train["item_id"][order].astype(np.int32), num_items=NUM_ITEMS
    )
    val, test = roles == ROLE_VALIDATION, roles == ROLE_TEST
    val_item_of_user = np.full(NUM_USERS, -1, dtype=np.int64)
    val_item_of_user[user_id[val]] = item_id[val]
    held_out = HeldOutSets(
        val_users=user_id[val],
        val_items=item_id[val],
        test_users=user_id[test],
        test_items=item_id[test],
        known=known,
        test_extra_mask=val_item_of_user[user_id[test]],
    )
    return TinyInteractions(train=train, held_out=held_out)


@pytest.fixture(scope="module")
def tiny() -> TinyInteractions:
    return _latent_factor_interactions()


def _config(method: str, **sections: dict[str, Any]) -> ExperimentConfig:
    """``BASE_CONFIG`` for ``method`` with sections updated, checked as a loaded file is."""
    raw = {**BASE_CONFIG, "method": method}
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    config = from_dict(ExperimentConfig, raw, f"test config ({method})")
    validate(config, f"test config ({method})")
    return config


def _teacher(config: ExperimentConfig, data: TinyInteractions) -> PretrainedTables | None:
    pretrainer = METHODS[config.method].pretrainer
    if pretrainer is None:
        return None
    if pretrainer == "als":
        return train_als_stage(
            config,
            data.train["user_id"],
            data.train["item_id"],
            num_users=NUM_USERS,
            num_items=NUM_ITEMS,
            threads=1,
        )
    environment, reports = local_environment()
    output = train_mf_stage(
        config,
        pretrainer,
        _held(data.train),
        num_users=NUM_USERS,
        num_items=NUM_ITEMS,
        environment=environment,
    )
    assert output is not None
    losses = [report["loss"] for report in reports.metrics]
    assert len(losses) == config.pretrain.epochs
    assert losses[-1] < losses[0], f"{pretrainer} loss did not go down: {losses}"
    return PretrainedTables(
        user=output["user"],
        item=output["item"],
        pretrainer=output["pretrainer"],
        global_bias=float(output["global_bias"]),
    )


def _held(rows: dict[str, np.ndarray]) -> TrainingData:
    return TrainingData.in_memory(rows["user_id"], rows["item_id"], NUM_USERS, NUM_ITEMS)


def _training_rows(config: ExperimentConfig, data: TinyInteractions) -> dict[str, np.ndarray]:
    if METHODS[config.method].uses_full_data:
        return data.train
    keep = sample_mask(data.train["row_index"], FILTER_RATIO, config.data.sample_seed)
    return {name: values[keep] for name, values in data.train.items()}


def _train_ttnn(
    config: ExperimentConfig,
    data: TinyInteractions,
    teacher: PretrainedTables | None,
    resume_from: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], Any]:
    environment, reports = local_environment(resume_from)
    torch.manual_seed(123)  # the stage must not depend on the caller's global RNG
    inputs = ResolvedInputs(NUM_USERS, NUM_ITEMS, data.held_out, teacher, None, None)
    training = ttnn_training_data(config, _training_rows(config, data), NUM_USERS, NUM_ITEMS)
    output = train_ttnn_stage(config, training, inputs, environment)
    assert output is not None
    return output, reports


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_both_stages_through_the_loop(
    method: MethodName, tiny: TinyInteractions
) -> None:
    config = _config(method)
    teacher = _teacher(config, tiny)
    output, reports = _train_ttnn(config, tiny, teacher)

    epochs = config.train.epochs
    assert output["epochs_run"] == len(reports.metrics) == epochs
    losses = [report["loss"] for report in reports.metrics]
    assert losses[-1] < losses[0], f"{method}: TTNN loss did not go down: {losses}"
    assert [report["epoch"] for report in reports.metrics] == list(range(1, epochs + 1))
    # Every epoch's report validates (eval_every 1) and carries the checkpoint.
    assert all(report["evaluated"] for report in reports.metrics)
    assert all(state is not None and state["stage"] == "ttnn" for state in reports.states)
    best = output["best_epoch"]
    assert 1 <= best <= epochs
    assert output["best_val"]["hr@10"] == pytest.approx(reports.metrics[best - 1]["val_hr@10"]), (
        "best_val must be the validation of the selected epoch"
    )
    assert 0.0 <= output["test"]["hr@10"] <= 1.0
    # The model's size is in every epoch's report: a trial stopped early still has it.
    assert output["model_bytes"]["total"] > 0
    assert {report["model_bytes"] for report in reports.metrics} == {output["model_bytes"]["total"]}
    sample_size = _training_rows(config, tiny)["user_id"].size
    if METHODS[method].rebalance == "none":
        assert output["train_interactions"] == sample_size
    if teacher is not None and METHODS[method].pretrainer != "mf_mlp":
        assert set(output["teacher_test"]) == {"hr@10", "ndcg@10"}
    else:
        assert output["teacher_test"] == {}


def test_a_resumed_stage_ends_exactly_like_the_uninterrupted_one(tiny: TinyInteractions) -> None:
    config = _config("cadc")
    teacher = _teacher(config, tiny)
    whole, whole_reports = _train_ttnn(config, tiny, teacher)
    after_two_epochs = whole_reports.states[1]
    resumed, resumed_reports = _train_ttnn(config, tiny, teacher, resume_from=after_two_epochs)

    def outcome(metrics: dict[str, Any]) -> dict[str, Any]:
        measured = ("second" in name or name == "peak_rss_mib" for name in metrics)
        return {
            name: value
            for (name, value), is_measured in zip(metrics.items(), measured, strict=True)
            if not is_measured
        }

    assert [report["epoch"] for report in resumed_reports.metrics] == [3, 4]
    assert [outcome(m) for m in resumed_reports.metrics] == [
        outcome(m) for m in whole_reports.metrics[2:]
    ]
    assert resumed["test"] == whole["test"]
    assert resumed["best_epoch"] == whole["best_epoch"]


def test_a_checkpoint_with_other_optimizers_is_refused_on_resume(
    tiny: TinyInteractions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same config, other optimizers: ``auto`` chose row-sparse tables for the checkpoint's
    run (gloo) but not for the resumed one (an NCCL group cannot all-reduce sparse
    gradients). Loading Adam state into the wrong optimizer set must fail, naming both."""
    import cadc_ray.runtime.device
    import cadc_ray.training.optim

    monkeypatch.setattr(cadc_ray.training.optim, "SPARSE_UPDATE_ROWS", 100)  # 150 users: sparse
    config = _config("gs", train={"epochs": 2, "id_table_updates": "auto"})
    _, reports = _train_ttnn(config, tiny, None)
    checkpoint = reports.states[0]
    assert sorted(checkpoint["optimizers"]) == ["adam", "sparse_adam"]
    monkeypatch.setattr(
        cadc_ray.runtime.device, "sparse_gradients_all_reduce", lambda world_size: False
    )
    with pytest.raises(
        ValueError,
        match=re.escape(
            "checkpoint optimizers ['adam', 'sparse_adam'] do not match this run's ['adam']: "
            "train.id_table_updates: auto chose row-sparse tables by the worker group"
        ),
    ):
        _train_ttnn(config, tiny, None, resume_from=checkpoint)


def test_residual_keeps_the_teacher_when_training_never_beats_it(tiny: TinyInteractions) -> None:
    # A learning rate of 0 leaves the correction at exactly zero: every epoch ties the
    # teacher on validation, and ties keep the earlier epoch, the teacher's "epoch 0".
    config = _config("cadc", model={"integration": "residual"}, train={"learning_rate": 0.0})
    teacher = _teacher(config, tiny)
    output, reports = _train_ttnn(config, tiny, teacher)

    assert output["best_epoch"] == 0
    assert output["test"] == pytest.approx(output["teacher_test"])
    assert all(report["best_epoch"] == 0 for report in reports.metrics)


def test_early_stopping_ends_the_loop_and_says_so(tiny: TinyInteractions) -> None:
    config = _config(
        "random", train={"epochs": 30, "learning_rate": 0.0, "early_stopping_patience": 2}
    )
    output, reports = _train_ttnn(config, tiny, None)

    # lr 0: epoch 1 is the best forever; two epochs without gain stop after epoch 3.
    assert output["best_epoch"] == 1
    assert output["epochs_run"] == len(reports.metrics) == 3
    assert output["early_stopped"] is True


def test_pretraining_checkpoints_hold_the_common_and_the_stage_keys(
    tiny: TinyInteractions,
) -> None:
    config = _config("cadc")
    environment, reports = local_environment()
    train_mf_stage(
        config,
        "mf",
        _held(tiny.train),
        num_users=NUM_USERS,
        num_items=NUM_ITEMS,
        environment=environment,
    )
    state = reports.states[-1]
    assert state is not None
    assert state["stage"] == "pretrain" and state["epoch"] == config.pretrain.epochs
    assert {"model", "optimizers", "history", "loop_seconds", "rng", "config"} <= set(state)
    assert len(state["history"]) == config.pretrain.epochs


def test_a_streamed_stage_learns_reproducibly_from_its_shard_alone(tiny: TinyInteractions) -> None:
    """The streaming path's contract, without Ray: each epoch re-opens the stream with a
    new seed derived from (stage seed, epoch, rank), batches hold the global batch split
    per rank, and the same seed gives the same losses."""
    config = _config("cadc")
    held = _held(tiny.train)
    users = torch.from_numpy(tiny.train["user_id"].astype(np.int64))
    items = torch.from_numpy(tiny.train["item_id"].astype(np.int64))
    opened: list[tuple[int, int]] = []

    def open_epoch(batch_rows: int, shuffle_seed: int) -> Any:
        opened.append((batch_rows, shuffle_seed))
        order = torch.randperm(users.numel(), generator=torch.Generator().manual_seed(shuffle_seed))
        for start in range(0, order.numel(), batch_rows):
            rows = order[start : start + batch_rows]
            yield {"user_id": users[rows].int(), "item_id": items[rows].int()}  # cast back

    def streamed_losses() -> list[float]:
        environment, reports = local_environment()
        data = TrainingData(rows=StreamedRows(open_epoch), counts=held.counts)
        train_mf_stage(
            config, "mf", data, num_users=NUM_USERS, num_items=NUM_ITEMS, environment=environment
        )
        assert all(report["peak_rss_mib"] > 0 for report in reports.metrics)
        return [report["loss"] for report in reports.metrics]

    first = streamed_losses()
    assert len(first) == config.pretrain.epochs and first[-1] < first[0]
    epochs = config.pretrain.epochs
    assert [rows for rows, _ in opened] == [config.pretrain.batch_size] * epochs
    assert len({seed for _, seed in opened}) == epochs  # a new shuffle every epoch
    assert streamed_losses() == first  # same seed, same stream, same losses
    assert opened[:epochs] == opened[epochs:]


def _mf_output(
    config: ExperimentConfig, data: TinyInteractions, resume_from: dict[str, Any] | None = None
) -> tuple[dict[str, Any], Any]:
    environment, reports = local_environment(resume_from)
    output = train_mf_stage(
        config,
        METHODS[config.method].pretrainer or "",
        _held(data.train),
        num_users=NUM_USERS,
        num_items=NUM_ITEMS,
        environment=environment,
        held_out=data.held_out if config.pretrain.eval_every else None,
    )
    return output, reports


OVERFITTING_MF = {"epochs": 9, "learning_rate": 0.2, "eval_every": 2}
"""A teacher whose validation HR@10 peaks before its last epoch on the tiny data."""


def test_a_validated_teacher_exports_its_best_validation_epoch(tiny: TinyInteractions) -> None:
    config = _config("cadc", pretrain=OVERFITTING_MF)
    output, reports = _mf_output(config, tiny)

    # Validated every 2 epochs and after the last (9): 2, 4, 6, 8, 9.
    evaluated = [report["epoch"] for report in reports.metrics if report["evaluated"]]
    assert evaluated == [2, 4, 6, 8, 9]
    values = {
        report["epoch"]: report["val_hr@10"] for report in reports.metrics if report["evaluated"]
    }
    best = output["best_epoch"]
    assert best == max(values, key=lambda epoch: (values[epoch], -epoch))  # ties: the earlier
    assert best < config.pretrain.epochs, f"no overfitting to select against: {values}"
    assert output["best_val"]["hr@10"] == values[best]
    assert output["epochs"] == 9 and output["early_stopped"] is False
    assert output["eval_seconds"] > 0

    # The exported tables are the best epoch's: those of the same run stopped there.
    shorter = _config("cadc", pretrain={**OVERFITTING_MF, "epochs": best, "eval_every": 0})
    at_best, _ = _mf_output(shorter, tiny)
    np.testing.assert_array_equal(output["user"], at_best["user"])
    np.testing.assert_array_equal(output["item"], at_best["item"])
    assert output["global_bias"] == at_best["global_bias"]
    last = reports.states[-1]["model"]["user_table.weight"].numpy()
    assert not np.array_equal(output["user"], last)


def test_teacher_early_stopping_ends_the_stage_after_its_patience(tiny: TinyInteractions) -> None:
    # lr 0 (MF-MLP's dense Adam takes it; the MF step's RowAdam refuses it): every
    # validation ties the first (epoch 1), so 2 more without a gain stop the stage.
    config = _config(
        "cadc_mlp",
        pretrain={
            "epochs": 20,
            "learning_rate": 0.0,
            "eval_every": 1,
            "early_stopping_patience": 2,
        },
    )
    output, reports = _mf_output(config, tiny)

    assert output["best_epoch"] == 1
    assert output["epochs"] == len(reports.metrics) == 3
    assert output["early_stopped"] is True
    assert [report["best_epoch"] for report in reports.metrics] == [1, 1, 1]


def test_a_resumed_validated_teacher_ends_like_the_uninterrupted_one(
    tiny: TinyInteractions,
) -> None:
    config = _config("cadc", pretrain=OVERFITTING_MF)
    whole, whole_reports = _mf_output(config, tiny)
    # After epoch 6: its best-so-far tables and validations travel in the checkpoint.
    resumed, resumed_reports = _mf_output(config, tiny, resume_from=whole_reports.states[5])

    assert [report["epoch"] for report in resumed_reports.metrics] == [7, 8, 9]
    assert resumed["best_epoch"] == whole["best_epoch"]
    assert resumed["best_val"] == whole["best_val"]
    np.testing.assert_array_equal(resumed["user"], whole["user"])
    np.testing.assert_array_equal(resumed["item"], whole["item"])


def test_an_unvalidated_teacher_runs_every_epoch_and_exports_the_last(
    tiny: TinyInteractions,
) -> None:
    config = _config("cadc", pretrain={**OVERFITTING_MF, "eval_every": 0})
    output, reports = _mf_output(config, tiny)

    assert output["best_epoch"] == 0 and output["best_val"] == {}
    assert output["epochs"] == len(reports.metrics) == 9
    assert not any("val_hr@10" in report for report in reports.metrics)
    np.testing.assert_array_equal(
        output["user"], reports.states[-1]["model"]["user_table.weight"].numpy()
    )


def test_teacher_validation_settings_are_checked_at_load() -> None:
    from cadc_ray.config import ConfigError

    with pytest.raises(
        ConfigError,
        match=r"pretrain\.early_stopping_patience: 3 needs validation: set pretrain\.eval_every",
    ):
        _config("cadc", pretrain={"early_stopping_patience": 3})
    with pytest.raises(ConfigError, match=r"pretrain\.eval_every: must be >= 0, got -1"):
        _config("cadc", pretrain={"eval_every": -1})
    # Ignored, as the other MF settings are, where no MF teacher trains: a sweep's base with
    # a validated teacher serves Random, GS and CADC-ALS trials too.
    for method in ("random", "gs", "cadc_als"):
        assert _config(method, pretrain={"eval_every": 5}).pretrain.eval_every == 5


def test_a_teachers_key_names_its_validation_only_when_it_is_on() -> None:
    from cadc_ray.pretrain_key import pretrain_key

    plain = _config("cadc")
    # Unvalidated: the selection settings play no part (keys from before stay valid).
    assert pretrain_key(_config("cadc", eval={"validation_users": 50})) == pretrain_key(plain)
    validated = _config("cadc", pretrain={"eval_every": 2})
    assert pretrain_key(validated) != pretrain_key(plain)
    assert pretrain_key(
        _config("cadc", pretrain={"eval_every": 2, "early_stopping_patience": 1})
    ) != (pretrain_key(validated))
    sampled = _config("cadc", pretrain={"eval_every": 2}, eval={"validation_users": 50})
    assert pretrain_key(sampled) != pretrain_key(validated)
    # ALS trains no epochs: the fields do not reach it, nor its key.
    als = _config("cadc_als")
    assert pretrain_key(_config("cadc_als", pretrain={"eval_every": 2})) == pretrain_key(als)


def test_the_epoch_line_says_when_its_validation_was_measured() -> None:
    from cadc_ray.runtime.stage import EpochSelection

    values = iter([0.05, 0.04])
    selection = EpochSelection(
        patience=0,
        eval_every=5,
        epochs=12,
        metric="hr@10",
        validate=lambda: {"hr@10": next(values)},
        snapshot=dict,
    )
    for epoch in range(4):  # epochs 1-4: nothing measured yet, no "nan" on the line
        assert selection.after_epoch(epoch)["evaluated"] is False
        assert selection.console_detail(epoch + 1) == ""
    selection.after_epoch(4)
    assert selection.console_detail(5) == "val hr@10 0.0500 (best 0.0500 at epoch 5)"
    selection.after_epoch(5)
    assert selection.console_detail(6) == "val hr@10 0.0500 at epoch 5 (best 0.0500 at epoch 5)"
    for epoch in range(6, 10):
        selection.after_epoch(epoch)
    assert selection.console_detail(10) == "val hr@10 0.0400 (best 0.0500 at epoch 5)"
    # A resumed run's line goes on where the checkpoint left it.
    resumed = EpochSelection(
        patience=0, eval_every=5, epochs=12, metric="hr@10", validate=dict, snapshot=dict
    )
    resumed.load_state(selection.state())
    assert resumed.console_detail(11) == "val hr@10 0.0400 at epoch 10 (best 0.0500 at epoch 5)"
