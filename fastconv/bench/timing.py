"""Timing: warm-up, then rounds of several launches each; per-launch medians and IQR.

CUDA: each round is bracketed by CUDA events on the current stream (the GPU's own clock, no host
overhead between launches); CPU: time.perf_counter around each round. The number of launches per
round is calibrated so that one round lasts at least `min_round_s` (timer resolution and launch
jitter then stay small next to the measurement).

A measurement is *noisy* when its rounds disagree: IQR / median above NOISY_IQR. Reports mark such
times and say how many there were; a noisy time is not a property of the kernel.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch

# IQR / median above this: the rounds of one measurement disagree too much to trust its median.
NOISY_IQR = 0.2


@dataclass
class Stats:
    """Seconds per launch over `rounds` rounds of `inner` launches each."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    mean: float
    stddev: float
    rounds: int
    inner: int
    timer: str

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def as_dict(self) -> Dict[str, float]:
        d = asdict(self)
        d["iqr"] = self.iqr
        return d


def relative_iqr(stats: Optional[Mapping[str, Any]]) -> Optional[float]:
    """IQR / median of a stats dict (Stats.as_dict() or a results record's "stats"), None without one."""
    if not stats or not stats.get("median"):
        return None
    iqr = stats.get("iqr")
    if iqr is None and stats.get("q1") is not None and stats.get("q3") is not None:
        iqr = stats["q3"] - stats["q1"]
    return None if iqr is None else iqr / stats["median"]


def is_noisy(stats: Optional[Mapping[str, Any]], threshold: float = NOISY_IQR) -> bool:
    r = relative_iqr(stats)
    return r is not None and r > threshold


def _quartiles(xs: List[float]):
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def stats_from_samples(samples: List[float], inner: int, timer: str) -> Stats:
    q1, q3 = _quartiles(samples)
    return Stats(median=statistics.median(samples), q1=q1, q3=q3, min=min(samples), max=max(samples),
                 mean=statistics.fmean(samples), stddev=statistics.pstdev(samples) if len(samples) > 1 else 0.0,
                 rounds=len(samples), inner=inner, timer=timer)


def calibrate(fn: Callable[[], object], device: torch.device, warmup: int = 2, min_round_s: float = 2e-3,
              max_inner: int = 1000) -> tuple:
    """Runs `warmup` untimed calls; returns (launches per round so that a round lasts >= min_round_s,
    seconds per call seen during warm-up)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(max(1, warmup)):
        fn()
    sync()
    once = max((time.perf_counter() - t0) / max(1, warmup), 1e-9)
    return int(min(max_inner, max(1, round(min_round_s / once)))), once


def measure(fn: Callable[[], object], device: torch.device, *, warmup: int = 2, rounds: int = 10,
            min_round_s: float = 2e-3, max_inner: int = 1000, max_total_s: float = 5.0) -> Stats:
    """Times `fn()` on `device`: `warmup` untimed calls, then up to `rounds` timed rounds (fewer when
    `max_total_s` would be exceeded, never fewer than 3)."""
    cuda = device.type == "cuda"
    inner, once = calibrate(fn, device, warmup, min_round_s, max_inner)
    rounds = int(max(3, min(rounds, max_total_s / (once * inner))))
    samples: List[float] = []
    if cuda:
        stream = torch.cuda.current_stream(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(rounds)]
        for start, end in events:
            start.record(stream)
            for _ in range(inner):
                fn()
            end.record(stream)
        torch.cuda.synchronize(device)
        samples = [s.elapsed_time(e) * 1e-3 / inner for s, e in events]
        timer = "cuda-events"
    else:
        for _ in range(rounds):
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            samples.append((time.perf_counter() - t) / inner)
        timer = "perf_counter"
    return stats_from_samples(samples, inner, timer)
