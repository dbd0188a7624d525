"""`cadc-ray` console script: one entry point over the module CLIs.

cadc-ray prepare ...   == python -m cadc_ray.prepare ...
cadc-ray run ...       == python -m cadc_ray.run ...
cadc-ray sweep ...     == python -m cadc_ray.sweep ...
"""

from __future__ import annotations

import sys
from collections.abc import Callable

USAGE = """usage: cadc-ray {prepare,run,sweep} [args...]

  prepare   raw dataset (or the synthetic default) -> Parquet shards + features + manifest
  run       one experiment: CONFIG.yaml [--set key=value ...] -> results.json
  sweep     a Ray Tune + Optuna sweep: SPEC.yaml [--resume] -> table, best config, plots

'cadc-ray COMMAND --help' shows each command's options."""


def _command(name: str) -> Callable[[list[str] | None], int]:
    # Imported lazily: `cadc-ray --help` must not pay for importing Ray and torch.
    if name == "prepare":
        from cadc_ray.prepare import main as prepare_main

        return prepare_main
    if name == "run":
        from cadc_ray.run import main as run_main

        return run_main
    from cadc_ray.sweep.__main__ import main as sweep_main

    return sweep_main


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in ("prepare", "run", "sweep"):
        print(f"cadc-ray: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return _command(command)(rest)


if __name__ == "__main__":
    sys.exit(main())
