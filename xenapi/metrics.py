"""Counters of the server's own work (calls, errors, latency), for logs, the web page and /metrics."""
from __future__ import annotations

import bisect
import threading
from collections import Counter
from dataclasses import dataclass

from xenapi.wire import Failure, Fault

BUCKETS_MS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 60000)


@dataclass(frozen=True)
class Snapshot:
    calls: int
    errors: dict[str, int]         # by the error's code ("fault" for XML-RPC faults)
    latency: tuple[int, ...]       # calls per bucket of BUCKETS_MS (not cumulative), then those above
    latency_sum_ms: float


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

    def snapshot(self) -> Snapshot:
        """The counters of one instant (a scrape must not see a call counted in one and not another)."""
        with self._lock:
            return Snapshot(self.calls, dict(self.errors), tuple(self.latency), self.latency_sum_ms)
