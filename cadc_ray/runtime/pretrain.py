"""Stage 1 on Ray: MF / MF-MLP pretraining through a TorchTrainer, ALS as one Ray task.

``fit_pretrain`` feeds D_full from Ray Data (``datasets={"train": ...}``); each worker
pulls its shard once into memory (see ``runtime.worker`` for why and how the epochs stay
reproducible), trains MF with the row-sparse fused step (``training.fused_mf``: the touched
rows' gradients are all-gathered, no DDP) and MF-MLP with DDP (gradients for both tables on
every step, so DDP's all-reduce sees every parameter); the alternation schedule is a pure
function of ``(epoch, batch)``, so every rank steps the same side. It reports loss, epoch and
samples/s with a checkpoint after every epoch. Rank 0 returns the exported tables
(``Result.return_value`` is rank 0's return value).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from cadc_ray.config import ExperimentConfig, to_dict
from cadc_ray.models.pretrained import PretrainedTables

logger = logging.getLogger(__name__)

STAGE = "pretrain"


@dataclass(frozen=True)
class PretrainResult:
    """What stage 1 hands on: the tables plus how long and how it trained."""

    tables: PretrainedTables
    seconds: float  # wall time of the stage, worker start-up included
    epochs: int  # epochs (MF) or iterations (ALS) trained
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: loss, ...
    loop_seconds: float = 0.0  # time inside the training epochs only
    checkpoint_path: str | None = None


def _mf_worker(loop_config: dict[str, Any]) -> dict[str, Any] | None:
    """``train_loop_per_worker`` of the MF / MF-MLP stage (runs in each Train worker)."""
    import ray.train
    import ray.train.torch

    from cadc_ray.console import StageProgress, quiet_train_worker
    from cadc_ray.models.mf import MatrixFactorization, MLPMatrixFactorization
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
    from cadc_ray.training.alternation import MFOptimizers, make_mf_optimizers
    from cadc_ray.training.fused_mf import FusedMFTrainer
    from cadc_ray.training.loops import train_mf_epoch, train_mf_epoch_fused
    from cadc_ray.training.samplers import build_negative_sampler

    quiet_train_worker()
    config = config_from_loop(loop_config)
    settings = config.pretrain
    torch.set_num_threads(config.resources.torch_threads)
    worker = current_worker()
    seed = stage_seed(config.seed, settings.seed)
    num_users, num_items = int(loop_config["num_users"]), int(loop_config["num_items"])

    data = pull_shard(ray.train.get_dataset_shard("train"), ("user_id", "item_id"), worker)
    users = torch.from_numpy(data["user_id"].astype(np.int64)).to(worker.device)  # (N,)
    items = torch.from_numpy(data["item_id"].astype(np.int64)).to(worker.device)  # (N,)
    num_rows = int(users.numel())
    if num_rows < worker.world_size:
        raise ValueError(f"pretraining data has {num_rows} rows for {worker.world_size} workers")

    torch.manual_seed(derive_seed(seed, "init"))  # identical initial tables on every rank
    base: MatrixFactorization | MLPMatrixFactorization
    if loop_config["pretrainer"] == "mf_mlp":
        base = MLPMatrixFactorization(
            num_users, num_items, settings.embedding_dim, settings.mlp_hidden
        )
    else:
        base = MatrixFactorization(num_users, num_items, settings.embedding_dim)
    fused: FusedMFTrainer | None = None
    optimizers: FusedMFTrainer | MFOptimizers
    model: torch.nn.Module
    if isinstance(base, MatrixFactorization):
        # Row-sparse fused step (training.fused_mf): no DDP, whose all-reduce of the dense
        # table gradients is what the fused step avoids; it all-gathers the touched rows.
        model = base.to(worker.device)
        fused = optimizers = FusedMFTrainer(base, settings.learning_rate, settings.weight_decay)
    else:
        model = ray.train.torch.prepare_model(base)  # DDP when world_size > 1
        optimizers = make_mf_optimizers(base, settings.learning_rate, settings.weight_decay)
    sampler = build_negative_sampler(settings.negative_sampler, num_items, data["item_id"])

    config_dict = to_dict(config)
    start_epoch, history, loop_seconds = 0, [], 0.0
    resumed = restore_from_train_checkpoint()
    if resumed is not None:
        check_resumable(resumed, STAGE, config_dict)
        base.load_state_dict(resumed["model"])
        optimizers.load_state_dict(resumed["optimizers"]["mf"])
        start_epoch = int(resumed["epoch"])
        history = list(resumed["history"])
        loop_seconds = float(resumed["loop_seconds"])

    gauges = stage_gauges(STAGE, loop_config["run_name"]) if worker.rank == 0 else None
    timer = EpochTimer()
    progress = StageProgress(STAGE, settings.epochs, start_epoch)
    for epoch in range(start_epoch, settings.epochs):
        reseed_global_rng(seed, worker.rank, epoch)
        # Negatives drawn where the batches are: no host-to-device copy per step.
        generator = seeded_generator(seed, "negatives", worker.rank, epoch, device=worker.device)
        batches = (
            (users[rows], items[rows])
            for rows in epoch_batches(num_rows, settings.batch_size, seed, epoch, worker)
        )
        with timer:
            if fused is not None:
                loss = train_mf_epoch_fused(
                    fused,
                    batches,
                    sampler,
                    settings.num_negatives,
                    generator,
                    epoch,
                    settings.alternate,
                )
            else:
                assert isinstance(optimizers, MFOptimizers)
                loss = train_mf_epoch(
                    model,
                    batches,
                    optimizers,
                    sampler,
                    settings.num_negatives,
                    generator,
                    epoch,
                    settings.alternate,
                )
        loop_seconds += timer.last_seconds
        rows_per_rank = num_rows // worker.world_size  # epoch_batches' share per rank
        loss_sum, rows_seen = all_reduce_sums([loss * rows_per_rank, rows_per_rank], worker)
        samples_per_second = rows_seen / max(timer.last_seconds, 1e-9)
        metrics = {
            "epoch": epoch + 1,
            "loss": loss_sum / rows_seen,
            "samples_per_second": samples_per_second,
            "epoch_seconds": timer.last_seconds,
            "train_loop_seconds": loop_seconds,
        }
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
                "optimizers": {"mf": optimizers.state_dict()},
                "history": history,
                "loop_seconds": loop_seconds,
                "rng": capture_rng_state(),
            }
            if gauges is not None:
                gauges.record_epoch(epoch + 1, samples_per_second, None)
            logger.info(progress.line(epoch + 1, metrics["loss"], samples_per_second))
        report_epoch(metrics, state, worker, epoch + 1, loop_config["local_checkpoint_root"])
    del model
    if worker.rank != 0:
        return None
    tables = base.export_tables()  # the module inside DDP: prepare_model wraps it in place
    return {
        "user": tables.user,
        "item": tables.item,
        "pretrainer": tables.pretrainer,
        "global_bias": tables.global_bias,
        "history": history,
        "loop_seconds": loop_seconds,
        "epochs": settings.epochs,
    }


def _als_task(
    train_dir: str, num_users: int, num_items: int, config_dict: dict[str, Any], threads: int
) -> tuple[PretrainedTables, float]:
    """Body of the ALS Ray task: reads D_full with plain pyarrow and fits ALS."""
    from cadc_ray.config import ExperimentConfig, from_dict
    from cadc_ray.data import read_pairs
    from cadc_ray.pretrain.als import fit_als
    from cadc_ray.runtime.worker import stage_seed

    config = from_dict(ExperimentConfig, config_dict, "<als task>")
    torch.set_num_threads(threads)
    users, items = read_pairs(train_dir)
    started = time.perf_counter()
    settings = config.pretrain
    tables = fit_als(
        users,
        items,
        num_users,
        num_items,
        dim_plus_bias=settings.embedding_dim + 1,
        iterations=settings.als_iterations,
        regularization=settings.als_regularization,
        alpha=settings.als_alpha,
        calibrate=settings.als_export == "calibrated",
        seed=stage_seed(config.seed, settings.seed) % (2**31),
        num_threads=threads,
    )
    return tables, time.perf_counter() - started


def fit_pretrain(
    config: ExperimentConfig,
    split: Any,
    *,
    num_users: int,
    num_items: int,
    use_gpu: bool = False,
    run_name: str = STAGE,
    storage_path: str | None = None,
    callbacks: list[Any] | None = None,
) -> PretrainResult:
    """Stage 1 on D_full (``split.train_dir``) with the method's pretrainer.

    ``split`` is the data layer's ``SplitPaths``. MF / MF-MLP run on
    ``resources.num_workers`` Train workers (0: in-process); ALS runs as one Ray task
    with ``resources.cpus_per_worker`` CPUs. Requires an initialized Ray.
    """
    import ray

    from cadc_ray.methods import METHODS
    from cadc_ray.runtime.trainer import local_checkpoint_root, run_torch_trainer

    pretrainer = METHODS[config.method].pretrainer
    if pretrainer is None:
        raise ValueError(f"method {config.method!r} does not pretrain")
    started = time.perf_counter()
    if pretrainer == "als":
        task = ray.remote(num_cpus=config.resources.cpus_per_worker)(_als_task)
        tables, loop_seconds = ray.get(
            task.remote(
                str(split.train_dir),
                num_users,
                num_items,
                to_dict(config),
                config.resources.torch_threads,
            )
        )
        return PretrainResult(
            tables=tables,
            seconds=time.perf_counter() - started,
            epochs=config.pretrain.als_iterations,
            loop_seconds=loop_seconds,
        )

    dataset = ray.data.read_parquet(
        str(split.train_dir), columns=["row_index", "user_id", "item_id"]
    )
    result = run_torch_trainer(
        _mf_worker,
        {
            "config": to_dict(config),
            "pretrainer": pretrainer,
            "num_users": num_users,
            "num_items": num_items,
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
        raise RuntimeError(f"pretraining run {run_name!r} returned no tables from rank 0")
    tables = PretrainedTables(
        user=output["user"],
        item=output["item"],
        pretrainer=output["pretrainer"],
        global_bias=float(output["global_bias"]),
    )
    checkpoint = getattr(result, "checkpoint", None)
    return PretrainResult(
        tables=tables,
        seconds=time.perf_counter() - started,
        epochs=int(output["epochs"]),
        history=list(output["history"]),
        loop_seconds=float(output["loop_seconds"]),
        checkpoint_path=checkpoint.path if checkpoint is not None else None,
    )
