"""Crash-safe writes: a reader sees the old files or the new ones, never half of each.

Single files go to a temporary name in the same directory and are renamed over the target. A group of
files that must change together (an OpenVINO IR's .xml and .bin, a model's weights and config) is
written into a staging folder first; a commit marker then records that the staging is complete, and
only after that are the files renamed into place. A crash before the marker leaves the previous
files untouched (the stale staging is discarded); a crash after it is finished by `recover` at the next
use of the directory. `file_lock` keeps two processes from writing the same place at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STAGING = ".qacompress-staging"
COMMIT = ".qacompress-commit.json"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json(path: str | Path, obj: Any) -> None:
    """Replace `path` with `obj` as indented JSON, atomically."""
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=float) + "\n").encode("utf-8"))


def read_json(path: str | Path) -> Any:
    """The JSON object in `path` (written by `write_json`, so never half of one)."""
    return json.loads(Path(path).read_text())


def recover(directory: str | Path) -> None:
    """Finish a committed group write, or discard an uncommitted one, left by a crash."""
    directory = Path(directory)
    staging, marker = directory / STAGING, directory / COMMIT
    if marker.is_file():
        commit = json.loads(marker.read_text(encoding="utf-8"))
        for name in commit.get("remove", []):
            if not (staging / name).exists():
                (directory / name).unlink(missing_ok=True)
        for name in commit["files"]:
            staged = staging / name
            if staged.exists():
                (directory / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, directory / name)
        _fsync_dir(directory)
        marker.unlink()
    if staging.exists():
        shutil.rmtree(staging)


@contextmanager
def staged_files(directory: str | Path, *, replaces: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a staging folder; on normal exit its files replace their namesakes in `directory` as one.

    Files named in `replaces` that the new set lacks are removed in the same commit (a stale file of an
    older export must not sit beside the new one). On an exception nothing in `directory` changes.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    recover(directory)
    staging = directory / STAGING
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    names = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
    for name in names:
        with open(staging / name, "rb") as f:
            os.fsync(f.fileno())
    write_json(directory / COMMIT, {"files": names, "remove": [r for r in replaces if r not in names]})
    recover(directory)


@contextmanager
def file_lock(path: str | Path, *, on_busy: Callable[[], None]) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing). The kernel releases it when the process
    dies, so a crash leaves nothing to clean up. When another process holds it, `on_busy()` runs
    first: it raises to refuse, or returns to wait for the other process."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_busy()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
