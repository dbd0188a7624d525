"""ALS pretrainer (CADC-ALS) through ``implicit`` (Hu, Koren & Volinsky implicit-feedback ALS).

The tables have the same (n, d+1) shape as MF's: ``d`` ALS factors and a bias column. ALS's
raw factors are not what the TTNN (or a BCE logit) expects, so :func:`calibrated_tables`
turns them into MF-like rows (docs/method_notes.md, "ALS pretrainer (CADC-ALS)"):

- Platt scaling on D_full: ``logit = a * (u . v) + c`` is fitted by logistic regression on
  the positives against uniform negatives (the TTNN's loss and sampler); ``a > 0``, so the
  ranking is ALS's own.
- ``a`` is folded into the rows, split so that the user and item factor blocks have the same
  RMS: ``u' = u * sqrt(a) * k``, ``v' = v * sqrt(a) / k``, hence ``u' . v' = a * (u . v)``
  exactly, a BCE logit on the same scale as MF's rows.
- The bias column is zero for users and items and ``c`` goes to ``global_bias``: ALS has no
  per-row bias, and fitting one would change the teacher's ranking (its item norms already
  carry popularity). With a zero column the MF formula ``u[:d].v[:d] + u[d] + v[d] + b``
  and ALS's ``u . v + b`` are the same number.

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
    calibrate: bool = True,
) -> PretrainedTables:
    """ALS with d = dim_plus_bias - 1 factors, calibrated (:func:`calibrated_tables`) into
    PretrainedTables (user (U, d+1), item (I, d+1), pretrainer "als", global_bias).

    ``calibrate=False`` (``pretrain.als_export: raw``): ``dim_plus_bias`` raw factors, no
    bias column, no global bias, as exported before the calibration (for comparisons).
    Runs on the GPU when implicit was built with CUDA and one is visible, else on the CPU
    with ``num_threads`` threads (0: all cores). Same seed and data -> same tables on CPU.
    """
    import implicit.cpu.als
    import implicit.gpu
    import threadpoolctl

    if dim_plus_bias < 2 or iterations < 1:
        raise ValueError(
            f"dim_plus_bias must be >= 2 (d factors + a bias column) and iterations >= 1, "
            f"got {dim_plus_bias}, {iterations}"
        )
    num_factors = dim_plus_bias - 1 if calibrate else dim_plus_bias
    user_items = interaction_matrix(user_id, item_id, num_users, num_items)
    if implicit.gpu.HAS_CUDA:
        import implicit.gpu.als

        gpu_model = implicit.gpu.als.AlternatingLeastSquares(
            factors=num_factors,
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
                factors=num_factors,
                regularization=regularization,
                alpha=alpha,
                iterations=iterations,
                num_threads=num_threads,
                random_state=seed,
            )
            model.fit(user_items, show_progress=False)
    user = np.ascontiguousarray(model.user_factors, dtype=np.float32)
    item = np.ascontiguousarray(model.item_factors, dtype=np.float32)
    if user.shape != (num_users, num_factors) or item.shape != (num_items, num_factors):
        raise RuntimeError(
            f"implicit returned factors {user.shape} / {item.shape}, expected "
            f"({num_users}, {num_factors}) / ({num_items}, {num_factors})"
        )
    logger.info(
        "ALS: %d users x %d items, %d factors, %d iterations",
        num_users,
        num_items,
        dim_plus_bias,
        iterations,
    )
    if not calibrate:
        return PretrainedTables(user=user, item=item, pretrainer="als")
    return calibrated_tables(user, item, user_id, item_id, seed)


def platt_scale(
    scores: np.ndarray, labels: np.ndarray, iterations: int = 50
) -> tuple[float, float]:
    """Logistic regression ``P(label) = sigmoid(a * score + c)`` by Newton's method -> (a, c).

    ``scores``, ``labels`` (N,) float; labels in {0, 1}. Two parameters, so each Newton step
    solves a 2x2 system; a tiny ridge keeps it solvable when the scores are constant.
    """
    x = np.stack([np.asarray(scores, dtype=np.float64), np.ones(len(scores))], axis=1)  # (N, 2)
    y = np.asarray(labels, dtype=np.float64)
    theta = np.array([0.0, np.log(max(y.mean(), 1e-6) / max(1.0 - y.mean(), 1e-6))])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ theta, -40.0, 40.0)))
        gradient = x.T @ (p - y)
        hessian = (x * (p * (1.0 - p))[:, None]).T @ x + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(theta[0]), float(theta[1])


def calibrated_tables(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    user_id: np.ndarray,
    item_id: np.ndarray,
    seed: int,
    num_negatives: int = 4,
    max_positives: int = 500_000,
) -> PretrainedTables:
    """ALS factors (U, d), (I, d) -> calibrated MF-like tables (U, d+1), (I, d+1) + global bias.

    The Platt fit uses up to ``max_positives`` training pairs (a seeded subsample) and
    ``num_negatives`` uniform items per positive. ``u' . v'`` is ``a * (u . v)`` exactly, so
    every user's ranking is ALS's (``a > 0``; should the fit ever give ``a <= 0`` the scale
    falls back to 1 with a warning, still rank-preserving).
    """
    rng = np.random.default_rng(seed)
    user_id = np.asarray(user_id, dtype=np.int64)
    item_id = np.asarray(item_id, dtype=np.int64)
    if user_id.size > max_positives:
        keep = rng.choice(user_id.size, size=max_positives, replace=False)
        user_id, item_id = user_id[keep], item_id[keep]
    num_items = item_factors.shape[0]
    users = np.concatenate([user_id, np.repeat(user_id, num_negatives)])
    items = np.concatenate([item_id, rng.integers(0, num_items, size=user_id.size * num_negatives)])
    labels = np.concatenate([np.ones(user_id.size), np.zeros(user_id.size * num_negatives)])
    scores = np.einsum(
        "nd,nd->n", user_factors[users].astype(np.float64), item_factors[items].astype(np.float64)
    )
    scale, offset = platt_scale(scores, labels)
    if not scale > 0:
        logger.warning("ALS calibration gave scale %.4g <= 0: keeping the raw scale", scale)
        scale, offset = 1.0, 0.0
    user_rms = float(np.sqrt(np.mean(np.square(user_factors, dtype=np.float64))))
    item_rms = float(np.sqrt(np.mean(np.square(item_factors, dtype=np.float64))))
    balance = np.sqrt(item_rms / user_rms) if user_rms > 0 and item_rms > 0 else 1.0
    user_scale, item_scale = np.sqrt(scale) * balance, np.sqrt(scale) / balance

    def with_zero_bias(factors: np.ndarray, factor_scale: float) -> np.ndarray:
        rows = np.zeros((factors.shape[0], factors.shape[1] + 1), dtype=np.float32)
        rows[:, :-1] = factors.astype(np.float64) * factor_scale
        return rows

    logger.info(
        "ALS calibration: logit = %.4g * u.v %+.4g (user/item RMS %.4g / %.4g before)",
        scale,
        offset,
        user_rms,
        item_rms,
    )
    return PretrainedTables(
        user=with_zero_bias(user_factors, user_scale),
        item=with_zero_bias(item_factors, item_scale),
        pretrainer="als",
        global_bias=offset,
    )
