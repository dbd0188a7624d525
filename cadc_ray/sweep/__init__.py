"""Ray Tune + Optuna sweeps over CADC experiments: ``python -m cadc_ray.sweep SPEC.yaml``.

- :mod:`cadc_ray.sweep.spec`: the typed sweep spec, validated on load (no Ray needed);
- :mod:`cadc_ray.sweep.space`: conditionals/coupling, grid points, the Optuna space;
- :mod:`cadc_ray.sweep.driver`: shared setup + pretraining once, the Tune trials;
- :mod:`cadc_ray.sweep.outcome`: what a finished sweep did (from the driver to the report);
- :mod:`cadc_ray.sweep.report`: results table, best config, plots;
- :mod:`cadc_ray.sweep.cli`: the command line (``main``).

Importing this package imports neither Ray nor torch.
"""

from cadc_ray.sweep.spec import SweepSpec, load_spec, parse_spec

__all__ = ["SweepSpec", "load_spec", "main", "parse_spec"]


def main(argv: list[str] | None = None) -> int:
    """``python -m cadc_ray.sweep`` / ``cadc-ray sweep``; see :func:`cadc_ray.sweep.cli.main`."""
    from cadc_ray.sweep.cli import main as cli_main

    return cli_main(argv)
