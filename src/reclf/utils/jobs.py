"""Independent jobs (pretraining runs, model evaluations) in a pool of processes, one per core (the demo, tuning)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))


def make_pool(jobs: int, threads: int):
    """A process pool for independent demo jobs (each with its own torch threads), or None for jobs=1."""
    if jobs <= 1:
        return None
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")  # fork after torch/OpenMP start-up can hang
    return ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker, initargs=(threads,))


def map_jobs(pool, fn, items: list[tuple], done: Callable[[int, Any, float, int], None] | None = None) -> list[Any]:
    """``fn(*item)`` for every item (in the pool when there is one); ``done(i, result, seconds, n_done)`` as
    each ends (``i``: the item's index, ``n_done``: how many have ended so far)."""
    start = time.time()
    if pool is None:
        out = []
        for i, item in enumerate(items):
            out.append(fn(*item))
            if done:
                done(i, out[-1], time.time() - start, i + 1)
        return out
    from concurrent.futures import as_completed

    futures = {pool.submit(fn, *item): i for i, item in enumerate(items)}
    results: dict[int, Any] = {}
    for f in as_completed(futures):
        i = futures[f]
        results[i] = f.result()
        if done:
            done(i, results[i], time.time() - start, len(results))
    return [results[i] for i in range(len(items))]
