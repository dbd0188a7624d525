"""Training and evaluation cost of MF pretraining, the TTNN step and full ranking.

    python scripts/bench_mf.py [--rows 1000000] [--batches 40] [--out benchmarks/results/bench_mf.json]

Measured in one process, interleaved, so that the ratios hold on a shared machine:
- MF positives/s of the row-sparse fused step (``training.fused_mf``) against the dense
  autograd loop it replaces (``nn.Embedding`` + one dense Adam per side, ``train_mf_epoch``),
  same batch, negatives and alternation phase, on synthetic pairs (``--rows`` of them) and on
  the MovieLens-1M subset when present ($CADC_DATA_DIR/ml-1m or ../shared/data/ml-1m);
- TTNN rows/s of ``train_two_tower_epoch`` at the configured batch, RecD dedup on and off,
  old (flat pairs, each user repeated 1+K times) against new ((B, 1+K) candidate lists), and
  per variant the share of its fastest epoch that the towers' matrix products alone take
  (``TowerMatmuls``: the same shapes replayed);
- full-ranking seconds on the ML-1M subset (MF scores; masks from the memory-mapped
  known-positives index and from an in-memory CSR).
Every loop runs under ``--allocator``: ``tuned`` (the default since 2026-12-03) is glibc malloc
as every cadc_ray stage sets it (``runtime.device.tune_cpu_allocator``), so the fused step is
measured as the stages run it; ``default`` is glibc as it comes (the earlier JSONs).
Results go to ``benchmarks/results/bench_mf.json`` (atomically) with the load average, the
machine's speed reference before and after (``bench_data.speed_reference``), torch threads
and versions. ``--rows 20000 --batches 3`` is a smoke run of a few seconds.
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

# The sibling benchmarks are plain scripts, not a package: their helpers are imported by path.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import require_tuned_allocator, speed_reference, write_result

from cadc_ray.config import ModelConfig
from cadc_ray.data.features import EntityFeatures
from cadc_ray.data.known import open_known_index, sorted_pair_batches, write_known_index
from cadc_ray.data.split import leave_last_two_out_roles
from cadc_ray.evaluation import KnownPositivesLike, evaluate_full_ranking
from cadc_ray.models import MatrixFactorization, build_two_tower
from cadc_ray.training import (
    FusedMFTrainer,
    Optimizer,
    UniformNegativeSampler,
    make_mf_optimizers,
    make_optimizer,
    train_mf_epoch,
    train_mf_epoch_fused,
    train_two_tower_epoch,
)

REPO = Path(__file__).resolve().parents[1]


def _batches(
    users: torch.Tensor, items: torch.Tensor, batch_size: int, max_batches: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    order = torch.randperm(users.numel(), generator=torch.Generator().manual_seed(seed))
    for index, rows in enumerate(order.split(batch_size)):
        if index >= max_batches:
            return
        yield users[rows], items[rows]


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def bench_mf(
    users: np.ndarray,
    items: np.ndarray,
    num_users: int,
    num_items: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Positives/s of dense vs fused MF, per alternation phase (epoch 0: users, 1: items)."""
    user_ids, item_ids = torch.from_numpy(users), torch.from_numpy(items)
    sampler = UniformNegativeSampler(num_items)
    torch.manual_seed(0)
    dense = MatrixFactorization(num_users, num_items, args.dim)
    # The plain torch loop: torch.optim.Adam per side, as a user's own loop would have it
    # (the product's DenseAdam does the same update without torch.optim's import).
    optimizers = make_mf_optimizers(dense, args.lr, 0.0, adam_class=torch.optim.Adam)
    torch.manual_seed(0)
    fused = FusedMFTrainer(MatrixFactorization(num_users, num_items, args.dim), args.lr)
    positives = min(users.size, args.batches * args.batch_size)
    result: dict[str, Any] = {"rows": int(users.size), "users": num_users, "items": num_items}
    result["positives_per_measurement"] = positives
    for epoch, phase in ((0, "user"), (1, "item")):
        seconds: dict[str, list[float]] = {"dense": [], "fused": []}
        for repeat in range(args.repeats):  # interleaved: load changes hit both alike
            seed = 10 * epoch + repeat

            def dense_epoch(seed: int = seed, epoch: int = epoch) -> None:
                train_mf_epoch(
                    dense,
                    _batches(user_ids, item_ids, args.batch_size, args.batches, seed),
                    optimizers,
                    sampler,
                    args.negatives,
                    torch.Generator().manual_seed(seed),
                    epoch,
                )

            def fused_epoch(seed: int = seed, epoch: int = epoch) -> None:
                train_mf_epoch_fused(
                    fused,
                    _batches(user_ids, item_ids, args.batch_size, args.batches, seed),
                    sampler,
                    args.negatives,
                    torch.Generator().manual_seed(seed),
                    epoch,
                )

            seconds["dense"].append(_timed(dense_epoch))
            seconds["fused"].append(_timed(fused_epoch))
        best = {name: min(values) for name, values in seconds.items()}
        result[phase] = {
            "dense_positives_per_s": positives / best["dense"],
            "fused_positives_per_s": positives / best["fused"],
            "speedup": best["dense"] / best["fused"],
            "seconds": seconds,
        }
    return result


