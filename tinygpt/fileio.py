"""Atomic file and directory writes: build under a temporary name, then rename into place.

A crash or Ctrl-C mid-write leaves the previous version intact and at worst a stray temporary.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0o022)  # reading it means setting it; put it straight back
    os.umask(mask)
    return mask


def _as_created(path: Path, mode: int) -> None:
    """Give a temporary (0600/0700 from tempfile) the permissions a plain open()/mkdir() would: the umask's."""
    os.chmod(path, mode & ~_umask())


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `target`; on success it replaces `target` whole."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    _as_created(tmp, 0o777)
    try:
        yield tmp
        for path in tmp.rglob("*"):  # some writers (safetensors) create files 0600 whatever the umask
            _as_created(path, 0o777 if path.is_dir() else 0o666)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside `target`; on success it is renamed onto `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    _as_created(Path(tmp), 0o666)
    try:
        yield Path(tmp)
        _as_created(Path(tmp), 0o666)  # a writer that recreates the file (safetensors) makes it 0600
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
