"""Stage 1 on Ray: MF / MF-MLP pretraining through a TorchTrainer, ALS as one Ray task.

``fit_pretrain`` feeds D_full to the workers as ``resources.ingest`` says
(``runtime.ingest``: all rows in memory on every worker, see ``runtime.worker`` for how the
epochs stay reproducible; or each worker streaming its own shard), trains MF with the
row-sparse fused step (``training.fused_mf``: the touched rows' gradients are all-gathered)
and MF-MLP with autograd, its gradients (both tables', every step) averaged over the ranks
by ``training.data_parallel.DataParallel``; the alternation schedule is a pure
function of ``(epoch, batch)``, so every rank steps the same side. It reports loss, epoch and
samples/s with a checkpoint after every epoch. Rank 0 returns the exported tables
(``Result.return_value`` is rank 0's return value).

With ``pretrain.eval_every`` > 0 the teacher is validated as the TTNN is (full ranking of
the validation users, ``eval.selection_metric``, each rank a slice of the users) every that
many epochs and after the last; the exported tables are the best validation epoch's, and
``pretrain.early_stopping_patience`` validations without a gain stop the stage
(``runtime.stage.EpochSelection``, the TTNN's own). Without it (0, the default) the stage
runs its configured epochs and exports the last.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cadc_ray.config import ExperimentConfig, to_dict
from cadc_ray.models.pretrained import PretrainedTables
from cadc_ray.runtime.stage import (
    Batches,
    EnvironmentHook,
    EpochSelection,
    StageEnvironment,
    TrainingData,
    rank_sliced_ranking,
)
from cadc_ray.training.alternation import MFOptimizers

if TYPE_CHECKING:
    from cadc_ray.data import HeldOutSets

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
    # With pretrain.eval_every > 0: the epoch whose tables are exported (1-based) and its
    # validation metrics (fractions); 0 and {} without validation.
    best_epoch: int = 0
    best_val_metrics: dict[str, float] = field(default_factory=dict)
    early_stopped: bool = False
    eval_seconds: float = 0.0  # validation inside the stage


class MFStage:
    """The MF / MF-MLP pretraining epoch (a ``runtime.stage.StageBody``; no Ray in it)."""

    stage = STAGE

    def __init__(
        self,
        config: ExperimentConfig,
        pretrainer: str,
        num_users: int,
        num_items: int,
        item_counts: np.ndarray,
        seed: int,
        environment: StageEnvironment,
        held_out: HeldOutSets | None = None,
    ) -> None:
        """``held_out``: the split's validation data; needed when ``pretrain.eval_every`` > 0."""
        from cadc_ray.models.mf import MatrixFactorization, MLPMatrixFactorization
        from cadc_ray.runtime.worker import derive_seed
        from cadc_ray.training.alternation import make_mf_optimizers
        from cadc_ray.training.fused_mf import FusedMFTrainer
        from cadc_ray.training.samplers import build_negative_sampler

        self.settings = settings = config.pretrain
        self.epochs, self.batch_size, self.seed = settings.epochs, settings.batch_size, seed
        device = environment.worker.device
        torch.manual_seed(derive_seed(seed, "init"))  # identical initial tables on every rank
        self.base: MatrixFactorization | MLPMatrixFactorization
        if pretrainer == "mf_mlp":
            self.base = MLPMatrixFactorization(
                num_users, num_items, settings.embedding_dim, settings.mlp_hidden
            )
        else:
            self.base = MatrixFactorization(num_users, num_items, settings.embedding_dim)
        self.fused: FusedMFTrainer | None = None
        self.optimizers: FusedMFTrainer | MFOptimizers
        if isinstance(self.base, MatrixFactorization):
            # Row-sparse fused step (training.fused_mf): no DataParallel, whose all-reduce
            # of the dense table gradients is what the fused step avoids; it all-gathers
            # the touched rows.
            self.model: torch.nn.Module = self.base.to(device)
            self.fused = self.optimizers = FusedMFTrainer(
                self.base, settings.learning_rate, settings.weight_decay
            )
        else:
            self.model = environment.wrap_model(self.base)  # DataParallel when world_size > 1
            self.optimizers = make_mf_optimizers(
                self.base, settings.learning_rate, settings.weight_decay
            )
        self.sampler = build_negative_sampler(
            settings.negative_sampler, num_items, item_counts=item_counts
        )
        self.config, self.worker, self.held_out = config, environment.worker, held_out
        self.eval_seconds = 0.0
        self.selection: EpochSelection | None = None
        if settings.eval_every > 0:
            if held_out is None:
                raise ValueError("pretrain.eval_every > 0 needs the split's validation data")
            self.selection = EpochSelection(
                patience=settings.early_stopping_patience,
                eval_every=settings.eval_every,
                epochs=settings.epochs,
                metric=config.eval.selection_metric,
                validate=self.validate,
                snapshot=self.base.state_dict,
            )

    def validate(self) -> dict[str, float]:
        """The teacher's full ranking of the validation users (this rank's slice, sums
        all-reduced), as the TTNN is validated (``full_ranking_sums`` scores without
        autograd)."""
        assert self.held_out is not None
        started = time.perf_counter()
        self.base.eval()
        metrics = rank_sliced_ranking(
            self.base.score_users,
            self.held_out.val_users,
            self.held_out.val_items,
            self.held_out.known,
            tuple(self.config.eval.ks),
            self.config.eval.user_batch_size,
            self.worker,
        )
        self.base.train()
        self.eval_seconds += time.perf_counter() - started
        return metrics

    def load_state(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state["model"])
        self.optimizers.load_state_dict(state["optimizers"]["mf"])
        if self.selection is not None:
            self.selection.load_state(state)

    def before_first_epoch(self) -> None:
        pass

    def train_epoch(self, epoch: int, batches: Batches, generator: torch.Generator) -> float:
        from cadc_ray.training.loops import train_mf_epoch, train_mf_epoch_fused

        settings = self.settings
        if self.fused is not None:
            return train_mf_epoch_fused(
                self.fused,
                batches,
                self.sampler,
                settings.num_negatives,
                generator,
                epoch,
                settings.alternate,
            )
        assert isinstance(self.optimizers, MFOptimizers)
        return train_mf_epoch(
            self.model,
            batches,
            self.optimizers,
            self.sampler,
            settings.num_negatives,
            generator,
            epoch,
            settings.alternate,
        )

    def after_epoch(self, epoch: int) -> dict[str, Any]:
        # Without pretrain.eval_every the stage runs its configured epochs, unvalidated.
        return {} if self.selection is None else self.selection.after_epoch(epoch)

    @property
    def should_stop(self) -> bool:
        return self.selection is not None and self.selection.should_stop

    def state(self) -> dict[str, Any]:
        return {
            "model": self.base.state_dict(),
            "optimizers": {"mf": self.optimizers.state_dict()},
            **({} if self.selection is None else self.selection.state()),
        }

    def console_detail(self, epoch: int) -> str:
        return "" if self.selection is None else self.selection.console_detail(epoch)

    def gauge_value(self) -> float | None:
        return None if self.selection is None else self.selection.last_val.get("hr@10")


