"""Failed-login throttling, per user name and per source address.

After ``per_user`` failures for one user name (whether or not the user exists, so the throttle
tells nothing about which names are real), or ``per_source`` failures from one address, within
``window`` seconds, that name or address is locked for ``lockout`` seconds.  While locked, a login
is refused at once with SESSION_AUTHENTICATION_FAILED and a message saying when to retry, and the
password is not checked: a correct password is refused too, so guessing during a lock learns
nothing.  Nothing ever sleeps: a refusal is immediate and holds no lock.

A success clears the user name's failures.  It does not clear the address's: otherwise an attacker
holding one valid account could log into it between guesses at other accounts and never be
locked.  An address's failures simply age out of the window.

An attempt counts as pending while its password is checked (scrypt takes ~50 ms), so a burst of
concurrent guesses cannot overrun the limits.  A limit of 0 turns that half of the throttle off.  The tables are bounded (``max_keys``, oldest
forgotten first) so a flood of made-up names cannot exhaust memory.
"""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field


@dataclass
class _Count:
    failures: deque = field(default_factory=deque)   # times of recent failures
    pending: int = 0
    locked_until: float = 0.0


class LoginThrottle:
    def __init__(self, per_user: int = 5, per_source: int = 20, window: float = 300.0, lockout: float = 60.0,
                 clock=time.monotonic, max_keys: int = 100_000):
        self.per_user = per_user
        self.per_source = per_source
        self.window = window
        self.lockout = lockout
        self.clock = clock
        self.max_keys = max_keys
        self._counts: OrderedDict[tuple[str, str], _Count] = OrderedDict()
        self._lock = threading.Lock()

    def attempt(self, user: str, source: str) -> float:
        """0.0: go ahead (an attempt is now pending; call :meth:`done`).  Otherwise the seconds to
        wait before trying again; nothing is pending then."""
        keys = self._keys(user, source)
        with self._lock:
            now = self.clock()
            wait = max(self._wait(key, limit, now) for key, limit in keys)
            if wait > 0:
                return wait
            for key, _ in keys:
                self._count(key).pending += 1
            return 0.0

    def done(self, user: str, source: str, ok: bool) -> None:
        with self._lock:
            now = self.clock()
            for key, limit in self._keys(user, source):
                count = self._count(key)
                count.pending = max(0, count.pending - 1)
                if ok:
                    if key[0] == "user":
                        count.failures.clear()
                else:
                    count.failures.append(now)
                    self._expire(count, now)
                    if 0 < limit <= len(count.failures):
                        count.locked_until = now + self.lockout
                        count.failures.clear()
                if not count.failures and not count.pending and count.locked_until <= now:
                    self._counts.pop(key, None)

    def _keys(self, user: str, source: str):
        return (("user", user), self.per_user), (("source", source), self.per_source)

    def _wait(self, key, limit: int, now: float) -> float:
        count = self._counts.get(key)
        if count is None or limit <= 0:
            return 0.0
        if count.locked_until > now:
            return count.locked_until - now
        self._expire(count, now)
        if len(count.failures) + count.pending >= limit:     # the limit is reached by guesses in flight
            return 1.0
        return 0.0

    def _expire(self, count: _Count, now: float) -> None:
        while count.failures and count.failures[0] <= now - self.window:
            count.failures.popleft()

    def _count(self, key) -> _Count:
        count = self._counts.get(key)
        if count is None:
            count = self._counts[key] = _Count()
            while len(self._counts) > self.max_keys:
                self._counts.popitem(last=False)
        else:
            self._counts.move_to_end(key)
        return count


def retry_text(wait: float) -> str:
    return f"Authentication failure: too many failed logins; try again in {math.ceil(wait)} s"
