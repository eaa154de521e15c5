"""Events for :mod:`xenapi.client`: an iterator over event.from and a listener thread, each on a
connection of its own."""
from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from xenapi.client.connections import CONNECTION_ERRORS

if TYPE_CHECKING:
    from xenapi.client.session import Session

log = logging.getLogger(__name__)

EVENT_TIMEOUT = 30.0               # seconds each event.from may wait on the server


class EventStream:
    """An iterator over event.from's records on a connection of its own (a Session's calls
    take turns on one connection, and event.from blocks for up to ``timeout`` seconds).

    ``token`` is the token of the last batch read, to resume from.  ``close()`` (from any
    thread) ends the iteration at once, even in the middle of a wait."""

    def __init__(self, session: Session, classes: list[str], timeout: float, token: str):
        self.session = session
        self.classes = classes
        self.timeout = float(timeout)
        self.token = token
        self._pending: deque[dict] = deque()
        self._closed = False
        # the wait happens on the server: give the socket the poll's length and a margin
        limit = None if session._timeout is None else session._timeout + self.timeout
        self._connection = session._connector.open(limit)

    def __iter__(self) -> "EventStream":
        return self

    def __next__(self) -> dict:
        while not self._pending:
            if self._closed:
                raise StopIteration
            try:
                batch = self.session._call("event.from", (self.classes, self.token, self.timeout),
                                           self._connection)
            except Exception:
                if self._closed:             # close() from another thread cut the call short
                    raise StopIteration from None
                raise
            self.token = batch["token"]
            self._pending.extend(batch["events"])
        return self._pending.popleft()

    def close(self) -> None:
        self._closed = True
        self._connection.abort()
        self._connection.close()

    def __enter__(self) -> "EventStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Listener:
    """The draft's notification listener: ``callback(event)`` for each event, on thread
    ``xenapi-listener``, until ``stop_event`` is set.

    A dropped connection (the server restarting, say) is retried with a growing pause and the
    stream resumes from its last token.  Anything else -- a Failure, or the callback raising --
    ends the listener and is kept in ``error``.  When the listener ends, for whatever reason,
    ``stop_event`` is set, so one Event can stop several listeners and tell when one has ended.
    """

    RETRY_PAUSES = (0.1, 0.5, 1.0, 2.0, 5.0)

    def __init__(self, session: Session, classes: list[str], callback: Callable[[dict], Any],
                 stop_event: threading.Event | None, timeout: float, token: str):
        self.session = session
        self.classes = classes
        self.callback = callback
        self.stop_event = stop_event if stop_event is not None else threading.Event()
        self.timeout = timeout
        self.error: BaseException | None = None
        self._stream = EventStream(session, classes, timeout, token)
        self._stream_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="xenapi-listener", daemon=True)
        self._thread.start()
        threading.Thread(target=self._stop_when_asked, name="xenapi-listener-stop", daemon=True).start()

    @property
    def token(self) -> str:
        return self._stream.token

    def stop(self, timeout: float | None = None) -> None:
        self.stop_event.set()
        self.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        failures = 0
        try:
            while not self.stop_event.is_set():
                try:
                    if failures:
                        self._reopen()
                    for event in self._stream:
                        failures = 0
                        if self.stop_event.is_set():
                            return
                        self.callback(event)
                    return                               # closed
                except CONNECTION_ERRORS as e:
                    if self.stop_event.is_set():
                        return
                    pause = self.RETRY_PAUSES[min(failures, len(self.RETRY_PAUSES) - 1)]
                    failures += 1
                    log.info("event=listener-retry url=%s reason=%r pause=%.1f", self.session.url, e, pause)
                    if self.stop_event.wait(pause):
                        return
        except Exception as e:
            if self.stop_event.is_set():        # stopped while a call was in flight: not an error
                return
            self.error = e
            log.warning("event=listener-stopped url=%s error=%r", self.session.url, e)
        finally:
            self.stop_event.set()
            with self._stream_lock:
                self._stream.close()

    def _reopen(self) -> None:
        with self._stream_lock:
            old = self._stream
            old.close()
            self._stream = EventStream(self.session, self.classes, self.timeout, old.token)

    def _stop_when_asked(self) -> None:
        self.stop_event.wait()
        with self._stream_lock:
            self._stream.close()
