"""Atomic writes: a temporary sibling, then a rename. The one place the project writes files
that a later run reads back (results, checkpoints, pretrained tables, reports, prepared
datasets, splits and samples).

An interrupted run never leaves a half-written file that a later run reads as valid: either
the previous file or the complete new one is at ``path``. The temporary file sits next to
the target (same filesystem, so ``os.replace`` is atomic) under a hidden name
(``.<name>.tmp-<pid>-<random>``) that no reader globs for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)


def temporary_sibling(target: Path) -> Path:
    """A fresh temp path next to ``target`` (same filesystem, so rename is atomic)."""
    return target.with_name(f"{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def write_atomic(path: Path, write: Callable[[Path], object], *, keep_suffix: bool = False) -> Path:
    """Calls ``write(temporary)`` then renames the temporary file to ``path``; returns ``path``.

    ``write`` is whatever serializes the payload (``np.savez``, ``torch.save``,
    ``figure.savefig``, ``pq.write_table``...). ``keep_suffix`` ends the temporary name with
    ``path``'s suffix, for writers that choose the format from it (``savefig``) or append
    one when it is missing (``np.savez`` adds ``.npz``). On error the temporary file is
    removed and ``path`` is left as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(
        f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        + (path.suffix if keep_suffix else "")
    )
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: Path, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    write_atomic(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


@contextlib.contextmanager
def atomic_directory(target: Path, *, replace_existing: bool = False) -> Iterator[Path]:
    """Yields a temp folder; on success it becomes ``target`` (rename), on error it is removed.

    If ``target`` appeared meanwhile (a concurrent writer won), ours is discarded, unless
    ``replace_existing``: then the old ``target`` is moved aside, ours renamed in, and the
    old copy removed (readers see the old or the new folder, never a mix).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = temporary_sibling(target)
    temp.mkdir()
    try:
        yield temp
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    if replace_existing and target.exists():
        trash = temporary_sibling(target)
        os.rename(target, trash)
        os.rename(temp, target)
        shutil.rmtree(trash, ignore_errors=True)
        return
    try:
        os.rename(temp, target)
    except OSError:
        if target.exists():
            logger.info("%s was written concurrently; keeping the existing copy", target)
            shutil.rmtree(temp, ignore_errors=True)
        else:
            shutil.rmtree(temp, ignore_errors=True)
            raise
