"""ALS pretrainer (CADC-ALS) through ``implicit`` (Hu, Koren & Volinsky implicit-feedback ALS).

The tables have the same (n, d+1) shape as MF's, but ALS has no bias terms: all ``d + 1``
columns are latent factors and the teacher's score is the plain dot product ``u . v``.
(A zero bias column would waste one of the TTNN's id dimensions; the towers consume the row
as a whole, so they do not care which column is the bias.)

implicit 0.7.3's ``fit`` takes ``user_items``: a CSR matrix with users as rows and items
as columns (checked in ``implicit/cpu/als.py``); confidence = ``alpha * count``.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse

from cadc_ray.models.pretrained import PretrainedTables

logger = logging.getLogger(__name__)


def interaction_matrix(
    user_id: np.ndarray, item_id: np.ndarray, num_users: int, num_items: int
) -> scipy.sparse.csr_matrix:
    """(num_users, num_items) float32 CSR of 1.0 per observed pair (repeats count once)."""
    user_id = np.asarray(user_id, dtype=np.int64)
    item_id = np.asarray(item_id, dtype=np.int64)
    if user_id.ndim != 1 or user_id.shape != item_id.shape:
        raise ValueError(
            f"user_id {user_id.shape} and item_id {item_id.shape} must be 1-D and aligned"
        )
    if user_id.size == 0:
        raise ValueError("ALS needs at least one interaction")
    if user_id.min() < 0 or user_id.max() >= num_users:
        raise ValueError(
            f"user_id must lie in [0, {num_users}), got [{user_id.min()}, {user_id.max()}]"
        )
    if item_id.min() < 0 or item_id.max() >= num_items:
        raise ValueError(
            f"item_id must lie in [0, {num_items}), got [{item_id.min()}, {item_id.max()}]"
        )
    matrix = scipy.sparse.csr_matrix(
        (np.ones(user_id.size, dtype=np.float32), (user_id, item_id)), shape=(num_users, num_items)
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def fit_als(
    user_id: np.ndarray,
    item_id: np.ndarray,
    num_users: int,
    num_items: int,
    dim_plus_bias: int,
    iterations: int,
    regularization: float,
    alpha: float,
    seed: int,
    num_threads: int,
) -> PretrainedTables:
    """ALS factors as PretrainedTables (user (U, d+1), item (I, d+1), pretrainer "als").

    Runs on the GPU when implicit was built with CUDA and one is visible, else on the CPU
    with ``num_threads`` threads (0: all cores). Same seed and data -> same tables on CPU.
    """
    import implicit.cpu.als
    import implicit.gpu
    import threadpoolctl

    if dim_plus_bias < 1 or iterations < 1:
        raise ValueError(
            f"dim_plus_bias and iterations must be >= 1, got {dim_plus_bias}, {iterations}"
        )
    user_items = interaction_matrix(user_id, item_id, num_users, num_items)
    if implicit.gpu.HAS_CUDA:
        import implicit.gpu.als

        gpu_model = implicit.gpu.als.AlternatingLeastSquares(
            factors=dim_plus_bias,
            regularization=regularization,
            alpha=alpha,
            iterations=iterations,
            random_state=seed,
        )
        gpu_model.fit(user_items, show_progress=False)
        model = gpu_model.to_cpu()
    else:
        # implicit's own threads do the work; a multi-threaded BLAS underneath slows it down
        # (implicit warns about it when the model is built).
        with threadpoolctl.threadpool_limits(1, "blas"):
            model = implicit.cpu.als.AlternatingLeastSquares(
                factors=dim_plus_bias,
                regularization=regularization,
                alpha=alpha,
                iterations=iterations,
                num_threads=num_threads,
                random_state=seed,
            )
            model.fit(user_items, show_progress=False)
    user = np.ascontiguousarray(model.user_factors, dtype=np.float32)
    item = np.ascontiguousarray(model.item_factors, dtype=np.float32)
    if user.shape != (num_users, dim_plus_bias) or item.shape != (num_items, dim_plus_bias):
        raise RuntimeError(
            f"implicit returned factors {user.shape} / {item.shape}, expected "
            f"({num_users}, {dim_plus_bias}) / ({num_items}, {dim_plus_bias})"
        )
    logger.info(
        "ALS: %d users x %d items, %d factors, %d iterations",
        num_users,
        num_items,
        dim_plus_bias,
        iterations,
    )
    return PretrainedTables(user=user, item=item, pretrainer="als")
