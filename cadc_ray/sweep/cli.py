"""Command line of the sweep: load and validate the spec, run (or resume), print where results are.

Exit status: 0 done (even when some trials failed: see the table); 2 spec/config/data
error (before any Ray resource starts: the spec, the experiment configs, every dataset's
raw input path); 1 when every trial failed; 130 interrupted (SIGINT/Ctrl-C or SIGTERM:
Tune saved its state, finish with ``--resume``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cadc_ray.config import ConfigError
from cadc_ray.console import setup_console

if TYPE_CHECKING:
    from cadc_ray.sweep.outcome import SweepOutcome
    from cadc_ray.sweep.spec import SweepSpec

EXIT_CONFIG_ERROR = 2
EXIT_ALL_FAILED = 1
EXIT_INTERRUPTED = 130
"""128 + SIGINT, as a shell reports a Ctrl-C'd command; also used after SIGTERM."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cadc_ray.sweep",
        description="Run a Ray Tune + Optuna sweep of CADC experiments; writes a results "
        "table (CSV/Markdown), the best config and plots to the spec's output_dir.",
    )
    parser.add_argument("spec", help="sweep spec YAML (e.g. tune_specs/ratio.yaml)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted sweep in output_dir (finished trials are not re-run)",
    )
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="spec key (output_dir, num_samples, max_concurrent_trials, searcher.seed, ...) "
        "or dotted experiment key added to the spec's overrides (data.path=..., train.epochs=3)",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to use ('auto' = the one `ray start` launched here; default: "
        "$RAY_ADDRESS, else a new local Ray sized by the spec's `ray` section)",
    )
    parser.add_argument(
        "--check", action="store_true", help="validate the spec and list the trials, then exit"
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also print Ray's own progress (Ray Data operators, Train reports) on the console",
    )
    return parser


def run_spec(
    spec: SweepSpec,
    *,
    resume: bool = False,
    address: str | None = None,
    callbacks: Sequence[Any] = (),
) -> SweepOutcome:
    """Runs (or resumes) what a spec describes: one sweep (``driver.run_sweep``) or, for a
    ``study_per`` spec, one sweep per study and then the final seeds (``tuned.run_tuned``,
    which calls ``run_sweep`` per stage). Dispatched here, above both, so that neither
    module imports the other's caller."""
    from cadc_ray.sweep import driver

    if spec.study_per is None:
        return driver.run_sweep(spec, resume=resume, address=address, callbacks=callbacks)
    from cadc_ray.sweep.space import trial_configs_for_setup
    from cadc_ray.sweep.tuned import run_tuned

    # Every study's raw input, before run_tuned starts Ray (each stage checks its own again).
    driver.check_data_inputs(spec, trial_configs_for_setup(spec))
    outcome: SweepOutcome = run_tuned(spec, resume=resume, address=address, callbacks=callbacks)
    return outcome


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    args = build_parser().parse_args(argv)
    setup_console(verbose=args.verbose)
    from cadc_ray.sweep.spec import load_spec

    try:
        spec = load_spec(args.spec, args.sets)
    except ConfigError as error:
        print(f"spec error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if args.check:
        from cadc_ray.sweep.space import (
            distinct_pretrain_configs,
            distinct_trial_count,
            grid_points,
            searched_trial_count,
            trial_configs_for_setup,
        )

        print(
            f"spec {spec.source} is valid: searcher {spec.searcher.kind}, output {spec.output_dir}"
        )
        if spec.searcher.kind == "grid":
            for index, point in enumerate(grid_points(spec)):
                print(f"  trial {index}: {point}")
        elif spec.study_per is not None:
            searched = [key for key, _ in spec.space if key != spec.study_per]
            values = spec.space_dict[spec.study_per].values
            print(
                f"  one study of {spec.num_samples} Optuna trials over {searched} per "
                f"{spec.study_per} in {list(values)}, then each best at seeds "
                f"{list(spec.final_seeds)}"
            )
        else:
            distinct = distinct_trial_count(spec)
            runs = searched_trial_count(spec, spec.num_samples)
            of_space = "" if distinct is None else f" (the space has {distinct} distinct points)"
            print(f"  {runs} Optuna trials over {[key for key, _ in spec.space]}{of_space}")
        pretraining = distinct_pretrain_configs(trial_configs_for_setup(spec))
        print(f"  pretraining runs before the trials: {sorted(pretraining) or 'none'}")
        return 0

    from cadc_ray.data import DataError

    try:
        outcome = run_spec(spec, resume=args.resume, address=args.address)
    except (ConfigError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except (KeyboardInterrupt, SystemExit):
        # Before Tune started (setup/pretraining) or a second signal during Tune. The
        # sweep never calls sys.exit: a SystemExit here is a signal handler's that Ray
        # installs (Train's Ctrl-C handler around a pretraining run exits 0 after aborting it).
        print(
            f"interrupted: finish it with  python -m cadc_ray.sweep {args.spec} --resume "
            "(or start again if no trial had started)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    statuses = [record["status"] for record in outcome.records]
    print(
        f"sweep {spec.name}: {statuses.count('finished')} finished, {statuses.count('stopped')} "
        f"stopped early, {statuses.count('error')} failed in {outcome.wall_seconds:.0f}s "
        f"(pretraining runs: {len(outcome.pretrain_runs)}, reused: {len(outcome.pretrain_loaded)})"
    )
    if outcome.search_ended:
        print(
            f"  the searcher ended the search after {len(statuses)} trials: {outcome.search_ended}"
        )
    for kind, path in outcome.files.items():
        print(f"  {kind}: {path}")
    if outcome.interrupted:
        print(f"interrupted: finish it with  python -m cadc_ray.sweep {args.spec} --resume")
        return EXIT_INTERRUPTED
    if statuses and statuses.count("error") == len(statuses):
        return EXIT_ALL_FAILED
    return 0
