"""Plain-torch epoch loops (no Ray): the Ray Train worker calls these once per epoch.

Both loops take an iterable of ``(users (B,), items (B,))`` LongTensor batches (any device),
or of mappings with ``user_id`` / ``item_id`` tensors as Ray Data's ``iter_torch_batches``
yields them; draw ``num_negatives`` negatives per positive from ``sampler`` with
``generator``; and return the mean loss over the epoch's rows.

One forward call scores positives and negatives together, so a data-parallel model sees one
forward per step and the RecD towers deduplicate across positives and negatives.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from cadc_ray.config import AlternationName
from cadc_ray.training.alternation import MFOptimizers, alternation_phase
from cadc_ray.training.data_parallel import DataParallel
from cadc_ray.training.fused_mf import FusedMFTrainer
from cadc_ray.training.losses import bce_with_sampled_negatives, logq_correct
from cadc_ray.training.optim import Optimizer
from cadc_ray.training.samplers import NegativeSampler

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor] | Mapping[str, torch.Tensor]
"""``(users, items)`` or ``{"user_id": users, "item_id": items}`` (Ray Data's column names)."""


def sampled_logits(
    model: nn.Module,
    users: torch.Tensor,
    items: torch.Tensor,
    negatives: torch.Tensor,
    log_q: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of positives (B,) and of sampled negatives (B, K) in one forward call.

    A model with ``candidate_list_forward`` (``TwoTower``) gets ``(users (B,), items
    (B, 1+K))``; any other gets the flat ``(B(1+K),)`` pairs with each user repeated.

    With ``log_q`` (num_items,) the LogQ correction ``s - log q(i)`` is applied to positives
    and negatives alike: the correction depends on the item, never on its role.
    """
    batch_size, num_negatives = negatives.shape
    if getattr(unwrap(model), "candidate_list_forward", False):
        # One user-tower row per positive, not 1+K repeats (dedup off pays for each repeat).
        candidates = torch.cat([items.unsqueeze(1), negatives], 1)  # (B, 1+K)
        logits = model(users, candidates)  # (B, 1+K)
        if log_q is not None:
            logits = logq_correct(logits, candidates, log_q)
        return logits[:, 0], logits[:, 1:]
    all_users = torch.cat([users, users.repeat_interleave(num_negatives)])  # (B(1+K),)
    all_items = torch.cat([items, negatives.reshape(-1)])  # (B(1+K),)
    logits = model(all_users, all_items)
    if log_q is not None:
        logits = logq_correct(logits, all_items, log_q)
    return logits[:batch_size], logits[batch_size:].view(batch_size, num_negatives)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DataParallel`` wrapper (or the model itself)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


def _unpack(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, Mapping):
        missing = {"user_id", "item_id"} - set(batch)
        if missing:
            raise ValueError(
                f"a batch mapping needs user_id and item_id, missing {sorted(missing)}"
            )
        return batch["user_id"], batch["item_id"]
    users, items = batch
    return users, items


def _check_batch(users: torch.Tensor, items: torch.Tensor) -> None:
    if users.ndim != 1 or users.shape != items.shape:
        raise ValueError(
            f"a batch must be (users (B,), items (B,)), got {tuple(users.shape)} and {tuple(items.shape)}"
        )


def _id_batches(batches: Iterable[Batch]) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(batch index, users (B,) int64, items (B,) int64) for every non-empty batch, checked.

    The index counts every batch, empty ones included: alternation schedules key on it.
    """
    for batch_index, batch in enumerate(batches):
        users, items = _unpack(batch)
        _check_batch(users, items)
        if users.numel() == 0:
            continue
        yield batch_index, users.long(), items.long()


def _train_epoch(
    model: nn.Module,
    batches: Iterable[Batch],
    optimizers_for_batch: Callable[[int], list[Optimizer]],
    all_optimizers: list[Optimizer],
    sampler: NegativeSampler,
    num_negatives: int,
    generator: torch.Generator,
    log_q: torch.Tensor | None,
) -> float:
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
    model.train()
    total_loss: torch.Tensor | None = None  # () on the batches' device, read once per epoch
    total_rows = 0
    log_q_on_device: torch.Tensor | None = None
    for batch_index, users, items in _id_batches(batches):
        if log_q is not None and log_q_on_device is None:
            log_q_on_device = log_q.to(users.device)
        negatives = sampler.sample(users.shape[0], num_negatives, generator).to(users.device)
        for optimizer in all_optimizers:
            optimizer.zero_grad(set_to_none=True)
        pos_logits, neg_logits = sampled_logits(model, users, items, negatives, log_q_on_device)
        loss = bce_with_sampled_negatives(pos_logits, neg_logits)
        loss.backward()
        if isinstance(model, DataParallel):
            model.average_gradients()  # the ranks' mean, before any optimizer steps
        for optimizer in optimizers_for_batch(batch_index):
            optimizer.step()
        weighted = loss.detach() * users.shape[0]
        total_loss = weighted if total_loss is None else total_loss + weighted
        total_rows += users.shape[0]
    return _epoch_mean_loss(total_loss, total_rows)


def _epoch_mean_loss(total_loss: torch.Tensor | None, total_rows: int) -> float:
    """The epoch's one host sync: the on-device loss sum -> mean per row.

    A NaN or infinite loss in any batch makes the sum non-finite, so it is still caught,
    once per epoch instead of by a ``.item()`` per step (which stalls a GPU pipeline).
    """
    if total_loss is None or total_rows == 0:
        raise ValueError("the epoch had no batches (empty training data on this worker?)")
    value = float(total_loss.item())
    if not math.isfinite(value):
        raise FloatingPointError(f"the epoch's loss is {value} (a batch diverged)")
    return value / total_rows


def train_two_tower_epoch(
    model: nn.Module,
    batches: Iterable[Batch],
    optimizer: Optimizer | Sequence[Optimizer],
    sampler: NegativeSampler,
    num_negatives: int,
    generator: torch.Generator,
    log_q: torch.Tensor | None = None,
) -> float:
    """One epoch of the TTNN (or any ``model(users, items) -> logits``) with BCE.

    ``optimizer``: one, or several that all step every batch (``optim.two_tower_optimizers``:
    DenseAdam and SparseAdam). ``log_q`` (num_items,) enables the LogQ baseline. Returns the
    mean loss.
    """
    optimizers = list(optimizer) if isinstance(optimizer, Sequence) else [optimizer]
    return _train_epoch(
        model, batches, lambda _: optimizers, optimizers, sampler, num_negatives, generator, log_q
    )


def train_mf_epoch(
    model: nn.Module,
    batches: Iterable[Batch],
    optimizers: MFOptimizers,
    sampler: NegativeSampler,
    num_negatives: int,
    generator: torch.Generator,
    epoch: int,
    alternation: AlternationName = "epoch",
    log_q: torch.Tensor | None = None,
) -> float:
    """One epoch of MF / CADC-MLP pretraining with the alternating scheme.

    Gradients are computed for both tables (with several workers, ``DataParallel``
    all-reduces them every step either way) but only the active side's Adam steps
    (``alternation_phase``).
    """
    return _train_epoch(
        model,
        batches,
        lambda batch_index: optimizers.active(alternation_phase(alternation, epoch, batch_index)),
        optimizers.all(),
        sampler,
        num_negatives,
        generator,
        log_q,
    )


def train_mf_epoch_fused(
    trainer: FusedMFTrainer,
    batches: Iterable[Batch],
    sampler: NegativeSampler,
    num_negatives: int,
    generator: torch.Generator,
    epoch: int,
    alternation: AlternationName = "epoch",
) -> float:
    """One epoch of MF pretraining with the row-sparse fused step (``training.fused_mf``).

    Same data, negatives, alternation and loss as ``train_mf_epoch`` on a
    ``MatrixFactorization``; the cost of a step is proportional to the batch. Draw the
    negatives on the batches' device by passing a ``generator`` on that device. Returns the
    mean loss per row (the epoch's only host sync).
    """
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
    total_loss: torch.Tensor | None = None
    total_rows = 0
    for batch_index, users, items in _id_batches(batches):
        negatives = sampler.sample(users.shape[0], num_negatives, generator).to(users.device)
        phase = alternation_phase(alternation, epoch, batch_index)
        loss_sum = trainer.step(users, items, negatives, phase)  # over B(1+K) logits
        # Per row, as the autograd loops: the batch's mean loss times its B rows.
        weighted = loss_sum / (1 + num_negatives)
        total_loss = weighted if total_loss is None else total_loss + weighted
        total_rows += users.shape[0]
    return _epoch_mean_loss(total_loss, total_rows)