TTNN_USERS, TTNN_ITEMS = 6000, 3700


def zipf_two_tower_data(
    rows: int,
) -> tuple[torch.Tensor, torch.Tensor, EntityFeatures, EntityFeatures]:
    """The TTNN measurements' data (seed 0): ``rows`` Zipf-distributed (user, item) pairs of
    :data:`TTNN_USERS` x :data:`TTNN_ITEMS` -> (users (rows,), items (rows,), user features,
    item features), each side with three 7-way categorical features and an 18-wide
    multi-hot. Zipf-like ids: RecD's gain depends on repeats within a batch, as in real
    logs. ``scripts/bench_allocator.py`` trains on it too."""
    rng = np.random.default_rng(0)
    users = torch.from_numpy(np.minimum(rng.zipf(1.2, rows), TTNN_USERS) - 1)
    items = torch.from_numpy(np.minimum(rng.zipf(1.2, rows), TTNN_ITEMS) - 1)

    def features(n: int) -> EntityFeatures:
        return EntityFeatures(
            categorical=rng.integers(0, 7, (n, 3)),
            categorical_names=("a", "b", "c"),
            categorical_cardinalities=(7, 7, 7),
            multi_hot=(rng.random((n, 18)) < 0.1).astype(np.float32),
        )

    return users, items, features(TTNN_USERS), features(TTNN_ITEMS)


def tower_layer_shapes(tower: torch.nn.Module) -> list[tuple[int, int]]:
    """(in_features, out_features) of each ``nn.Linear`` of a tower's MLP, in order."""
    mlp = getattr(tower, "mlp", None)
    if not isinstance(mlp, torch.nn.Module):
        raise TypeError(f"{type(tower).__name__} has no mlp module")
    return [
        (layer.in_features, layer.out_features)
        for layer in mlp.modules()
        if isinstance(layer, torch.nn.Linear)
    ]


