"""Atomic writes: an interrupted run never leaves a file (or folder) that reads as complete.

A write that fails because the disk is full raises :class:`DiskFullError` naming the path being written
and what to free, whatever library did the writing: the OS's ``OSError`` (``ENOSPC``, ``EDQUOT``),
torch's ``RuntimeError: [enforce fail at inline_container.cc...] unexpected pos`` and safetensors'
``SafetensorError ... No space left on device`` are recognised (:func:`is_disk_full`). The command line
prints its message as one line (``reclf.cli.main``), never a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Messages by which libraries report a full disk without an errno (safetensors, torch's zip writer).
DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "StorageFull")
#: torch.save's zip writer on a full disk: ``[enforce fail at inline_container.cc:NNN] . unexpected pos``
TORCH_WRITE_FAILED = ("inline_container.cc", "PytorchStreamWriter failed writing")


class DiskFullError(OSError):
    """A write failed for lack of disk space; the message names the path and what to free.

    An ``OSError`` with ``errno.ENOSPC`` and ``filename`` (the standard three arguments, so that it pickles
    across worker processes); ``str()`` is the message alone."""

    def __str__(self) -> str:
        return str(self.strerror)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        yield node
        node = node.__cause__ or node.__context__


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) says the disk or the quota is full."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e)
        if any(t in text for t in DISK_FULL_TEXT):
            return True
        if isinstance(e, RuntimeError) and any(t in text for t in TORCH_WRITE_FAILED):
            return True  # torch's zip writer: a short write, which on a local disk means it is full
    return False


def free_space_hint(path: str | Path) -> str:
    """What to free: the space left on ``path``'s file system and where reclf keeps what can be deleted."""
    probe = Path(path).absolute()
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
        left = f"{free / 2**30:.1f} GiB free on its file system"
    except OSError:
        left = "its file system is full"
    return (f"{left}; free space there (old runs under runs/, the feature cache runs/.cache, old demo outputs) "
            "or write somewhere else (--out, train.runs_dir), then run the command again")


def disk_full_error(path: str | Path, exc: BaseException) -> DiskFullError:
    """The :class:`DiskFullError` for a failed write of ``path`` (``exc``: what the writer raised)."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
    message = f"the disk is full: writing {path} failed ({type(exc).__name__}: {first}); {free_space_hint(path)}"
    return DiskFullError(errno.ENOSPC, message, str(path))


@contextlib.contextmanager
def disk_full_names(path: str | Path) -> Iterator[None]:
    """Re-raise a full-disk failure of the block (any library's form of it) as :class:`DiskFullError` for
    ``path``; every other exception passes unchanged. Nested writers (a model folder built inside a
    temporary export folder) name the outermost path: the one the user asked for."""
    try:
        yield
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        cause = exc.__cause__ if isinstance(exc, DiskFullError) and exc.__cause__ is not None else exc
        raise disk_full_error(path, cause) from cause


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    with disk_full_names(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):  # a failed clean-up must not hide the original error
                os.unlink(tmp)
            raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    For writers that want a file name (``torch.save``, ``DataFrame.to_csv``, ``Image.save``).
    """
    path = Path(path)
    with disk_full_names(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):  # a failed clean-up must not hide the original error
                os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it to ``path`` only when complete."""
    path = Path(path)
    with disk_full_names(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if path.exists():
            if not overwrite:
                shutil.rmtree(tmp, ignore_errors=True)
                raise FileExistsError(f"{path} exists; pass overwrite to replace it")
            shutil.rmtree(path)
        os.replace(tmp, path)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
