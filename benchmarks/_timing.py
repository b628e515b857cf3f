"""Timing helpers shared by the benchmarks: interleaved repeats, median and spread."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def timeit(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def interleaved(fns: dict[str, Callable[[], object]], *, repeats: int = 5, warmup: int = 1,
                cpu: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Time several functions in alternation (A B C A B C ...), so drifting machine load hits all alike.

    Returns wall-clock seconds per call; with ``cpu`` given (a dict), the process CPU seconds of
    the same calls go there too (on a machine shared with other jobs, the steadier of the two)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    if cpu is not None:
        cpu.clear()
        cpu.update({k: [] for k in fns})
    for _ in range(repeats):
        for k, fn in fns.items():
            c0 = time.process_time()
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
            if cpu is not None:
                cpu[k].append(time.process_time() - c0)
    return times


class Clock:
    """Wall and process CPU seconds of one block: ``with Clock() as c: ...; c.wall, c.cpu``."""

    def __enter__(self) -> Clock:
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._w
        self.cpu = time.process_time() - self._c


def med(ts: list[float]) -> float:
    return statistics.median(ts)


def spread(ts: list[float]) -> float:
    return statistics.stdev(ts) if len(ts) > 1 else 0.0


def header() -> str:
    return f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu"
