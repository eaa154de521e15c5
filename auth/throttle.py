"""Failed-login throttling, per user name and per source address.

After ``per_user`` failures for one user name (whether or not the user exists, so the throttle
tells nothing about which names are real), or ``per_source`` failures from one address, within
``window`` seconds, that name or address is locked for ``lockout`` seconds.  While locked, a login
is refused at once with SESSION_AUTHENTICATION_FAILED and a message saying when to retry, and the
password is not checked: a correct password is refused too, so guessing during a lock learns
nothing.

A success clears the user name's failures.  It does not clear the address's: otherwise an attacker
holding one valid account could log into it between guesses at other accounts and never be
locked.  An address's failures simply age out of the window.

The guarantee against guessing: for each name and each address, the recent failures plus the
checks still under way (scrypt takes ~50 ms) never exceed the limit, so a burst of concurrent
guesses cannot overrun it.  A check that would go past the limit waits its turn instead of being
refused: it waits (at most ``max_wait`` seconds) for a check under way to end, and looks again.
A check that succeeds frees its place without counting as a failure, so eight, thirty-two or a
hundred concurrent logins with the right password all get in (Ansible's forks, Xen Orchestra and
parallel scripts log in at once); checks that fail lock the name or address, and every waiter is
then refused at once.  Only a wait that outlasts ``max_wait`` (checks stuck far longer than any
password check takes) is refused as busy.

A limit of 0 turns that half of the throttle off.  The tables are bounded (``max_keys``, oldest
forgotten first) so a flood of made-up names cannot exhaust memory.  The injected ``clock`` drives
windows and lockouts; waiting for a turn is real time (a ``threading.Condition``).
"""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import NamedTuple


@dataclass
class _Count:
    failures: deque = field(default_factory=deque)   # times of recent failures
    pending: int = 0                                 # checks admitted and not yet done
    locked_until: float = 0.0


class Refusal(NamedTuple):
    """Why a login may not have its password checked now, and when to try again."""
    wait: float              # seconds
    busy: bool = False       # True: no turn came within max_wait; False: locked

    @property
    def text(self) -> str:
        why = "too many logins in progress" if self.busy else "too many failed logins"
        return f"Authentication failure: {why}; try again in {math.ceil(self.wait)} s"


class LoginThrottle:
    def __init__(self, per_user: int = 5, per_source: int = 20, window: float = 300.0, lockout: float = 60.0,
                 clock=time.monotonic, max_keys: int = 100_000, max_wait: float = 30.0):
        self.per_user = per_user
        self.per_source = per_source
        self.window = window
        self.lockout = lockout
        self.clock = clock
        self.max_keys = max_keys
        self.max_wait = max_wait
        self.waiting = 0                                 # attempts waiting for a turn now
        self._counts: OrderedDict[tuple[str, str], _Count] = OrderedDict()
        self._lock = threading.Lock()
        self._turn = threading.Condition(self._lock)    # notified whenever a check ends

    def attempt(self, user: str, source: str) -> Refusal | None:
        """None: go ahead (a check is now pending; call :meth:`done` after it).  Otherwise the
        refusal; nothing is pending then.  Waits while the limit is taken by checks under way."""
        keys = self._keys(user, source)
        deadline = time.monotonic() + self.max_wait
        with self._lock:
            while True:
                now = self.clock()
                locked = max(self._locked(key, limit, now) for key, limit in keys)
                if locked > 0:
                    return Refusal(locked)
                if not any(self._full(key, limit, now) for key, limit in keys):
                    for key, _ in keys:
                        self._count(key).pending += 1
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    return Refusal(1.0, busy=True)
                self.waiting += 1
                try:
                    self._turn.wait(left)
                finally:
                    self.waiting -= 1

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
            self._turn.notify_all()          # a place is free, or a lock began: waiters look again

    def _keys(self, user: str, source: str):
        return (("user", user), self.per_user), (("source", source), self.per_source)

    def _locked(self, key, limit: int, now: float) -> float:
        count = self._counts.get(key)
        if count is None or limit <= 0 or count.locked_until <= now:
            return 0.0
        return count.locked_until - now

    def _full(self, key, limit: int, now: float) -> bool:
        """The limit is taken by recent failures and checks under way: one more could overrun it."""
        count = self._counts.get(key)
        if count is None or limit <= 0:
            return False
        self._expire(count, now)
        return len(count.failures) + count.pending >= limit

    def _expire(self, count: _Count, now: float) -> None:
        while count.failures and count.failures[0] <= now - self.window:
            count.failures.popleft()

    def _count(self, key) -> _Count:
        count = self._counts.get(key)
        if count is None:
            count = self._counts[key] = _Count()
            while len(self._counts) > self.max_keys:      # the oldest idle entry (pending ones keep the bound)
                idle = next((k for k, c in self._counts.items() if not c.pending), None)
                if idle is None:
                    break
                del self._counts[idle]
        else:
            self._counts.move_to_end(key)
        return count
