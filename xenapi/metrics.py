"""Counters of the server's own work (calls, errors, latency), for logs, the web page and /metrics."""
from __future__ import annotations

import bisect
import threading
from collections import Counter

from xenapi.wire import Failure, Fault

BUCKETS_MS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 60000)


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.calls = 0
        self.errors: Counter[str] = Counter()
        self.latency = [0] * (len(BUCKETS_MS) + 1)
        self.latency_sum_ms = 0.0

    def observe(self, method: str, outcome, ms: float) -> None:
        with self._lock:
            self.calls += 1
            self.latency[bisect.bisect_left(BUCKETS_MS, ms)] += 1
            self.latency_sum_ms += ms
            if isinstance(outcome, Failure):
                self.errors[outcome.description[0]] += 1
            elif isinstance(outcome, Fault):
                self.errors["fault"] += 1
