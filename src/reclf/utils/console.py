"""Console hygiene for long applications (the demo, tuning): one line per stage, everything else in a log file.

Two tools: :func:`quiet` sends everything a process prints to a log file (the demo's stages, worker
processes); :func:`library_quiet` keeps third-party libraries from drawing on the console at all while
reclf calls them (transformers' ``Loading weights: 0%|...`` bars, its warnings): their messages go
through Python ``logging`` (into the log of an enclosing :func:`quiet`), so the console shows reclf's own
lines alone, whether or not a command runs under :func:`quiet`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any


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


@contextlib.contextmanager
def library_quiet() -> Iterator[None]:
    """Third-party progress bars off and library warnings routed to ``logging`` while the block runs.

    Wrap calls into Hugging Face libraries (``from_pretrained``): transformers draws a tqdm bar on stderr for
    every weight load and warns through ``warnings``; here the bars are switched off (``HF_HUB_DISABLE_PROGRESS_BARS``
    and transformers' own switch), its logger shows errors only, and ``warnings`` are captured by ``logging``
    (the ``py.warnings`` logger). Everything is restored afterwards, so a caller's own settings stand.
    """
    hf_logging: Any = None
    try:  # imported before the variable below is set: its defaults are the caller's
        import transformers.utils.logging

        hf_logging = transformers.utils.logging
    except ImportError:  # transformers is a dependency; without it there is nothing to silence
        pass
    saved_env = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    bars = verbosity = None
    if hf_logging is not None:
        bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        if hf_logging is not None and verbosity is not None:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
        if saved_env is None:
            os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        else:
            os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = saved_env
