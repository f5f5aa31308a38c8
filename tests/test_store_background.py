"""keyard.stores.background: the thread, backoff and per-process slot the stores' caches use."""

from __future__ import annotations

import os
import threading
import time

import pytest

from keyard.stores.background import BackgroundThread, Backoff, PerProcess, process_id


def test_backoff_doubles_from_the_first_pause_to_the_cap_and_resets() -> None:
    backoff = Backoff(0.05, 1.0)
    assert [backoff.next() for _ in range(7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.failures == 7
    backoff.reset()
    assert (backoff.failures, backoff.next()) == (0, 0.05)
    assert Backoff(0.1, 1.0).next() == 0.1
    many = Backoff(0.1, 1.0)
    assert max(many.next() for _ in range(2000)) == 1.0  # no overflow however long it fails


def test_the_process_id_is_the_child_s_own_after_a_fork() -> None:
    assert process_id() == os.getpid()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: tell whether it sees its own id, then leave at once
        os.write(write, b"1" if process_id() == os.getpid() != os.getppid() else b"0")
        os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 1) == b"1"
    finally:
        os.close(read)
        os.waitpid(child, 0)
    assert process_id() == os.getpid()


def test_a_background_thread_starts_once_is_a_daemon_and_stops_within_the_bound() -> None:
    runs: list[int] = []
    background: BackgroundThread

    def run() -> None:
        runs.append(1)
        while not background.wait(10):
            pass

    background = BackgroundThread(run, "keyard-test-background")
    assert background.owned and not background.alive
    background.start()
    background.start()
    assert background.thread is not None and background.thread.daemon
    assert background.thread.name == "keyard-test-background"
    started = time.monotonic()
    background.stop(wait=5)
    assert time.monotonic() - started < 5
    assert not background.alive and runs == [1]


def test_stop_waits_no_longer_than_told_for_a_thread_that_does_not_end() -> None:
    release = threading.Event()
    background = BackgroundThread(lambda: release.wait(10) and None, "keyard-test-stuck")
    background.start()
    started = time.monotonic()
    background.stop(wait=0.1)
    assert time.monotonic() - started < 2 and background.alive
    release.set()


def test_a_per_process_slot_makes_its_value_once_and_pop_forgets_it() -> None:
    slot: PerProcess[object] = PerProcess()
    assert slot.here() is None
    made = slot.get(object)
    assert slot.get(object) is made and slot.here() is made
    assert slot.pop() is made and slot.here() is None and slot.pop() is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_never_sees_its_parents_value() -> None:
    slot: PerProcess[object] = PerProcess()
    parent = slot.get(object)
    pid = os.fork()
    if pid == 0:
        ok = slot.here() is None and slot.pop() is None
        child = slot.get(object)
        os._exit(0 if ok and child is not parent and slot.here() is child else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert slot.here() is parent
