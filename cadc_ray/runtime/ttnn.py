"""Stage 2 on Ray: the two-tower network through a TorchTrainer (METHOD 1.3-1.5).

Training data: the uniform sample ``D_sub`` (or D_full for GS), fed from Ray Data and
pulled once into memory per worker (``runtime.worker``). Over-/under-sampling is applied
to it in the worker with a seeded generator (the same rows on every rank); LogQ's
frequencies come from the (rebalanced) training stream.

Pretrained tables arrive as ``[ObjectRef]`` (wrapped: a bare top-level ref would be
resolved and copied by value: docs/ray_notes.md, "Object store") and are ``ray.get`` in the worker: zero-copy,
read-only numpy that frozen techniques wrap and ``init`` copies.

Every epoch: train, then (every ``train.eval_every`` epochs and at the last) full-ranking
validation in which each rank scores a disjoint slice of the users and the hit/NDCG sums
are all-reduced, so every rank sees the same value and takes the same early-stopping
decision (every rank must call ``ray.train.report`` the same number of times). Every
epoch reports ``val_hr@k`` / ``val_ndcg@k``, loss, samples/s and best-so-far with a
checkpoint; these reports are what Tune sees (one report = one iteration, ASHA per
epoch). The best epoch's trainable state is kept and the test metrics are computed with
it at the end.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cadc_ray.config import ExperimentConfig, to_dict

logger = logging.getLogger(__name__)

STAGE = "ttnn"
VAL_PREFIX = "val_"
BEST_PREFIX = "best_val_"


def reported_metric(metric: str) -> str:
    """Name of a validation metric in the per-epoch reports: ``hr@10`` -> ``val_hr@10``."""
    return VAL_PREFIX + metric


@dataclass(frozen=True)
class TTNNInputs:
    """Where stage 2 reads its data; cheap to pickle (paths and one ObjectRef)."""

    prepared: Path  # prepared dataset folder (features, manifest)
    split: Any  # the data layer's SplitPaths (train_dir, val_path, test_path)
    train_path: Path  # Parquet folder of the training interactions: D_sub, or D_full (GS)
    num_users: int
    num_items: int
    pretrained: list[Any] | None = None  # [ObjectRef to PretrainedTables], wrapped


@dataclass(frozen=True)
class TTNNResult:
    test_metrics: dict[str, float]  # at the best epoch; fractions
    best_val_metrics: dict[str, float]
    best_epoch: int  # 1-based; 0 = before any step (``residual``: the teacher itself)
    epochs_run: int
    early_stopped: bool
    seconds: float  # wall time of the stage, worker start-up included
    loop_seconds: float  # inside training epochs only
    train_interactions: int  # after rebalancing
    trainable_parameters: int
    frozen_parameters: int
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint_path: str | None = None
    # The pretrained teacher alone on the test users (fractions); {} without a scoring teacher.
    teacher_test_metrics: dict[str, float] = field(default_factory=dict)
    # models.id_tables.model_bytes: trainable, frozen, lookup and total bytes.
    model_bytes: dict[str, int] = field(default_factory=dict)
    id_table_compression: float = 1.0  # full id-table bytes / actual id-table bytes


def build_ttnn_inputs(
    config: ExperimentConfig,
    prepared: Path,
    split: Any,
    pretrained: list[Any] | None = None,
) -> TTNNInputs:
    """Materializes the method's training data (the sample, reused if present) -> inputs.

    ``pretrained`` must be given (as ``[ref]``) exactly when the method pretrains.
    """
    from cadc_ray.data import Manifest, materialize_sample
    from cadc_ray.methods import METHODS

    spec = METHODS[config.method]
    if (spec.pretrainer is None) != (pretrained is None):
        raise ValueError(
            f"method {config.method!r} {'needs' if spec.pretrainer else 'takes no'} "
            "pretrained tables"
        )
    if pretrained is not None and (not isinstance(pretrained, list) or len(pretrained) != 1):
        raise ValueError("pretrained must be a one-element list [ObjectRef] (docs/ray_notes.md)")
    manifest = Manifest.load(prepared)
    train_path = (
        Path(split.train_dir)
        if spec.uses_full_data
        else Path(materialize_sample(split, config.data.filter_ratio, config.data.sample_seed))
    )
    return TTNNInputs(
        prepared=Path(prepared),
        split=split,
        train_path=train_path,
        num_users=manifest.num_users,
        num_items=manifest.num_items,
        pretrained=pretrained,
    )


def _early_stopping_state(stopper: Any) -> dict[str, Any]:
    return {
        "best_value": stopper.best_value,
        "best_epoch": stopper.best_epoch,
        "epochs_without_improvement": stopper.epochs_without_improvement,
    }


def _ttnn_worker(loop_config: dict[str, Any]) -> dict[str, Any] | None:
    """``train_loop_per_worker`` of the TTNN stage (runs in each Train worker)."""
    import ray
    import ray.train
    import ray.train.torch

    from cadc_ray.baselines import item_log_frequency, rebalance
    from cadc_ray.console import StageProgress, quiet_train_worker
    from cadc_ray.data import load_entity_features, read_held_out
    from cadc_ray.evaluation import FullRankingSums, full_ranking_sums
    from cadc_ray.methods import METHODS, resolved_integration
    from cadc_ray.models import build_two_tower, count_parameters
    from cadc_ray.models.id_tables import id_table_compression, model_bytes
    from cadc_ray.models.pretrained import teacher_scorer
    from cadc_ray.runtime.checkpoint import (
        FORMAT_VERSION,
        capture_rng_state,
        software_versions,
    )
    from cadc_ray.runtime.metrics import stage_gauges
    from cadc_ray.runtime.trainer import check_resumable, config_from_loop
    from cadc_ray.runtime.worker import (
        EpochTimer,
        all_reduce_sums,
        current_worker,
        derive_seed,
        epoch_batches,
        pull_shard,
        report_epoch,
        reseed_global_rng,
        restore_from_train_checkpoint,
        seeded_generator,
        stage_seed,
    )
    from cadc_ray.training.early_stopping import EarlyStopping
    from cadc_ray.training.loops import train_two_tower_epoch
    from cadc_ray.training.optim import make_optimizer
    from cadc_ray.training.samplers import build_negative_sampler

    quiet_train_worker()
    config = config_from_loop(loop_config)
    settings = config.train
    spec = METHODS[config.method]
    torch.set_num_threads(config.resources.torch_threads)
    worker = current_worker()
    seed = stage_seed(config.seed, settings.seed)
    num_users, num_items = int(loop_config["num_users"]), int(loop_config["num_items"])
    split = loop_config["split"]

    # --- training data: this worker's shard, gathered (same rows on every rank) ---
    data = pull_shard(ray.train.get_dataset_shard("train"), ("user_id", "item_id"), worker)
    train_users, train_items = rebalance(
        spec.rebalance,
        data["user_id"],
        data["item_id"],
        num_items,
        derive_seed(seed, "rebalance"),
    )
    num_rows = int(train_users.size)
    if num_rows < worker.world_size:
        raise ValueError(f"training data has {num_rows} rows for {worker.world_size} workers")
    users = torch.from_numpy(np.ascontiguousarray(train_users, dtype=np.int64)).to(worker.device)
    items = torch.from_numpy(np.ascontiguousarray(train_items, dtype=np.int64)).to(worker.device)
    log_q = (
        torch.from_numpy(item_log_frequency(train_items, num_items))
        if spec.logq_correction
        else None
    )

    # --- evaluation data (plain pyarrow; paths must be reachable from every node) ---
    held_out = read_held_out(split, num_users, num_items)  # testing masks the val item too

    # --- model ---
    pretrained = None
    if loop_config["pretrained"] is not None:
        pretrained = ray.get(loop_config["pretrained"][0])  # zero-copy, read-only arrays
    user_features = item_features = None
    if config.model.use_features:
        user_features = load_entity_features(loop_config["prepared"], "user")
        item_features = load_entity_features(loop_config["prepared"], "item")
    torch.manual_seed(derive_seed(seed, "init"))  # identical initial weights on every rank
    base = build_two_tower(
        config.model,
        num_users,
        num_items,
        user_features,
        item_features,
        pretrained,
        resolved_integration(config.method, config.model.integration),
        # Access counts in the training data, for the frequency-aware id tables (METHOD 2).
        id_counts={
            "user": np.bincount(train_users, minlength=num_users),
            "item": np.bincount(train_items, minlength=num_items),
        },
    )
    trainable_parameters, frozen_parameters = count_parameters(base)
    size_bytes, compression = model_bytes(base), id_table_compression(base)
    model = ray.train.torch.prepare_model(base)  # DDP when world_size > 1; `base` stays inner
    optimizer = make_optimizer(base, settings.learning_rate, settings.weight_decay)
    sampler = build_negative_sampler(settings.negative_sampler, num_items, train_items)

    ks = tuple(config.eval.ks)
    rank_slice = slice(worker.rank, None, worker.world_size)

    def evaluate(
        eval_users: np.ndarray,
        heldout_items: np.ndarray,
        extra_mask: np.ndarray | None,
        scorer: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> dict[str, float]:
        """Full ranking over this rank's slice of the users, sums all-reduced -> fractions.

        ``scorer``: ``users (B,) -> (B, num_items)``; default the model's own ranking.
        """
        base.eval()
        mine = eval_users[rank_slice]
        if mine.size:
            sums = full_ranking_sums(
                base.ranking_scorer() if scorer is None else scorer,
                mine,
                heldout_items[rank_slice],
                held_out.known,
                ks,
                config.eval.user_batch_size,
                extra_mask_items=None if extra_mask is None else extra_mask[rank_slice],
                device=worker.device,
            )
        else:
            sums = FullRankingSums(
                ks=ks, hit_sums=dict.fromkeys(ks, 0.0), ndcg_sums=dict.fromkeys(ks, 0.0)
            )
        total = all_reduce_sums(sums.to_tensor().tolist(), worker)
        base.train()
        return FullRankingSums.from_tensor(ks, torch.tensor(total, dtype=torch.float64)).metrics()

    # --- state, possibly resumed ---
    config_dict = to_dict(config)
    stopper = EarlyStopping(settings.early_stopping_patience, mode="max")
    start_epoch, history, loop_seconds = 0, [], 0.0
    best_state: dict[str, torch.Tensor] | None = None
    best_val: dict[str, float] = {}
    last_val: dict[str, float] = {}
    resumed = restore_from_train_checkpoint()
    if resumed is not None:
        check_resumable(resumed, STAGE, config_dict)
        base.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizers"]["adam"])
        start_epoch = int(resumed["epoch"])
        history = list(resumed["history"])
        loop_seconds = float(resumed["loop_seconds"])
        stopper.best_value = resumed["early_stopping"]["best_value"]
        stopper.best_epoch = resumed["early_stopping"]["best_epoch"]
        stopper.epochs_without_improvement = resumed["early_stopping"]["epochs_without_improvement"]
        best_state = resumed["best_model"]
        best_val = dict(resumed["best_val"])
        last_val = dict(resumed["last_val"])

    gauges = stage_gauges(STAGE, loop_config["run_name"]) if worker.rank == 0 else None
    timer = EpochTimer()
    progress = StageProgress(STAGE, settings.epochs, start_epoch)
    early_stopped = stopper.should_stop and start_epoch < settings.epochs
    selection = config.eval.selection_metric
    if resumed is None and resolved_integration(config.method, config.model.integration) == (
        "residual"
    ):
        # Before any step the residual model *is* the teacher (its correction starts at 0):
        # validating it as "epoch 0" lets early stopping keep the teacher (best_epoch 0) when
        # training on the sample never beats it on validation. Not a report: Tune's
        # iterations stay one per epoch.
        last_val = evaluate(held_out.val_users, held_out.val_items, None)
        stopper.update(0, last_val[selection])
        best_val = dict(last_val)
        best_state = copy.deepcopy(base.state_dict())
        if worker.rank == 0:
            logger.info("ttnn epoch 0 (the teacher): %s %.4f", selection, last_val[selection])
    for epoch in range(start_epoch, settings.epochs):
        if stopper.should_stop:  # resumed after the stopping epoch's report
            early_stopped = True
            break
        reseed_global_rng(seed, worker.rank, epoch)
        # Negatives drawn where the batches are: no host-to-device copy per step.
        generator = seeded_generator(seed, "negatives", worker.rank, epoch, device=worker.device)
        batches = (
            (users[rows], items[rows])
            for rows in epoch_batches(num_rows, settings.batch_size, seed, epoch, worker)
        )
        with timer:
            loss = train_two_tower_epoch(
                model, batches, optimizer, sampler, settings.num_negatives, generator, log_q
            )
        loop_seconds += timer.last_seconds
        rows_per_rank = num_rows // worker.world_size
        loss_sum, rows_seen = all_reduce_sums([loss * rows_per_rank, rows_per_rank], worker)
        samples_per_second = rows_seen / max(timer.last_seconds, 1e-9)

        evaluated = (epoch + 1) % settings.eval_every == 0 or epoch + 1 == settings.epochs
        if evaluated:
            last_val = evaluate(held_out.val_users, held_out.val_items, None)
            if stopper.update(epoch + 1, last_val[selection]):
                best_val = dict(last_val)
                best_state = copy.deepcopy(base.state_dict())
        metrics: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": loss_sum / rows_seen,
            "samples_per_second": samples_per_second,
            "epoch_seconds": timer.last_seconds,
            "train_loop_seconds": loop_seconds,
            "evaluated": evaluated,
            "best_epoch": stopper.best_epoch or 0,
        }
        metrics.update({reported_metric(name): value for name, value in last_val.items()})
        metrics.update({BEST_PREFIX + name: value for name, value in best_val.items()})
        history.append(metrics)
        state = None
        if worker.rank == 0:
            state = {
                "format_version": FORMAT_VERSION,
                "stage": STAGE,
                "config": config_dict,
                "versions": software_versions(),
                "seed": config.seed,
                "stage_seed": seed,  # what the per-epoch generators derive from
                "epoch": epoch + 1,
                "model": base.state_dict(),
                "optimizers": {"adam": optimizer.state_dict()},
                "early_stopping": _early_stopping_state(stopper),
                "best_model": best_state if best_state is not None else {},
                "best_val": best_val,
                "last_val": last_val,
                "history": history,
                "loop_seconds": loop_seconds,
                "rng": capture_rng_state(),
            }
            if gauges is not None:
                gauges.record_epoch(epoch + 1, samples_per_second, last_val.get("hr@10"))
            validation = (
                f"val {selection} {last_val.get(selection, float('nan')):.4f} (best "
                f"{best_val.get(selection, float('nan')):.4f} at epoch {stopper.best_epoch or 0})"
            )
            logger.info(progress.line(epoch + 1, metrics["loss"], samples_per_second, validation))
        report_epoch(metrics, state, worker, epoch + 1, loop_config["local_checkpoint_root"])
        if stopper.should_stop:
            early_stopped = epoch + 1 < settings.epochs
            break

    # --- test at the best epoch ---
    if best_state:
        base.load_state_dict(best_state)
    test = evaluate(held_out.test_users, held_out.test_items, held_out.test_extra_mask)
    # The teacher alone on the same test users and masks: the reference the TTNN is read
    # against (Figure 1's "teacher" line); {} when the tables cannot score (mf_mlp).
    teacher = None if pretrained is None else teacher_scorer(pretrained)
    teacher_test = (
        {}
        if teacher is None
        else evaluate(held_out.test_users, held_out.test_items, held_out.test_extra_mask, teacher)
    )
    if worker.rank != 0:
        return None
    return {
        "test": test,
        "best_val": best_val,
        "best_epoch": stopper.best_epoch or 0,
        "epochs_run": len(history),
        "early_stopped": early_stopped,
        "history": history,
        "loop_seconds": loop_seconds,
        "train_interactions": num_rows,
        "trainable_parameters": trainable_parameters,
        "frozen_parameters": frozen_parameters,
        "model_bytes": size_bytes,
        "id_table_compression": compression,
        "teacher_test": teacher_test,
    }


def fit_ttnn(
    config: ExperimentConfig,
    inputs: TTNNInputs,
    *,
    use_gpu: bool = False,
    run_name: str = STAGE,
    storage_path: str | None = None,
    callbacks: list[Any] | None = None,
) -> TTNNResult:
    """Stage 2: trains the TTNN on ``inputs.train_path`` and returns test metrics at the best epoch.

    ``callbacks``: Train ``UserCallback``s for the controller, e.g. Tune's
    ``TuneReportCallback`` (skipped in local mode, ``resources.num_workers=0``).
    ``run_name`` + ``storage_path`` name the Train run: a rerun with the same name and
    config resumes from its latest checkpoint (``RunConfig(name=f"train-{trial_id}")``).
    Requires an initialized Ray.
    """
    import ray

    from cadc_ray.runtime.trainer import local_checkpoint_root, run_torch_trainer

    started = time.perf_counter()
    dataset = ray.data.read_parquet(
        str(inputs.train_path), columns=["row_index", "user_id", "item_id"]
    )
    result = run_torch_trainer(
        _ttnn_worker,
        {
            "config": to_dict(config),
            "num_users": inputs.num_users,
            "num_items": inputs.num_items,
            "split": inputs.split,
            "prepared": str(inputs.prepared),
            "pretrained": inputs.pretrained,
            "run_name": run_name,
            "local_checkpoint_root": (
                local_checkpoint_root(storage_path, run_name)
                if config.resources.num_workers == 0
                else None
            ),
        },
        config=config,
        datasets={"train": dataset},
        use_gpu=use_gpu,
        run_name=run_name,
        storage_path=storage_path,
        callbacks=callbacks,
    )
    output = result.return_value
    if output is None:
        raise RuntimeError(f"TTNN run {run_name!r} returned nothing from rank 0")
    checkpoint = getattr(result, "checkpoint", None)
    return TTNNResult(
        test_metrics=dict(output["test"]),
        best_val_metrics=dict(output["best_val"]),
        best_epoch=int(output["best_epoch"]),
        epochs_run=int(output["epochs_run"]),
        early_stopped=bool(output["early_stopped"]),
        seconds=time.perf_counter() - started,
        loop_seconds=float(output["loop_seconds"]),
        train_interactions=int(output["train_interactions"]),
        trainable_parameters=int(output["trainable_parameters"]),
        frozen_parameters=int(output["frozen_parameters"]),
        model_bytes=dict(output["model_bytes"]),
        id_table_compression=float(output["id_table_compression"]),
        history=list(output["history"]),
        checkpoint_path=checkpoint.path if checkpoint is not None else None,
        teacher_test_metrics=dict(output["teacher_test"]),
    )
