"""Atomic file writes: a temporary sibling, then a rename.

An interrupted run never leaves a half-written file that a later run reads as valid:
either the previous file or the complete new one is at ``path``.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` via ``.<name>.tmp-<pid>`` + ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
