"""Mutex: the memory tier's lock, whose uncontended acquire and release cost a fifth of ``threading.Lock``'s.

Why: every write (and an lfu get-hit) takes the lock, and on CPython 3.11 ``Lock.acquire()`` parses keyword
arguments: an acquire/release pair costs about 80 ns, a sixth of an evicting ``set``. Here the lock is a
one-item list: whoever pops the item holds the lock, and putting it back releases it. ``list.pop()`` and
``list.append()`` are single C calls, atomic under the GIL, and cost about 17 ns a pair. Only a thread that finds the list empty pays for more: it queues a
private ``threading.Lock`` as its gate and sleeps on it (no spinning), and a release that sees a queued gate
opens it.

Hot paths inline both halves::

    try:
        token.pop()              # acquire
    except IndexError:
        mutex.wait()             # contended: returns holding the lock
    try:
        ...
    finally:
        token.append(True)       # release
        if waiters:
            mutex.wake()

Everything else writes ``with mutex:``. Like ``threading.Lock`` it is not reentrant and not fair (a running
thread may take it before a woken one, which then queues again).

No wake-up is lost: a waiter queues its gate *before* its last try at the token, and a release puts the
token back *before* it looks for gates; so either that try finds the token, or the release finds the gate.
(That argument takes the GIL's one order of all operations; a free-threaded build would need it re-checked.)
"""

from __future__ import annotations

import threading
from collections import deque
from types import TracebackType

__all__ = ["Mutex"]

_Gate = threading.Lock  # what a waiter sleeps on (a name of its own, so tests can interrupt the sleep)


class Mutex:
    """A non-reentrant lock; see the module docstring for the inlined form of acquire and release."""

    __slots__ = ("token", "waiters")

    def __init__(self) -> None:
        self.token: list[bool] = [True]  # holds True while the lock is free
        self.waiters: deque[threading.Lock] = deque()  # the gates of the threads asleep, first come first

    def wait(self) -> None:
        """Block until this thread holds the lock (after its ``token.pop()`` found it taken)."""
        gate = _Gate()
        gate.acquire()  # held: the thread sleeps on it until a release opens it
        while True:
            self.waiters.append(gate)
            try:
                self.token.pop()
            except IndexError:
                pass
            else:
                try:
                    self.waiters.remove(gate)  # got it without sleeping; a release may already have taken the gate
                except ValueError:
                    pass
                return
            try:
                gate.acquire()  # opened by wake(); then try again (another thread may have been quicker)
            except BaseException:  # e.g. KeyboardInterrupt: leave the queue, pass the wake-up on if we had it
                try:
                    self.waiters.remove(gate)
                except ValueError:
                    self.wake()
                raise

    def wake(self) -> None:
        """Open the gate of the longest-waiting thread, if any (after the token was put back)."""
        try:
            gate = self.waiters.popleft()
        except IndexError:
            return
        gate.release()

    def acquire(self) -> None:
        try:
            self.token.pop()
        except IndexError:
            self.wait()

    def release(self) -> None:
        self.token.append(True)
        if self.waiters:
            self.wake()

    def locked(self) -> bool:
        return not self.token

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
