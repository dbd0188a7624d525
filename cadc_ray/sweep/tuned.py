"""Tuned tables: one Optuna study per value of a grid dimension, then seeds of each best.

A spec with ``study_per: method`` and ``final_seeds: [0, 1, 2]`` (e.g.
``tune_specs/paper/table1_tuned.yaml``) runs, with one Ray for all stages:

1. for each value ``v`` of the ``study_per`` grid (each method), an Optuna sweep of
   ``num_samples`` trials over the other dimensions with ``study_per = v`` in the base
   config: every method gets the same budget over the same hyperparameters. Each is a
   whole sweep folder, ``<output_dir>/studies/<v>/`` (its own stored study, results,
   ``best.json``);
2. the best trial of each study by the first objective (validation: objectives never
   use the test split) gives that value's chosen overrides;
3. a grid sweep, ``<output_dir>/final/``, of every chosen config at every seed of
   ``final_seeds`` (full runs: no early stopping by the scheduler);
4. ``<output_dir>/table.md`` and ``table.json``: per value, the chosen overrides and the
   mean and standard deviation over the seeds of every validation and test metric.

``--resume`` resumes every stage: a finished stage is restored as it is (Tune returns
its results at once, pretrained tables are reloaded), an interrupted one is finished.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cadc_ray.atomic import write_text_atomic
from cadc_ray.config import coerce_value, replace_dotted
from cadc_ray.sweep.spec import EarlyStoppingSpec, SearcherSpec, SweepSpec

logger = logging.getLogger(__name__)

STUDIES_DIR = "studies"
FINAL_DIR = "final"


def study_values(spec: SweepSpec) -> tuple[Any, ...]:
    """The values of the ``study_per`` dimension: one study each."""
    assert spec.study_per is not None
    return spec.space_dict[spec.study_per].values


def _slug(value: Any) -> str:
    return str(value).replace("/", "_")


def study_spec(spec: SweepSpec, value: Any) -> SweepSpec:
    """The Optuna sweep of one ``study_per`` value: that value fixed, the rest searched."""
    assert spec.study_per is not None
    return dataclasses.replace(
        spec,
        name=f"{spec.name}-{_slug(value)}",
        base_config=replace_dotted(spec.base_config, {spec.study_per: value}),
        space=tuple((key, dist) for key, dist in spec.space if key != spec.study_per),
        output_dir=spec.output_dir / STUDIES_DIR / _slug(value),
        study_per=None,
        final_seeds=(),
    )


def final_spec(spec: SweepSpec, chosen: Mapping[Any, Mapping[str, Any]]) -> SweepSpec:
    """A grid sweep of every chosen config (value -> its best overrides) at every seed."""
    assert spec.study_per is not None
    seeds = spec.final_seeds or (spec.base_config.seed,)
    points = tuple(
        tuple({**overrides, spec.study_per: value, "seed": seed}.items())
        for value, overrides in chosen.items()
        for seed in seeds
    )
    return dataclasses.replace(
        spec,
        name=f"{spec.name}-{FINAL_DIR}",
        space=(),
        extra_trials=points,
        searcher=SearcherSpec(kind="grid"),
        num_samples=1,
        early_stopping=EarlyStoppingSpec(),
        output_dir=spec.output_dir / FINAL_DIR,
        study_per=None,
        final_seeds=(),
    )


def canonical_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Overrides as the config types them (a JSON round trip turns tuples into lists)."""
    return {key: coerce_value(key, value) for key, value in overrides.items()}


