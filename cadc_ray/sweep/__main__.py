"""``python -m cadc_ray.sweep SPEC.yaml [--resume] [--set KEY=VALUE ...]``."""

from __future__ import annotations

import sys

from cadc_ray.sweep.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
