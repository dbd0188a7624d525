"""Full-ranking HR/NDCG against hand-computed rankings, masking, ties, sums, random ranker."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse
import torch

from cadc_ray.evaluation import (
    FullRankingSums,
    constant_item_scorer,
    evaluate_full_ranking,
    full_ranking_sums,
    popularity_scores,
)

SCORES = torch.tensor([[0.9, 0.5, 0.7, 0.1, 0.3], [0.2, 0.8, 0.4, 0.6, 0.4]])


def _scorer(users: torch.Tensor) -> torch.Tensor:
    return SCORES[users]


def _known(rows: list[list[int]], num_items: int = 5) -> scipy.sparse.csr_matrix:
    users = [u for u, items in enumerate(rows) for _ in items]
    items = [i for row in rows for i in row]
    return scipy.sparse.csr_matrix(
        (np.ones(len(items)), (users, items)), shape=(len(rows), num_items)
    )


USERS = np.array([0, 1])
HELDOUT = np.array([2, 4])


def test_hand_computed_ranks_with_masking_and_ties() -> None:
    # user 0: item 0 (0.9) masked as a known positive -> held-out item 2 ranks 0.
    # user 1: items 3 (known) and 1 (validation) masked; item 2 ties the held-out 0.4 and has
    #         the smaller id, so it ranks first -> rank 1.
    metrics = evaluate_full_ranking(
        _scorer, USERS, HELDOUT, _known([[0], [3]]), (1, 3), 2, extra_mask_items=np.array([3, 1])
    )
    assert metrics["hr@1"] == 0.5
    assert metrics["hr@3"] == 1.0
    assert metrics["ndcg@1"] == 0.5
    assert metrics["ndcg@3"] == pytest.approx((1 + 1 / math.log2(3)) / 2)


def test_without_the_validation_mask_the_validation_item_outranks() -> None:
    metrics = evaluate_full_ranking(_scorer, USERS, HELDOUT, _known([[0], [3]]), (2, 3), 1)
    # user 1: item 1 (0.8) > 0.4 and item 2 ties with a smaller id -> rank 2.
    assert metrics["hr@2"] == 0.5 and metrics["hr@3"] == 1.0
    assert metrics["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / 2)


def test_the_heldout_item_is_never_masked() -> None:
    metrics = evaluate_full_ranking(
        _scorer, np.array([0]), np.array([2]), _known([[0, 2], []]), (1,), 8
    )
    assert metrics["hr@1"] == 1.0


def test_a_constant_model_does_not_score_perfectly() -> None:
    def constant(users: torch.Tensor) -> torch.Tensor:
        return torch.zeros(users.shape[0], 5)

    metrics = evaluate_full_ranking(
        constant, np.array([0, 1]), np.array([4, 3]), _known([[], []]), (1,), 8
    )
    assert metrics["hr@1"] == 0.0  # ties go to smaller item ids: ranks 4 and 3


def test_sums_merge_across_shards_and_roundtrip_a_tensor() -> None:
    known = _known([[0], [3]])
    whole = full_ranking_sums(_scorer, USERS, HELDOUT, known, (1, 3), 4)
    first = full_ranking_sums(_scorer, USERS[:1], HELDOUT[:1], known, (1, 3), 4)
    second = full_ranking_sums(_scorer, USERS[1:], HELDOUT[1:], known, (1, 3), 4)
    merged = first.merge(second)
    assert merged.metrics() == whole.metrics() and merged.count == 2
    reduced = FullRankingSums.from_tensor((1, 3), first.to_tensor() + second.to_tensor())
    assert reduced.metrics() == pytest.approx(whole.metrics())
    assert FullRankingSums(ks=(10,)).metrics() == {"hr@10": 0.0, "ndcg@10": 0.0}


def test_random_ranker_hits_k_over_num_items() -> None:
    num_users, num_items = 3000, 200
    generator = torch.Generator().manual_seed(0)

    def random_scores(users: torch.Tensor) -> torch.Tensor:
        return torch.rand(users.shape[0], num_items, generator=generator)

    heldout = np.random.default_rng(0).integers(0, num_items, num_users)
    known = scipy.sparse.csr_matrix((num_users, num_items))
    metrics = evaluate_full_ranking(
        random_scores, np.arange(num_users), heldout, known, (10,), 1024
    )
    assert metrics["hr@10"] == pytest.approx(10 / num_items, abs=0.015)
    assert 0.289 <= metrics["ndcg@10"] / metrics["hr@10"] <= 1.0


def test_popularity_ranker() -> None:
    scores = popularity_scores(np.array([0, 0, 1, 2, 2, 2]), 4)
    assert scores.tolist() == [2.0, 1.0, 3.0, 0.0]
    # user 0 held out item 0: item 2 scores higher -> rank 1.
    metrics = evaluate_full_ranking(
        constant_item_scorer(scores), np.array([0]), np.array([0]), _known([[]], 4), (1, 2), 4
    )
    assert metrics == {
        "hr@1": 0.0,
        "ndcg@1": 0.0,
        "hr@2": 1.0,
        "ndcg@2": pytest.approx(1 / math.log2(3)),
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"heldout_items": np.array([2])}, "must be 1-D and aligned"),
        ({"heldout_items": np.array([2, 9])}, r"heldout_items must lie in \[0, 5\)"),
        ({"users": np.array([0, 7])}, r"user ids must lie in \[0, 2\)"),
        ({"ks": ()}, "ks must be positive"),
        ({"extra_mask_items": np.array([1])}, "must align with users"),
    ],
)
def test_bad_inputs_fail_clearly(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {
        "score_users": _scorer,
        "users": USERS,
        "heldout_items": HELDOUT,
        "known_positives": _known([[0], [3]]),
        "ks": (1,),
        "user_batch_size": 2,
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        evaluate_full_ranking(**arguments)  # type: ignore[arg-type]


def test_nan_scores_fail() -> None:
    def nan_scores(users: torch.Tensor) -> torch.Tensor:
        return torch.full((users.shape[0], 5), float("nan"))

    with pytest.raises(FloatingPointError, match="NaN"):
        evaluate_full_ranking(nan_scores, USERS, HELDOUT, _known([[], []]), (1,), 2)


def _naive_rank(scores: np.ndarray, heldout: int, masked: set[int]) -> int:
    """Stable sort by descending score (ties by item id) over the unmasked items."""
    candidates = [j for j in range(scores.size) if j == heldout or j not in masked]
    order = sorted(candidates, key=lambda j: (-scores[j], j))
    return order.index(heldout)


TIE_USERS, TIE_ITEMS = 40, 12


def _tie_heavy_case(
    seed: int,
) -> tuple[torch.Tensor, np.ndarray, list[list[int]], np.ndarray, scipy.sparse.csr_matrix]:
    """Scores in {0, 1, 2, 3} (many ties), held-out items, known rows, validation items."""
    rng = np.random.default_rng(seed)
    scores = torch.from_numpy(rng.integers(0, 4, (TIE_USERS, TIE_ITEMS)).astype(np.float32))
    heldout = rng.integers(0, TIE_ITEMS, TIE_USERS)
    known_rows = [sorted(set(rng.integers(0, TIE_ITEMS, 4).tolist())) for _ in range(TIE_USERS)]
    extra = rng.integers(0, TIE_ITEMS, TIE_USERS)
    return scores, heldout, known_rows, extra, _known(known_rows, TIE_ITEMS)


@pytest.mark.parametrize("seed", range(5))
def test_ranks_equal_a_naive_stable_sort_with_many_ties(seed: int) -> None:
    scores, heldout, known_rows, extra, known = _tie_heavy_case(seed)
    num_users = TIE_USERS
    ks = (1, 3, 5)
    metrics = evaluate_full_ranking(
        lambda users: scores[users], np.arange(num_users), heldout, known, ks, 7, extra
    )
    ranks = [
        _naive_rank(scores[u].numpy(), int(heldout[u]), {*known_rows[u], int(extra[u])})
        for u in range(num_users)
    ]
    for k in ks:
        assert metrics[f"hr@{k}"] == pytest.approx(np.mean([r < k for r in ranks]))
        assert metrics[f"ndcg@{k}"] == pytest.approx(
            np.mean([1 / math.log2(r + 2) if r < k else 0.0 for r in ranks])
        )


def test_cpu_chunks_cap_the_score_cells_and_rank_as_one_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A large catalogue is scored a few users at a time on CPU (``CPU_CHUNK_CELLS``), with
    the known positives and validation masks of each chunk's own users."""
    import cadc_ray.evaluation as evaluation

    scores, heldout, _known_rows, extra, known = _tie_heavy_case(3)
    num_users, num_items = TIE_USERS, TIE_ITEMS
    batch_sizes: list[int] = []

    def scorer(users: torch.Tensor) -> torch.Tensor:
        batch_sizes.append(users.numel())
        return scores[users]

    users = np.arange(num_users)
    whole = evaluate_full_ranking(scorer, users, heldout, known, (1, 3), num_users, extra)
    assert batch_sizes == [num_users]
    monkeypatch.setattr(evaluation, "CPU_CHUNK_CELLS", 3 * num_items + 5)  # 3 users a chunk
    batch_sizes.clear()
    chunked = evaluate_full_ranking(scorer, users, heldout, known, (1, 3), num_users, extra)
    assert batch_sizes == [3] * 13 + [1]
    assert chunked == whole


def test_only_cpu_chunks_are_capped_by_score_cells() -> None:
    """296,277 items (Epinions): 14 users per CPU chunk; a GPU keeps the configured batch."""
    from cadc_ray.evaluation import CPU_CHUNK_CELLS, chunk_users

    assert CPU_CHUNK_CELLS // 296_277 == 14
    assert chunk_users(296_277, 1024, "cpu") == chunk_users(296_277, 1024, None) == 14
    assert chunk_users(296_277, 1024, torch.device("cuda", 0)) == 1024
    assert chunk_users(3_706, 1024, "cpu") == 1024  # ML-1M: under the cap
    assert chunk_users(CPU_CHUNK_CELLS * 2, 1024, "cpu") == 1  # never zero users