class TowerMatmuls:
    """Records how many rows reach each tower's MLP per call (forward hooks), and replays
    the matrix products those calls cost on their own: per layer the forward product and
    the backward's two (the weights' gradient and the inputs', which the trainable id
    tables need). With RecD dedup a tower sees a batch's unique ids only. The replay's time
    against the epoch's says how much of the step is the towers' arithmetic, at the step's
    own shapes (small products run below a large GEMM's rate)."""

    def __init__(self, model: torch.nn.Module):
        self.shapes = {
            name: tower_layer_shapes(getattr(model, name)) for name in ("user_tower", "item_tower")
        }
        self.calls: list[tuple[str, int]] = []
        for name in self.shapes:
            getattr(model, name).mlp.register_forward_hook(self._hook(name))

    def _hook(self, name: str) -> Callable[..., None]:
        def record(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _out: Any) -> None:
            self.calls.append((name, inputs[0].shape[0]))

        return record

    def take_calls(self) -> list[tuple[str, int]]:
        """The (tower, rows) calls since the last take; the record starts again."""
        calls, self.calls = self.calls, []
        return calls

    def flops(self, calls: list[tuple[str, int]]) -> int:
        """Forward + backward matmul FLOPs of ``calls``: 3 x 2 x rows x in x out per layer."""
        return sum(
            6 * rows * fan_in * fan_out
            for name, rows in calls
            for fan_in, fan_out in self.shapes[name]
        )

    def replay_seconds(self, calls: list[tuple[str, int]], repeats: int = 3) -> float:
        """The products of ``calls`` on stand-in tensors of the same shapes, best of
        ``repeats`` (the inputs are made before the clock starts)."""
        most_rows = max((rows for _, rows in calls), default=0)
        generator = torch.Generator().manual_seed(0)
        tensors = {
            name: [
                (
                    torch.rand((most_rows, fan_in), generator=generator),
                    torch.rand((fan_out, fan_in), generator=generator),
                    torch.rand((most_rows, fan_out), generator=generator),
                )
                for fan_in, fan_out in shapes
            ]
            for name, shapes in self.shapes.items()
        }
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            for name, rows in calls:
                for inputs, weight, output_grad in tensors[name]:
                    torch.mm(inputs[:rows], weight.T)  # forward
                    torch.mm(output_grad[:rows].T, inputs[:rows])  # the weight's gradient
                    torch.mm(output_grad[:rows], weight)  # the input's gradient
            best = min(best, time.perf_counter() - started)
        return best


def bench_ttnn(args: argparse.Namespace) -> dict[str, Any]:
    """TTNN rows/s at the configured batch, dedup on and off (id-only towers + 3 features)."""
    num_users, num_items, rows = TTNN_USERS, TTNN_ITEMS, args.batches * args.ttnn_batch_size
    users, items, user_features, item_features = zipf_two_tower_data(rows)
    result: dict[str, Any] = {"batch_size": args.ttnn_batch_size, "rows": rows}
    variants: dict[str, tuple[torch.nn.Module, Optimizer]] = {}
    for dedup in (True, False):
        for forward in ("old", "new"):
            torch.manual_seed(0)
            model = build_two_tower(
                ModelConfig(dedup=dedup),
                num_users,
                num_items,
                user_features,
                item_features,
                None,
                "none",
            )
            # "old": flat (B(1+K),) pairs with each user repeated, as before candidate lists.
            model.candidate_list_forward = forward == "new"
            name = f"dedup_{'on' if dedup else 'off'}_{forward}"
            variants[name] = (model, make_optimizer(model, 1e-3, 0.0))
    matmuls = {name: TowerMatmuls(model) for name, (model, _) in variants.items()}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    calls: dict[str, list[list[tuple[str, int]]]] = {name: [] for name in variants}
    for repeat in range(args.repeats):  # interleaved: load changes hit every variant alike
        for name, (variant, optimizer) in variants.items():

            def epoch(
                model: torch.nn.Module = variant,
                optimizer: Optimizer = optimizer,
                repeat: int = repeat,
            ) -> None:
                train_two_tower_epoch(
                    model,
                    _batches(users, items, args.ttnn_batch_size, args.batches, repeat),
                    optimizer,
                    UniformNegativeSampler(num_items),
                    args.negatives,
                    torch.Generator().manual_seed(repeat),
                )

            seconds[name].append(_timed(epoch))
            calls[name].append(matmuls[name].take_calls())
    for name, values in seconds.items():
        result[f"{name}_rows_per_s"] = rows / min(values)
    # How much of the fastest epoch the towers' matrix products alone take (replayed after
    # all epochs, same shapes, same threads).
    result["tower_matmuls"] = {}
    for name, values in seconds.items():
        fastest = values.index(min(values))
        alone = matmuls[name].replay_seconds(calls[name][fastest])
        result["tower_matmuls"][name] = {
            "gflop": matmuls[name].flops(calls[name][fastest]) / 1e9,
            "seconds_alone": alone,
            "share_of_epoch": alone / values[fastest],
        }
    for state in ("on", "off"):
        result[f"dedup_{state}_speedup_new_vs_old"] = min(seconds[f"dedup_{state}_old"]) / min(
            seconds[f"dedup_{state}_new"]
        )
    result["seconds"] = seconds
    return result


