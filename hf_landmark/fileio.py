"""Atomic writes: outputs appear whole or not at all."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Name prefix of a replaced folder while its successor is renamed into place.
SET_ASIDE_PREFIX = ".old-"


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary sibling folder of ``path`` to fill; on success it replaces ``path``
    (an existing one is moved aside first and deleted after), on error it is removed."""
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=parent)
    # mkdtemp makes a private (0700) folder; the result must be as shareable as any other.
    os.chmod(tmp, 0o777 & ~current_umask())
    try:
        yield tmp
        replace_directory(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_directory(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename the finished folder ``src`` to ``dst``; an existing ``dst`` is moved aside
    first and deleted after, so ``dst`` is at every moment the old folder or the new one."""
    src, dst = os.fspath(src), os.path.abspath(os.fspath(dst))
    if not os.path.exists(dst):
        os.replace(src, dst)
        return
    old = tempfile.mkdtemp(prefix=SET_ASIDE_PREFIX + os.path.basename(dst) + "-", dir=os.path.dirname(dst))
    os.replace(dst, os.path.join(old, "previous"))
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path`` (same extension, so writers that infer the
    format from it work) to write; on success it is renamed over ``path``, on error removed."""
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{uuid.uuid4().hex[:8]}-{name}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text_atomic(text: str, path: str | os.PathLike, durable: bool = False) -> None:
    """Write ``text`` to ``path`` whole or not at all; ``durable``: also on disk (``fsync``)
    before the rename, so that a power cut never leaves an empty file."""
    with atomic_file(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())


def strict_json_value(obj):
    """``obj`` with every non-finite float (NaN, ±Infinity, which JSON does not have) as
    ``None``, numpy scalars and arrays as Python values, tuples as lists."""
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {k: strict_json_value(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json_value(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return strict_json_value(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def json_text(obj, **kwargs) -> str:
    """Strict JSON (what a browser's ``JSON.parse`` or ``jq`` reads): non-finite numbers
    become ``null``, and anything else non-standard raises."""
    return json.dumps(strict_json_value(obj), indent=2, allow_nan=False, **kwargs) + "\n"


def write_json_atomic(obj, path: str | os.PathLike) -> None:
    write_text_atomic(json_text(obj), path)


#: A complete checkpoint folder's name: ``checkpoint-<step>``.
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints ``checkpoint-<step>`` in ``output_dir``, by step. A checkpoint
    is written under a temporary name and renamed when complete, so a folder with this name
    is always whole."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if p.is_dir() and (m := CHECKPOINT_NAME.match(p.name))]
    return sorted(found)
