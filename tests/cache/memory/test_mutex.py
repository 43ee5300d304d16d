"""The memory tier's Mutex: mutual exclusion with its inlined fast halves, sleeping waiters, no lost wake-up."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from llamahome.cache.memory._mutex import Mutex


def _hold(mutex: Mutex) -> None:
    # The form the hot paths inline.
    try:
        mutex.token.pop()
    except IndexError:
        mutex.wait()


def _drop(mutex: Mutex) -> None:
    mutex.token.append(True)
    if mutex.waiters:
        mutex.wake()


def test_a_waiter_sleeps_until_the_holder_releases() -> None:
    mutex = Mutex()
    _hold(mutex)
    got = threading.Event()

    def waiter() -> None:
        with mutex:
            got.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    deadline = time.monotonic() + 5
    while not mutex.waiters and time.monotonic() < deadline:
        time.sleep(0.001)
    assert len(mutex.waiters) == 1 and not got.is_set()  # queued on its gate, not spinning, not through
    _drop(mutex)
    thread.join(5)
    assert got.is_set() and not mutex.locked() and not mutex.waiters


def test_many_threads_never_overlap_and_no_wake_up_is_lost() -> None:
    mutex = Mutex()
    inside = [0]
    overlaps = [0]
    count = [0]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, inside the critical section too
    try:

        def worker(fast: bool) -> None:
            for _ in range(3000):
                if fast:
                    _hold(mutex)
                else:
                    mutex.acquire()
                try:
                    inside[0] += 1
                    if inside[0] != 1:
                        overlaps[0] += 1
                    value = count[0]
                    time.sleep(0) if value % 97 == 0 else None  # sometimes give the GIL away while holding it
                    count[0] = value + 1
                    inside[0] -= 1
                finally:
                    if fast:
                        _drop(mutex)
                    else:
                        mutex.release()

        threads = [threading.Thread(target=worker, args=(i % 2 == 0,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert not any(thread.is_alive() for thread in threads)  # a lost wake-up would leave one asleep
    finally:
        sys.setswitchinterval(old)
    assert overlaps[0] == 0 and count[0] == 8 * 3000
    assert not mutex.locked() and not mutex.waiters


def test_an_interrupted_waiter_leaves_the_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    import llamahome.cache.memory._mutex as mutex_module

    class InterruptedGate:
        """A gate whose sleep is interrupted (as by Ctrl-C)."""

        def __init__(self) -> None:
            self.calls = 0

        def acquire(self) -> bool:
            self.calls += 1
            if self.calls > 1:  # the first acquire closes the gate; the second is the sleep
                raise KeyboardInterrupt
            return True

        def release(self) -> None:
            pass

    monkeypatch.setattr(mutex_module, "_Gate", InterruptedGate)
    mutex = Mutex()
    _hold(mutex)
    with pytest.raises(KeyboardInterrupt):
        mutex.wait()
    assert not mutex.waiters and mutex.locked()  # not queued any more; the holder still holds it
    _drop(mutex)
    assert not mutex.locked()
