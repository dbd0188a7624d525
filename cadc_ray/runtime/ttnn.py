"""Stage 2 on Ray: the two-tower network through a TorchTrainer (METHOD 1.3-1.5).

Training data: the uniform sample ``D_sub`` (or D_full for GS), held in memory by every
worker or streamed per worker shard, as ``resources.ingest`` says (``runtime.ingest``).
Over-/under-sampling (memory only) is applied in the worker with a seeded generator (the
same rows on every rank); LogQ's frequencies come from the (rebalanced) training stream's
counts.

Pretrained tables arrive as ``[ObjectRef]`` (wrapped: a bare top-level ref would be
resolved and copied by value: docs/ray_notes.md, "Object store") and are ``ray.get`` in the worker: zero-copy,
read-only numpy that frozen techniques wrap and ``init`` copies. In a worker group that
trained the teacher just before (``runtime.joint``), the worker's own tables are used.

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

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cadc_ray.config import ExperimentConfig
from cadc_ray.runtime.stage import (
    Batches,
    EnvironmentHook,
    EpochSelection,
    StageEnvironment,
    TrainingData,
    rank_sliced_ranking,
)

if TYPE_CHECKING:
    from cadc_ray.data import EntityFeatures, HeldOutSets, InteractionCounts
    from cadc_ray.models.pretrained import PretrainedTables

logger = logging.getLogger(__name__)

STAGE = "ttnn"


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
    # Full-ranking evaluation inside the stage (validation, test, the teacher's test):
    # with loop_seconds, what separates the stage's work from its fixed cost.
    eval_seconds: float = 0.0
    # Trainable id tables updated row-sparsely (train.id_table_updates), by module name.
    sparse_id_tables: list[str] = field(default_factory=list)


def build_ttnn_inputs(
    config: ExperimentConfig,
    prepared: Path,
    split: Any,
    pretrained: list[Any] | None = None,
) -> TTNNInputs:
    """Materializes the method's training data (the sample, reused if present) -> inputs.

    ``pretrained``: the teacher as ``[ref]``. :func:`fit_ttnn` needs it exactly when the
    method pretrains; a TTNN trained in its teacher's worker group (``runtime.joint``) has
    none.
    """
    from cadc_ray.data import Manifest, materialize_sample
    from cadc_ray.methods import METHODS

    spec = METHODS[config.method]
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


@dataclass(frozen=True)
class ResolvedInputs:
    """What a TTNN worker reads besides its training rows, resolved (no Ray objects)."""

    num_users: int
    num_items: int
    held_out: HeldOutSets  # validation / test pairs and the masks
    pretrained: PretrainedTables | None  # the teacher's rows; None without a pretrainer
    user_features: EntityFeatures | None  # None when model.use_features is off
    item_features: EntityFeatures | None


class TTNNStage:
    """The two-tower epoch, validation and early stopping (a ``runtime.stage.StageBody``;
    no Ray in it)."""

    stage = STAGE

    def __init__(
        self,
        config: ExperimentConfig,
        counts: InteractionCounts,
        inputs: ResolvedInputs,
        seed: int,
        environment: StageEnvironment,
    ) -> None:
        from cadc_ray.baselines import log_frequency
        from cadc_ray.methods import METHODS, resolved_integration
        from cadc_ray.models import build_two_tower, count_parameters
        from cadc_ray.models.id_tables import id_table_compression, model_bytes
        from cadc_ray.runtime.device import sparse_gradients_all_reduce
        from cadc_ray.runtime.worker import derive_seed
        from cadc_ray.training.optim import sparse_id_tables, two_tower_optimizers
        from cadc_ray.training.samplers import build_negative_sampler

        self.config = config
        self.settings = settings = config.train
        self.epochs, self.batch_size, self.seed = settings.epochs, settings.batch_size, seed
        self.worker = environment.worker
        self.held_out = inputs.held_out
        num_users, num_items = inputs.num_users, inputs.num_items
        self.integration = resolved_integration(config.method, config.model.integration)
        self.log_q = (
            torch.from_numpy(log_frequency(counts.items))
            if METHODS[config.method].logq_correction
            else None
        )
        torch.manual_seed(derive_seed(seed, "init"))  # identical initial weights on every rank
        self.base = build_two_tower(
            config.model,
            num_users,
            num_items,
            inputs.user_features,
            inputs.item_features,
            inputs.pretrained,
            self.integration,
            # Access counts in the training data, for the frequency-aware id tables (METHOD 2).
            id_counts={"user": counts.users, "item": counts.items},
        )
        self.trainable_parameters, self.frozen_parameters = count_parameters(self.base)
        self.model_bytes, self.id_table_compression = (
            model_bytes(self.base),
            id_table_compression(self.base),
        )
        sparse_tables = sparse_id_tables(
            self.base,
            settings.id_table_updates,
            settings.weight_decay,
            sparse_gradients_all_reduce(self.worker.world_size),
        )
        # Before DataParallel wraps the model: its sparse tables are known from the start.
        self.optimizers = two_tower_optimizers(
            self.base, settings.learning_rate, settings.weight_decay, sparse_tables
        )
        self.sparse_id_tables = sorted(sparse_tables)
        if sparse_tables and self.worker.rank == 0:
            logger.info("row-sparse id table updates (SparseAdam): %s", ", ".join(sparse_tables))
        self.model = environment.wrap_model(self.base)  # DataParallel when world_size > 1
        self.sampler = build_negative_sampler(
            settings.negative_sampler, num_items, item_counts=counts.items
        )
        self.ks = tuple(config.eval.ks)
        self.selection = EpochSelection(
            patience=settings.early_stopping_patience,
            eval_every=settings.eval_every,
            epochs=settings.epochs,
            metric=config.eval.selection_metric,
            validate=self.validate,
            snapshot=self.base.state_dict,
        )
        self.eval_seconds = 0.0  # every evaluate() call, summed

    def evaluate(
        self,
        eval_users: np.ndarray,
        heldout_items: np.ndarray,
        extra_mask: np.ndarray | None,
        scorer: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> dict[str, float]:
        """Full ranking over this rank's slice of the users, sums all-reduced -> fractions.

        ``scorer``: ``users (B,) -> (B, num_items)``; default the model's own ranking.
        """
        started = time.perf_counter()
        self.base.eval()
        metrics = rank_sliced_ranking(
            self.base.ranking_scorer() if scorer is None else scorer,
            eval_users,
            heldout_items,
            self.held_out.known,
            self.ks,
            self.config.eval.user_batch_size,
            self.worker,
            extra_mask,
        )
        self.base.train()
        self.eval_seconds += time.perf_counter() - started
        return metrics

    def validate(self) -> dict[str, float]:
        return self.evaluate(self.held_out.val_users, self.held_out.val_items, None)

    def load_state(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state["model"])
        saved = state["optimizers"]
        if set(saved) != set(self.optimizers):
            raise ValueError(
                f"checkpoint optimizers {sorted(saved)} do not match this run's "
                f"{sorted(self.optimizers)}: train.id_table_updates: auto chose row-sparse "
                "tables by the worker group (NCCL has no sparse all-reduce); resume on the "
                "same kind of group, or start a new run"
            )
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(saved[name])
        self.selection.load_state(state)

    def before_first_epoch(self) -> None:
        if self.integration != "residual":
            return
        # Before any step the residual model *is* the teacher (its correction starts at 0):
        # validating it as "epoch 0" lets early stopping keep the teacher (best_epoch 0)
        # when training on the sample never beats it on validation. Not a report: Tune's
        # iterations stay one per epoch.
        selection = self.selection
        selection.record(0)
        if self.worker.rank == 0:
            logger.info(
                "ttnn epoch 0 (the teacher): %s %.4f",
                selection.metric,
                selection.last_val[selection.metric],
            )

    def train_epoch(self, epoch: int, batches: Batches, generator: torch.Generator) -> float:
        from cadc_ray.training.loops import train_two_tower_epoch

        settings = self.settings
        return train_two_tower_epoch(
            self.model,
            batches,
            list(self.optimizers.values()),
            self.sampler,
            settings.num_negatives,
            generator,
            self.log_q,
        )

    def after_epoch(self, epoch: int) -> dict[str, Any]:
        return {
            **self.selection.after_epoch(epoch),
            # Known from the start: an early-stopped trial still gives Optuna its size.
            "model_bytes": int(self.model_bytes.get("total", 0)),
        }

    @property
    def should_stop(self) -> bool:
        return self.selection.should_stop

    def state(self) -> dict[str, Any]:
        return {
            "model": self.base.state_dict(),
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            **self.selection.state(),
        }

    def console_detail(self, epoch: int) -> str:
        return self.selection.console_detail(epoch)

    def gauge_value(self) -> float | None:
        return self.selection.last_val.get("hr@10")


def ttnn_training_data(
    config: ExperimentConfig,
    rows: dict[str, np.ndarray],
    num_users: int,
    num_items: int,
    device: torch.device | None = None,
) -> TrainingData:
    """The TTNN's in-memory training data from the positives ``rows`` (``user_id`` /
    ``item_id``), rebalanced as the method says."""
    return TrainingData.in_memory(
        *ttnn_resample(config, num_items)(rows["user_id"], rows["item_id"]),
        num_users,
        num_items,
        device,
    )


def ttnn_resample(
    config: ExperimentConfig, num_items: int
) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The method's over-/under-sampling with its own seeded stream (the same rows on
    every rank); the identity for the other methods."""
    from cadc_ray.baselines import rebalance
    from cadc_ray.methods import METHODS
    from cadc_ray.runtime.worker import derive_seed, stage_seed

    seed = derive_seed(stage_seed(config.seed, config.train.seed), "rebalance")

    def resample(users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return rebalance(METHODS[config.method].rebalance, users, items, num_items, seed)

    return resample


def train_ttnn_stage(
    config: ExperimentConfig,
    data: TrainingData,
    inputs: ResolvedInputs,
    environment: StageEnvironment,
) -> dict[str, Any] | None:
    """Two-tower training on the positives ``data`` (held or streamed, see
    ``runtime.ingest``), validation every ``train.eval_every`` epochs with early stopping,
    then the test metrics at the best epoch (and the teacher's own) -> rank 0's result dict
    (None on other ranks)."""
    from cadc_ray.models.pretrained import teacher_scorer
    from cadc_ray.runtime.stage import run_stage
    from cadc_ray.runtime.worker import stage_seed

    worker = environment.worker
    seed = stage_seed(config.seed, config.train.seed)
    body = TTNNStage(config, data.counts, inputs, seed, environment)
    held_out, pretrained = inputs.held_out, inputs.pretrained
    run = run_stage(body, environment, config, data.rows)
    # --- test at the best epoch ---
    selection = body.selection
    if selection.best_state:
        body.base.load_state_dict(selection.best_state)
    test = body.evaluate(held_out.test_users, held_out.test_items, held_out.test_extra_mask)
    # The teacher alone on the same test users and masks: the reference the TTNN is read
    # against (Figure 1's "teacher" line); {} when the tables cannot score (mf_mlp).
    teacher = None if pretrained is None else teacher_scorer(pretrained)
    teacher_test = (
        {}
        if teacher is None
        else body.evaluate(
            held_out.test_users, held_out.test_items, held_out.test_extra_mask, teacher
        )
    )
    if worker.rank != 0:
        return None
    return {
        "test": test,
        "best_val": selection.best_val,
        "best_epoch": selection.best_epoch,
        "epochs_run": len(run.history),
        "early_stopped": run.early_stopped,
        "history": run.history,
        "loop_seconds": run.loop_seconds,
        "train_interactions": data.counts.rows,
        "trainable_parameters": body.trainable_parameters,
        "frozen_parameters": body.frozen_parameters,
        "model_bytes": body.model_bytes,
        "id_table_compression": body.id_table_compression,
        "teacher_test": teacher_test,
        "eval_seconds": body.eval_seconds,
        "sparse_id_tables": body.sparse_id_tables,
    }


def ttnn_in_worker(
    loop_config: dict[str, Any],
    checkpoint_prefix: str = "",
    adapt: EnvironmentHook | None = None,
    pretrained: PretrainedTables | None = None,
) -> tuple[int, dict[str, Any] | None]:
    """The TTNN stage in a Train worker -> (rank, :func:`train_ttnn_stage`'s output).

    The teacher is ``pretrained`` when given (trained by this worker just before,
    ``runtime.joint``), else ``loop_config["pretrained"]``'s object, if any.
    """
    import ray

    from cadc_ray.data import load_entity_features, read_held_out
    from cadc_ray.runtime.ingest import training_data
    from cadc_ray.runtime.stage import start_worker_stage

    config, environment = start_worker_stage(STAGE, loop_config, checkpoint_prefix)
    if adapt is not None:
        environment = adapt(environment)
    num_users, num_items = int(loop_config["num_users"]), int(loop_config["num_items"])
    data = training_data(
        loop_config, environment.worker, num_users, num_items, ttnn_resample(config, num_items)
    )
    # Evaluation data (plain pyarrow; paths must be reachable from every node); testing
    # masks the validation item too.
    held_out = read_held_out(
        loop_config["split"],
        num_users,
        num_items,
        config.eval.validation_users,
        config.eval.validation_seed,
    )
    if pretrained is None and loop_config["pretrained"] is not None:
        pretrained = ray.get(loop_config["pretrained"][0])  # zero-copy, read-only arrays
    user_features = item_features = None
    if config.model.use_features:
        user_features = load_entity_features(loop_config["prepared"], "user")
        item_features = load_entity_features(loop_config["prepared"], "item")
    inputs = ResolvedInputs(
        num_users, num_items, held_out, pretrained, user_features, item_features
    )
    return environment.worker.rank, train_ttnn_stage(config, data, inputs, environment)


def _ttnn_worker(loop_config: dict[str, Any]) -> dict[str, Any] | None:
    """``train_loop_per_worker`` of the TTNN stage (runs in each Train worker)."""
    return ttnn_in_worker(loop_config)[1]


def ttnn_loop_config(
    config: ExperimentConfig,
    inputs: TTNNInputs,
    *,
    run_name: str,
    storage_path: str | None,
) -> dict[str, Any]:
    """The TTNN stage's ``train_loop_config`` (without its ingest entries)."""
    from cadc_ray.runtime.trainer import stage_loop_config

    return {
        **stage_loop_config(config, run_name=run_name, storage_path=storage_path),
        "num_users": inputs.num_users,
        "num_items": inputs.num_items,
        "split": inputs.split,
        "prepared": str(inputs.prepared),
        "pretrained": inputs.pretrained,
    }


def ttnn_result(
    output: dict[str, Any] | None, *, seconds: float, checkpoint_path: str | None, run_name: str
) -> TTNNResult:
    """:class:`TTNNResult` of :func:`train_ttnn_stage`'s ``output`` (rank 0's)."""
    if output is None:
        raise RuntimeError(f"TTNN run {run_name!r} returned nothing from rank 0")
    return TTNNResult(
        test_metrics=dict(output["test"]),
        best_val_metrics=dict(output["best_val"]),
        best_epoch=int(output["best_epoch"]),
        epochs_run=int(output["epochs_run"]),
        early_stopped=bool(output["early_stopped"]),
        seconds=seconds,
        loop_seconds=float(output["loop_seconds"]),
        train_interactions=int(output["train_interactions"]),
        trainable_parameters=int(output["trainable_parameters"]),
        frozen_parameters=int(output["frozen_parameters"]),
        model_bytes=dict(output["model_bytes"]),
        id_table_compression=float(output["id_table_compression"]),
        history=list(output["history"]),
        checkpoint_path=checkpoint_path,
        teacher_test_metrics=dict(output["teacher_test"]),
        eval_seconds=float(output["eval_seconds"]),
        sparse_id_tables=list(output["sparse_id_tables"]),
    )


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

    from cadc_ray.methods import METHODS
    from cadc_ray.runtime.ingest import training_input
    from cadc_ray.runtime.trainer import run_torch_trainer
    from cadc_ray.runtime.worker import stage_seed

    if (METHODS[config.method].pretrainer is None) != (inputs.pretrained is None):
        raise ValueError(
            f"method {config.method!r} {'needs' if inputs.pretrained is None else 'takes no'} "
            "pretrained tables"
        )
    started = time.perf_counter()
    training = training_input(config, inputs.train_path, stage_seed(config.seed, config.train.seed))
    result = run_torch_trainer(
        _ttnn_worker,
        ttnn_loop_config(config, inputs, run_name=run_name, storage_path=storage_path),
        config=config,
        training=training,
        use_gpu=use_gpu,
        run_name=run_name,
        storage_path=storage_path,
        callbacks=callbacks,
    )
    checkpoint = getattr(result, "checkpoint", None)
    return ttnn_result(
        result.return_value,
        seconds=time.perf_counter() - started,
        checkpoint_path=checkpoint.path if checkpoint is not None else None,
        run_name=run_name,
    )