def train_mf_stage(
    config: ExperimentConfig,
    pretrainer: str,
    data: TrainingData,
    *,
    num_users: int,
    num_items: int,
    environment: StageEnvironment,
    held_out: HeldOutSets | None = None,
) -> dict[str, Any]:
    """MF / MF-MLP pretraining on the positives ``data`` (held or streamed, see
    ``runtime.ingest``) -> the exported tables and history, on every rank (the ranks' tables
    are equal: the fused step applies the same gathered rows everywhere, ``DataParallel`` the
    same averaged gradients; a TTNN trained next in the same worker group uses them,
    ``runtime.joint``). With ``pretrain.eval_every`` > 0 (``held_out`` given) the tables
    are the best validation epoch's."""
    from cadc_ray.runtime.stage import run_stage
    from cadc_ray.runtime.worker import stage_seed

    seed = stage_seed(config.seed, config.pretrain.seed)
    body = MFStage(
        config, pretrainer, num_users, num_items, data.counts.items, seed, environment, held_out
    )
    run = run_stage(body, environment, config, data.rows)
    selection = body.selection
    if selection is not None and selection.best_state:
        body.base.load_state_dict(selection.best_state)
    tables = body.base.export_tables()  # the module inside DataParallel: wrapping keeps it in place
    return {
        "user": tables.user,
        "item": tables.item,
        "pretrainer": tables.pretrainer,
        "global_bias": tables.global_bias,
        "history": run.history,
        "loop_seconds": run.loop_seconds,
        "epochs": len(run.history),
        "best_epoch": 0 if selection is None else selection.best_epoch,
        "best_val": {} if selection is None else dict(selection.best_val),
        "early_stopped": run.early_stopped,
        "eval_seconds": body.eval_seconds,
    }


def mf_in_worker(
    loop_config: dict[str, Any],
    checkpoint_prefix: str = "",
    adapt: EnvironmentHook | None = None,
) -> tuple[int, dict[str, Any]]:
    """The MF / MF-MLP stage in a Train worker -> (rank, :func:`train_mf_stage`'s output)."""
    from cadc_ray.runtime.ingest import training_data
    from cadc_ray.runtime.stage import start_worker_stage

    config, environment = start_worker_stage(STAGE, loop_config, checkpoint_prefix)
    if adapt is not None:
        environment = adapt(environment)
    num_users, num_items = int(loop_config["num_users"]), int(loop_config["num_items"])
    held_out = None
    if config.pretrain.eval_every > 0:
        from cadc_ray.data import read_held_out

        held_out = read_held_out(
            loop_config["split"],
            num_users,
            num_items,
            config.eval.validation_users,
            config.eval.validation_seed,
        )
    output = train_mf_stage(
        config,
        loop_config["pretrainer"],
        training_data(loop_config, environment.worker, num_users, num_items),
        num_users=num_users,
        num_items=num_items,
        environment=environment,
        held_out=held_out,
    )
    return environment.worker.rank, output


