"""``python -m cadc_ray.prepare``: prepare a dataset (thin entry point; see cadc_ray.data.prepare)."""

from __future__ import annotations

from cadc_ray.data.prepare import main

if __name__ == "__main__":
    raise SystemExit(main())
