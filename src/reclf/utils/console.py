"""Console hygiene for long applications (the demo, tuning): one line per stage, everything else in a log file."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path


def say(text: str, who: str = "demo") -> None:
    """One console line of an application: ``[reclf WHO] text``."""
    print(f"[reclf {who}] {text}", flush=True)


def clock(seconds: float) -> str:
    """``75`` -> ``1 min 15 s``."""
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


@contextlib.contextmanager
def quiet(log: Path) -> Iterator[None]:
    """Send everything this process prints (Python, Lightning, warnings, C libraries) to ``log``.

    File-descriptor level, so it catches what logging handlers and native code write too; the
    console keeps one line per stage. Used inside worker processes (and around a job in the main
    process when ``--jobs 1``).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "a", encoding="utf-8") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("default")
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