def _mf_worker(loop_config: dict[str, Any]) -> dict[str, Any] | None:
    """``train_loop_per_worker`` of the MF / MF-MLP stage (runs in each Train worker);
    rank 0's return value is the run's."""
    rank, output = mf_in_worker(loop_config)
    return output if rank == 0 else None


def mf_loop_config(
    config: ExperimentConfig,
    pretrainer: str,
    *,
    split: Any,
    num_users: int,
    num_items: int,
    run_name: str,
    storage_path: str | None,
) -> dict[str, Any]:
    """The MF stage's ``train_loop_config`` (without its ingest entries). ``split``: the
    data layer's ``SplitPaths``, where validation reads (``pretrain.eval_every``)."""
    from cadc_ray.runtime.trainer import stage_loop_config

    return {
        **stage_loop_config(config, run_name=run_name, storage_path=storage_path),
        "pretrainer": pretrainer,
        # Only a validated stage reads it: the loop config is unpickled by Train's
        # controller too, so it carries nothing that an unvalidated stage does not use.
        "split": split if config.pretrain.eval_every > 0 else None,
        "num_users": num_users,
        "num_items": num_items,
    }


def exported_tables(output: dict[str, Any]) -> PretrainedTables:
    """The teacher's tables in :func:`train_mf_stage`'s ``output`` (or in a copy of it that
    holds them as tensors, ``runtime.joint``)."""
    return PretrainedTables(
        user=np.asarray(output["user"]),
        item=np.asarray(output["item"]),
        pretrainer=output["pretrainer"],
        global_bias=float(output["global_bias"]),
    )


def pretrain_result(
    output: dict[str, Any] | None, *, seconds: float, checkpoint_path: str | None, run_name: str
) -> PretrainResult:
    """:class:`PretrainResult` of :func:`train_mf_stage`'s ``output`` (rank 0's)."""
    if output is None:
        raise RuntimeError(f"pretraining run {run_name!r} returned no tables from rank 0")
    return PretrainResult(
        tables=exported_tables(output),
        seconds=seconds,
        epochs=int(output["epochs"]),
        history=list(output["history"]),
        loop_seconds=float(output["loop_seconds"]),
        checkpoint_path=checkpoint_path,
        best_epoch=int(output.get("best_epoch", 0)),
        best_val_metrics=dict(output.get("best_val", {})),
        early_stopped=bool(output.get("early_stopped", False)),
        eval_seconds=float(output.get("eval_seconds", 0.0)),
    )


def train_als_stage(
    config: ExperimentConfig,
    users: np.ndarray,
    items: np.ndarray,
    *,
    num_users: int,
    num_items: int,
    threads: int,
) -> PretrainedTables:
    """ALS on the positives ``(users (N,), items (N,))`` with the config's ``pretrain.*``
    settings and the stage's seed (no Ray in it)."""
    from cadc_ray.pretrain.als import fit_als
    from cadc_ray.runtime.worker import stage_seed

    settings = config.pretrain
    return fit_als(
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


def _als_task(
    train_dir: str, num_users: int, num_items: int, config_dict: dict[str, Any], threads: int
) -> tuple[PretrainedTables, float]:
    """Body of the ALS Ray task: reads D_full with plain pyarrow and fits ALS."""
    from cadc_ray.config import ExperimentConfig, from_dict
    from cadc_ray.data import read_pairs

    config = from_dict(ExperimentConfig, config_dict, "<als task>")
    torch.set_num_threads(threads)
    users, items = read_pairs(train_dir)
    started = time.perf_counter()
    tables = train_als_stage(
        config, users, items, num_users=num_users, num_items=num_items, threads=threads
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
    from cadc_ray.runtime.ingest import training_input
    from cadc_ray.runtime.trainer import run_torch_trainer
    from cadc_ray.runtime.worker import stage_seed

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

    training = training_input(
        config, split.train_dir, stage_seed(config.seed, config.pretrain.seed)
    )
    result = run_torch_trainer(
        _mf_worker,
        mf_loop_config(
            config,
            pretrainer,
            split=split,
            num_users=num_users,
            num_items=num_items,
            run_name=run_name,
            storage_path=storage_path,
        ),
        config=config,
        training=training,
        use_gpu=use_gpu,
        run_name=run_name,
        storage_path=storage_path,
        callbacks=callbacks,
    )
    checkpoint = getattr(result, "checkpoint", None)
    return pretrain_result(
        result.return_value,
        seconds=time.perf_counter() - started,
        checkpoint_path=checkpoint.path if checkpoint is not None else None,
        run_name=run_name,
    )
