"""Shared by the benchmarks: latency percentiles and summaries, waiting for a server to answer."""
from __future__ import annotations

import statistics
import time
from pathlib import Path


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) with linear interpolation between order statistics."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(ms: list[float]) -> dict:
    return {"n": len(ms), "p50": round(pct(ms, .5), 2), "p95": round(pct(ms, .95), 2),
            "p99": round(pct(ms, .99), 2), "max": round(max(ms), 2) if ms else None,
            "mean": round(statistics.fmean(ms), 2) if ms else None}


def wait_until_serving(url: str, proc, log: Path, timeout: float = 90.0) -> None:
    """Until ``url`` answers without a 5xx; SystemExit with the log's tail if ``proc`` exits first
    or ``timeout`` passes."""
    import requests

    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("the server did not start:\n" + log.read_text()[-3000:])
        time.sleep(0.2)
