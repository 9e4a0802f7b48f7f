"""Shared by the benchmarks: latency percentiles and summaries, a free local port."""
from __future__ import annotations

import statistics


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