def run_tuned(
    spec: SweepSpec,
    *,
    resume: bool = False,
    address: str | None = None,
    callbacks: Sequence[Any] = (),
) -> Any:
    """Runs every stage (see the module docstring); returns the final stage's SweepOutcome.

    Stops after a stage that was interrupted (its outcome says so: ``--resume``).
    """
    import ray

    from cadc_ray.sweep.driver import SPEC_FILE, run_sweep, start_ray
    from cadc_ray.sweep.report import best_record

    started_ray = start_ray(spec, address)
    try:
        chosen: dict[Any, dict[str, Any]] = {}
        for value in study_values(spec):
            study = study_spec(spec, value)
            started = (study.output_dir.resolve() / SPEC_FILE).is_file()
            outcome = run_sweep(study, resume=resume and started, callbacks=callbacks)
            if outcome.interrupted:
                return outcome
            best = best_record(outcome.records, study.objectives[0])
            if best is None:
                logger.warning("study %s: no finished trial, %s left out", study.name, value)
                continue
            chosen[value] = canonical_overrides(best["overrides"])
            logger.info("study %s: best %s", study.name, chosen[value])
        final = final_spec(spec, chosen)
        started = (final.output_dir.resolve() / SPEC_FILE).is_file()
        outcome = run_sweep(final, resume=resume and started, callbacks=callbacks)
        if not outcome.interrupted:
            outcome.files.update(
                write_table(spec, outcome.records, chosen, spec.output_dir.resolve())
            )
        return outcome
    finally:
        if started_ray:
            ray.shutdown()


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def table_rows(
    per: str,
    records: Sequence[Mapping[str, Any]],
    chosen: Mapping[Any, Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """One row per ``per`` value: chosen overrides, seeds, mean/std of every quality metric.

    Quality metrics (``val_*`` / ``test_*``) and ``total_seconds`` over the finished
    seed runs of that value's config; fractions as Tune reports them.
    """
    rows = []
    for value, overrides in chosen.items():
        runs = [
            record
            for record in records
            if record["status"] == "finished" and record["overrides"].get(per) == value
        ]
        row: dict[str, Any] = {
            per: value,
            "chosen": {k: v for k, v in overrides.items() if k != per},
            "seeds": sorted(int(record["overrides"]["seed"]) for record in runs),
        }
        names = sorted(
            {
                name
                for record in runs
                for name, metric in record["metrics"].items()
                if (name.startswith(("val_", "test_")) or name == "total_seconds")
                and isinstance(metric, (int, float))
                and not isinstance(metric, bool)
            }
        )
        for name in names:
            values = [
                float(record["metrics"][name]) for record in runs if name in record["metrics"]
            ]
            mean, std = _mean_std(values)
            row[name] = {"mean": mean, "std": std, "n": len(values)}
        rows.append(row)
    return rows


def table_markdown(spec: SweepSpec, rows: Sequence[Mapping[str, Any]], k: int = 10) -> str:
    """The tuned table: per value, test HR@k / NDCG@k (%) mean ± std over seeds."""
    assert spec.study_per is not None
    per = spec.study_per
    lines = [
        f"# {spec.name}: every {per} tuned with the same Optuna budget, then seeds",
        "",
        f"Each {per} had {spec.num_samples} Optuna trials over "
        f"{[key for key, _ in spec.space if key != per]} (selected by "
        f"{spec.objectives[0].metric}, {spec.objectives[0].mode}); its best config was run at "
        f"seeds {list(spec.final_seeds)}. Quality in percent, mean ± sample std over seeds.",
        "",
        f"| {per} | chosen | seeds | val HR@{k} | test HR@{k} | test NDCG@{k} | total s |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(row: Mapping[str, Any], name: str, scale: float, digits: int) -> str:
        stats = row.get(name)
        if not stats:
            return "–"
        return f"{scale * stats['mean']:.{digits}f} ± {scale * stats['std']:.{digits}f}"

    for row in rows:
        chosen = ", ".join(f"{key}={value}" for key, value in row["chosen"].items())
        lines.append(
            f"| {row[per]} | {chosen} | {len(row['seeds'])} | {cell(row, f'val_hr@{k}', 100, 2)} "
            f"| {cell(row, f'test_hr@{k}', 100, 2)} | {cell(row, f'test_ndcg@{k}', 100, 2)} "
            f"| {cell(row, 'total_seconds', 1, 0)} |"
        )
    return "\n".join(lines) + "\n"


def write_table(
    spec: SweepSpec,
    records: Sequence[Mapping[str, Any]],
    chosen: Mapping[Any, Mapping[str, Any]],
    folder: Path,
) -> dict[str, str]:
    """``table.json`` and ``table.md`` in ``folder``; returns {kind: path}."""
    assert spec.study_per is not None
    rows = table_rows(spec.study_per, records, chosen)
    k = 10 if 10 in spec.base_config.eval.ks else spec.base_config.eval.ks[0]
    write_text_atomic(folder / "table.json", json.dumps(rows, indent=2, default=str) + "\n")
    write_text_atomic(folder / "table.md", table_markdown(spec, rows, k))
    return {"table_json": str(folder / "table.json"), "table_md": str(folder / "table.md")}