def load_ml1m_subset(data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(users, items, timestamps) with dense ids from the subset's ratings, or None."""
    files = sorted((data_dir / "ml-1m").glob("ratings*.dat*"))
    if not files:
        return None
    opener = gzip.open if files[0].suffix == ".gz" else open
    with opener(files[0], "rt", encoding="latin-1") as stream:
        table = np.array(
            [line.strip().split("::") for line in stream if line.strip()], dtype=np.int64
        )
    _, users = np.unique(table[:, 0], return_inverse=True)
    _, items = np.unique(table[:, 1], return_inverse=True)
    return users.astype(np.int64), items.astype(np.int64), table[:, 3]


def bench_ml1m(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], args: argparse.Namespace
) -> dict[str, Any]:
    users, items, timestamps = data
    num_users, num_items = int(users.max()) + 1, int(items.max()) + 1
    roles = leave_last_two_out_roles(users, timestamps, np.arange(users.size))
    train = roles == 0
    result: dict[str, Any] = {
        "mf": bench_mf(users[train], items[train], num_users, num_items, args)
    }
    test_users, test_items = users[roles == 2], items[roles == 2]
    order = np.argsort(test_users)
    test_users, test_items = test_users[order], test_items[order]
    val_of_user = np.full(num_users, -1)
    val_of_user[users[roles == 1]] = items[roles == 1]
    torch.manual_seed(0)
    model = MatrixFactorization(num_users, num_items, args.dim)
    with tempfile.TemporaryDirectory() as folder:
        index_seconds = _timed(
            lambda: write_known_index(
                Path(folder), sorted_pair_batches(users[train], items[train]), num_users, num_items
            )
        )
        known = open_known_index(Path(folder), num_users, num_items)
        csr = known.to_csr()
        timings: dict[str, list[float]] = {"memmap_index": [], "csr": []}
        masks: dict[str, KnownPositivesLike] = {"memmap_index": known, "csr": csr}
        for _ in range(args.repeats):
            for name, mask in masks.items():

                def evaluate(mask: KnownPositivesLike = mask) -> None:
                    evaluate_full_ranking(
                        model.score_users,
                        test_users,
                        test_items,
                        mask,
                        (10,),
                        1024,
                        val_of_user[test_users],
                    )

                timings[name].append(_timed(evaluate))
    result["full_ranking"] = {
        "evaluated_users": int(test_users.size),
        "seconds": {name: min(values) for name, values in timings.items()},
        "index_build_seconds": index_seconds,
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic MF pairs")
    parser.add_argument("--batches", type=int, default=40, help="batches per measurement")
    parser.add_argument("--batch-size", type=int, default=8192, help="MF batch (configs/ml-1m)")
    parser.add_argument("--ttnn-batch-size", type=int, default=1024)
    parser.add_argument("--negatives", type=int, default=4)
    parser.add_argument("--dim", type=int, default=95, help="MF d (rows of d+1)")
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; best kept")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument(
        "--allocator",
        choices=("tuned", "default"),
        default="tuned",
        help="glibc malloc as every cadc_ray stage sets it (runtime.device.tune_cpu_allocator), "
        "or as it comes; both loops run under it",
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/bench_mf.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.allocator == "tuned":
        require_tuned_allocator()

    rng = np.random.default_rng(0)
    num_users, num_items = max(args.rows // 50, 2), max(args.rows // 200, 2)
    synthetic_users = rng.integers(0, num_users, args.rows)
    # Popularity-skewed items, as in interaction logs (it changes how many rows a batch touches).
    synthetic_items = np.minimum(rng.zipf(1.1, args.rows), num_items) - 1
    load_before = os.getloadavg()
    report: dict[str, Any] = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "speed_reference_before": speed_reference(),
        "mf_synthetic": bench_mf(synthetic_users, synthetic_items, num_users, num_items, args),
        "ttnn": bench_ttnn(args),
    }
    data_dir = Path(os.environ.get("CADC_DATA_DIR", REPO.parent / "shared" / "data"))
    ml1m = load_ml1m_subset(data_dir)
    report["ml1m_subset"] = None if ml1m is None else bench_ml1m(ml1m, args)
    report["load_average_after"] = os.getloadavg()
    report["speed_reference_after"] = speed_reference()
    write_result(args.out, report, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
