"""What a finished sweep did: produced by ``sweep.driver``, written out by ``sweep.report``.

It sits below both so the report does not import the driver that calls it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class SweepOutcome:
    """What a finished (or resumed) sweep did; the files are in ``output_dir``."""

    output_dir: Path
    records: list[dict[str, Any]]
    pretrain_runs: list[str] = field(default_factory=list)  # keys pretrained in this call
    pretrain_loaded: list[str] = field(default_factory=list)  # keys loaded from disk (resume)
    pretrained_ref_ids: dict[str, str] = field(default_factory=dict)  # key -> ObjectRef hex
    wall_seconds: float = 0.0
    files: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False  # Tune stopped before every trial ended (e.g. Ctrl-C): --resume
    # Why the Optuna searcher ended the search before num_samples trials (every distinct
    # point tried, or only tried points proposed), else None.
    search_ended: str | None = None
    storage_root: str = ""  # where tune/ and train/ live (output_dir, or storage_path/<name>)
