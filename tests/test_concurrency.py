"""The memory store behind the app under concurrent writers and readers (gthread workers)."""

from __future__ import annotations

import threading

import webtest

from keyard.app import create_app
from keyard.stores.memory import MemoryStore


def test_concurrent_writers_and_readers_see_consistent_results() -> None:
    api = webtest.TestApp(create_app({}, store=MemoryStore()))
    writers, per_writer, readers = 6, 40, 3
    errors: list[str] = []
    done = threading.Event()

    def write(w: int) -> None:
        for n in range(per_writer):
            location = f"http://127.0.0.1:{w}/{n}"
            response = api.post_json(
                "/keyard", {"service_name": "svc", "location": location}, expect_errors=True
            )
            if response.status_int != 201:
                errors.append(f"POST {location}: {response.status}")
            if n % 2:
                api.put_json("/keyard", {"service_name": "svc", "location": location})

    def read() -> None:
        previous = 0
        for _ in range(2000):
            if done.is_set():
                return
            result = api.get("/keyard?service_name=svc").json["result"]
            if result != sorted(result) or len(set(result)) != len(result):
                errors.append(f"inconsistent lookup: {result[:5]}...")
            if len(result) < previous:
                errors.append(f"lookup shrank from {previous} to {len(result)}")
            previous = len(result)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    threads += [threading.Thread(target=read) for _ in range(readers)]
    for thread in threads:
        thread.start()
    for thread in threads[:writers]:
        thread.join(timeout=60)
    done.set()
    for thread in threads[writers:]:
        thread.join(timeout=60)

    assert errors == []
    result = api.get("/keyard?service_name=svc").json["result"]
    assert len(result) == writers * per_writer
