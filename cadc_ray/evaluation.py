"""Full-ranking evaluation: HR@k and NDCG@k with masking (METHOD 1.5).

For every evaluated user all items are scored; the user's other known positives (all of
D_full, plus the validation item when testing) are masked out; the held-out item is never
masked. Its 0-based rank is the number of unmasked items scoring strictly higher, plus the
number of unmasked items with exactly its score and a smaller item id: ties are broken by
item id, as a stable sort of the scores would. (Counting only strictly higher items would
give a model that outputs a constant HR = 1.) HR@k: rank < k; NDCG@k: 1 / log2(rank + 2)
if rank < k, else 0.

``full_ranking_sums`` returns sums and a count (``FullRankingSums``) so that Ray Train
workers evaluating disjoint user shards can all-reduce them before dividing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias, runtime_checkable

import numpy as np
import scipy.sparse
import torch

logger = logging.getLogger(__name__)

CPU_CHUNK_CELLS = 1 << 22
"""Most (users x items) score cells one CPU evaluation chunk holds: 16 MiB of float32.

On CPU a bigger score matrix is slower, not faster. A buffer above glibc's mmap threshold
(32 MiB at most) is mapped afresh at every allocation and its pages are faulted in and zeroed
by the kernel, for the scores and for every temporary over them; small chunks reuse the
allocator's memory and stay in cache across the comparison passes. Measured with
``scripts/bench_ranking.py`` on Epinions' 296,277 items (docs/scale.md, "Full ranking on a
large catalogue"). With ML-1M's 3,706 items a 1,024-user batch is below this size anyway.
Accelerators keep ``user_batch_size``: their memory has no such cost.
"""


def chunk_users(num_items: int, user_batch_size: int, device: torch.device | str | None) -> int:
    """Users scored per evaluation chunk: ``user_batch_size``, capped on CPU at
    ``CPU_CHUNK_CELLS`` score cells (at least one user); accelerators are not capped."""
    if torch.device(device or "cpu").type != "cpu":
        return user_batch_size
    return min(user_batch_size, max(1, CPU_CHUNK_CELLS // max(num_items, 1)))


ScoreUsers = Callable[[torch.Tensor], torch.Tensor]
"""users (B,) int64 -> scores (B, num_items); higher is better."""


@runtime_checkable
class KnownRows(Protocol):
    """Known positives readable by rows (``data.known.KnownPositives``: memory-mapped)."""

    @property
    def shape(self) -> tuple[int, int]: ...

    def rows(self, users: np.ndarray) -> scipy.sparse.csr_matrix:
        """users (B,) -> their rows, (B, num_items) CSR."""
        ...


KnownPositivesLike: TypeAlias = scipy.sparse.csr_matrix | KnownRows
"""A (num_users, num_items) CSR in memory, or an index that reads only the rows asked for."""


def _known_rows(known: KnownPositivesLike, users: np.ndarray) -> scipy.sparse.csr_matrix:
    if isinstance(known, KnownRows):
        return known.rows(users)
    return scipy.sparse.csr_matrix(known[users])


@dataclass
class FullRankingSums:
    """Sums of per-user hits and NDCG gains per cut-off, and the number of users."""

    ks: tuple[int, ...]
    hit_sums: dict[int, float] = field(default_factory=dict)
    ndcg_sums: dict[int, float] = field(default_factory=dict)
    count: int = 0

    def merge(self, other: FullRankingSums) -> FullRankingSums:
        """The sums of both (e.g. two workers' user shards)."""
        if other.ks != self.ks:
            raise ValueError(f"cannot merge metrics for ks {self.ks} and {other.ks}")
        return FullRankingSums(
            ks=self.ks,
            hit_sums={k: self.hit_sums.get(k, 0.0) + other.hit_sums.get(k, 0.0) for k in self.ks},
            ndcg_sums={
                k: self.ndcg_sums.get(k, 0.0) + other.ndcg_sums.get(k, 0.0) for k in self.ks
            },
            count=self.count + other.count,
        )

    def to_tensor(self) -> torch.Tensor:
        """[hit sums..., ndcg sums..., count] as float64 (2 * len(ks) + 1,) for all_reduce."""
        values = [self.hit_sums.get(k, 0.0) for k in self.ks]
        values += [self.ndcg_sums.get(k, 0.0) for k in self.ks]
        return torch.tensor([*values, float(self.count)], dtype=torch.float64)

    @classmethod
    def from_tensor(cls, ks: Sequence[int], values: torch.Tensor) -> FullRankingSums:
        """Inverse of ``to_tensor`` (after an all_reduce with SUM)."""
        ks = tuple(ks)
        flat = values.detach().cpu().to(torch.float64).tolist()
        if len(flat) != 2 * len(ks) + 1:
            raise ValueError(f"expected {2 * len(ks) + 1} values for ks {ks}, got {len(flat)}")
        return cls(
            ks=ks,
            hit_sums=dict(zip(ks, flat[: len(ks)], strict=True)),
            ndcg_sums=dict(zip(ks, flat[len(ks) : 2 * len(ks)], strict=True)),
            count=round(flat[-1]),
        )

    def metrics(self) -> dict[str, float]:
        """``hr@k`` and ``ndcg@k`` as fractions in [0, 1] (0.0 when no user was evaluated)."""
        result: dict[str, float] = {}
        for k in self.ks:
            result[f"hr@{k}"] = self.hit_sums.get(k, 0.0) / self.count if self.count else 0.0
            result[f"ndcg@{k}"] = self.ndcg_sums.get(k, 0.0) / self.count if self.count else 0.0
        return result


def _validate(
    users: np.ndarray,
    heldout_items: np.ndarray,
    known_positives: KnownPositivesLike,
    ks: Sequence[int],
    user_batch_size: int,
    extra_mask_items: np.ndarray | None,
) -> None:
    if users.ndim != 1 or users.shape != heldout_items.shape:
        raise ValueError(
            f"users {users.shape} and heldout_items {heldout_items.shape} must be 1-D and aligned"
        )
    if extra_mask_items is not None and extra_mask_items.shape != users.shape:
        raise ValueError(
            f"extra_mask_items {extra_mask_items.shape} must align with users {users.shape}"
        )
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive cut-offs, got {list(ks)}")
    if user_batch_size < 1:
        raise ValueError(f"user_batch_size must be >= 1, got {user_batch_size}")
    num_users, num_items = known_positives.shape
    if users.size and (users.min() < 0 or users.max() >= num_users):
        raise ValueError(f"user ids must lie in [0, {num_users}) (known_positives rows)")
    for name, items in (("heldout_items", heldout_items), ("extra_mask_items", extra_mask_items)):
        if items is not None and items.size and (items.min() < 0 or items.max() >= num_items):
            raise ValueError(f"{name} must lie in [0, {num_items}) (known_positives columns)")


def heldout_ranks(
    scores: torch.Tensor,
    heldout_items: torch.Tensor,
    mask_rows: torch.Tensor,
    mask_columns: torch.Tensor,
) -> torch.Tensor:
    """0-based rank of each row's held-out item among the unmasked items.

    scores (B, I); heldout_items (B,); (mask_rows, mask_columns) (M,) pairs to exclude
    (repeats and the held-out item itself are ignored). Returns (B,) int64. Ties with the
    held-out item are broken by item id.

    Two passes over (B, I) (``>`` and ``==``); masked cells are not overwritten but
    counted separately on the (M,) gathered scores and subtracted, and only rows that have
    ties pay for the item-id comparison.
    """
    num_rows, num_items = scores.shape
    batch = torch.arange(num_rows, device=scores.device)
    target = scores[batch, heldout_items]  # (B,)
    if not torch.isfinite(target).all():
        raise FloatingPointError("score_users returned NaN or infinite scores for held-out items")
    keys = torch.unique(mask_rows * num_items + mask_columns)
    rows, columns = keys // num_items, keys % num_items
    keep = columns != heldout_items[rows]
    rows, columns = rows[keep], columns[keep]
    masked_scores, masked_targets = scores[rows, columns], target[rows]  # (M',)

    def per_row(selected: torch.Tensor) -> torch.Tensor:
        return torch.bincount(rows[selected], minlength=num_rows)

    # int32 sums: 110 ms against 192 ms in int64 for 256 x 296k cells on CPU (a probe, 2
    # cores), and exact below 2^31 items.
    higher = (scores > target.unsqueeze(1)).sum(dim=1, dtype=torch.int32).long()
    higher = higher - per_row(masked_scores > masked_targets)
    equal = (scores == target.unsqueeze(1)).sum(dim=1, dtype=torch.int32).long() - 1  # minus itself
    equal = equal - per_row(masked_scores == masked_targets)
    tie_rows = torch.nonzero(equal > 0).squeeze(1)
    if tie_rows.numel() == 0:
        return higher
    item_ids = torch.arange(num_items, device=scores.device).unsqueeze(0)  # (1, I)
    smaller_ties = (scores[tie_rows] == target[tie_rows].unsqueeze(1)) & (
        item_ids < heldout_items[tie_rows].unsqueeze(1)
    )
    masked_smaller_ties = per_row(
        (masked_scores == masked_targets) & (columns < heldout_items[rows])
    )
    ties = torch.zeros_like(higher)
    ties[tie_rows] = torch.count_nonzero(smaller_ties, dim=1) - masked_smaller_ties[tie_rows]
    return higher + ties


def full_ranking_sums(
    score_users: ScoreUsers,
    users: np.ndarray,
    heldout_items: np.ndarray,
    known_positives: KnownPositivesLike,
    ks: Sequence[int],
    user_batch_size: int,
    extra_mask_items: np.ndarray | None = None,
    device: torch.device | str | None = None,
) -> FullRankingSums:
    """HR/NDCG sums over ``users`` (see the module docstring); see ``evaluate_full_ranking``."""
    users = np.asarray(users, dtype=np.int64)
    heldout_items = np.asarray(heldout_items, dtype=np.int64)
    extra = None if extra_mask_items is None else np.asarray(extra_mask_items, dtype=np.int64)
    ks = tuple(int(k) for k in ks)
    if not isinstance(known_positives, KnownRows):
        known_positives = scipy.sparse.csr_matrix(known_positives)
    _validate(users, heldout_items, known_positives, ks, user_batch_size, extra)
    sums = FullRankingSums(ks=ks, hit_sums=dict.fromkeys(ks, 0.0), ndcg_sums=dict.fromkeys(ks, 0.0))
    num_items = known_positives.shape[1]
    chunk = chunk_users(num_items, user_batch_size, device)
    for start in range(0, users.size, chunk):
        batch_users = users[start : start + chunk]
        rows = _known_rows(known_positives, batch_users)  # (B, I) sparse, only these users
        mask_rows = np.repeat(np.arange(batch_users.size), np.diff(rows.indptr))
        mask_columns = rows.indices.astype(np.int64)
        if extra is not None:
            mask_rows = np.concatenate([mask_rows, np.arange(batch_users.size)])
            mask_columns = np.concatenate([mask_columns, extra[start : start + chunk]])
        with torch.no_grad():
            # A copy: held-out user ids may be read-only (memory-mapped or object-store arrays).
            user_ids = torch.from_numpy(np.array(batch_users, dtype=np.int64))
            scores = score_users(user_ids.to(device or "cpu"))
        if scores.shape != (batch_users.size, num_items):
            raise ValueError(
                f"score_users returned {tuple(scores.shape)}, expected ({batch_users.size}, {num_items})"
            )
        target_device = scores.device
        ranks = heldout_ranks(
            scores.float(),
            # A copy: the held-out items may be a read-only (zero-copy object store) array.
            torch.tensor(heldout_items[start : start + chunk]).to(target_device),
            torch.from_numpy(mask_rows).to(target_device),
            torch.from_numpy(mask_columns).to(target_device),
        ).cpu()
        gains = 1.0 / torch.log2(ranks.double() + 2.0)
        for k in ks:
            hit = ranks < k
            sums.hit_sums[k] += float(hit.sum())
            sums.ndcg_sums[k] += float(gains[hit].sum())
        sums.count += int(batch_users.size)
    return sums


def evaluate_full_ranking(
    score_users: ScoreUsers,
    users: np.ndarray,
    heldout_items: np.ndarray,
    known_positives: KnownPositivesLike,
    ks: Sequence[int],
    user_batch_size: int,
    extra_mask_items: np.ndarray | None = None,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """``hr@k`` / ``ndcg@k`` (fractions) of each user's held-out item in a full ranking.

    users, heldout_items (N,) int; known_positives (num_users, num_items) CSR of D_full;
    extra_mask_items (N,) the validation items when testing. ``device``: where user ids go.
    ``known_positives`` may be a ``KnownRows`` index: then only ``users``' rows are read.
    """
    return full_ranking_sums(
        score_users,
        users,
        heldout_items,
        known_positives,
        ks,
        user_batch_size,
        extra_mask_items,
        device,
    ).metrics()


def popularity_scores(train_items: np.ndarray, num_items: int) -> np.ndarray:
    """Item interaction counts as float32 scores (num_items,): the popularity ranker."""
    items = np.asarray(train_items, dtype=np.int64)
    if items.size and (items.min() < 0 or items.max() >= num_items):
        raise ValueError(f"train_items must lie in [0, {num_items})")
    return np.bincount(items, minlength=num_items).astype(np.float32)


def constant_item_scorer(item_scores: np.ndarray) -> ScoreUsers:
    """A ``score_users`` that gives every user the same item scores (e.g. popularity)."""
    table = torch.from_numpy(np.asarray(item_scores, dtype=np.float32))

    def score(users: torch.Tensor) -> torch.Tensor:
        return table.to(users.device).unsqueeze(0).expand(users.shape[0], -1)

    return score
