"""Atomic file writes: write beside the target, then rename, so a crash never leaves a half-written file."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from minitune.errors import ConfigError


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call `write(tmp_path)` on a temporary file in the target's directory, then rename it over `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise ConfigError(f"{path}: cannot write here ({e.strerror}); choose a writable output directory") from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_dir(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call `write(tmp_dir)` on a fresh directory beside `path`, then swap it in whole.

    A model directory must not mix runs: files an earlier run left there (another shard layout, a thresholds
    file, an adapter) would be read with the new weights. The old directory is moved aside, then removed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot write here ({e.strerror}); choose a writable output directory") from None
    old = tmp.with_suffix(".old")
    try:
        write(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
