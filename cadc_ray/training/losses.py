"""Losses: pure functions over logits (METHOD 1.2-1.4)."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def bce_with_sampled_negatives(pos_logits: torch.Tensor, neg_logits: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over B positives (label 1) and B*K negatives (label 0).

    pos_logits (B,), neg_logits (B, K) -> scalar. Every logit weighs the same, i.e. the
    paper's sum over D_full and D_neg divided by B * (1 + K).
    """
    if pos_logits.ndim != 1 or neg_logits.ndim != 2 or neg_logits.shape[0] != pos_logits.shape[0]:
        raise ValueError(
            f"expected pos_logits (B,) and neg_logits (B, K), got {tuple(pos_logits.shape)} "
            f"and {tuple(neg_logits.shape)}"
        )
    # softplus(-x) = -log sigmoid(x); softplus(x) = -log(1 - sigmoid(x)): stable for large |x|.
    total = F.softplus(-pos_logits).sum() + F.softplus(neg_logits).sum()
    return total / (pos_logits.numel() + neg_logits.numel())


def logq_correct(logits: torch.Tensor, items: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """LogQ correction s(u, i) - log q(i) (training only; evaluation uses plain s).

    logits and items of the same shape (any), log_q (num_items,) -> corrected logits.
    """
    return logits - log_q[items]
