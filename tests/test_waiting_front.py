"""keyard's ASGI app (``keyard serve``): blocking queries parked on the event loop,
requests to local stores answered on it.

Called in process with ASGI messages, over the memory store (no server, no thread held)
or a sqlite file.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from keyard.app import create_asgi_app
from keyard.model import DEFAULT_NAMESPACE, Registration
from keyard.server.waiting import WaitingFront
from keyard.stores.memory import MemoryStore
from keyard.stores.sqlite import SqliteStore


def scope(path: str, query: str = "", method: str = "GET") -> dict[str, Any]:
    return {
        "type": "http", "method": method, "path": path, "raw_path": path.encode(),
        "query_string": query.encode(), "headers": [(b"host", b"x")], "http_version": "1.1",
        "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000), "scheme": "http",
    }  # fmt: skip


async def request(front: WaitingFront, path: str, query: str = "") -> tuple[int, Any]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await front(scope(path, query), receive, send)
    return sent[0]["status"], json.loads(sent[1]["body"])


async def send_form(front: WaitingFront, method: str, form: str) -> tuple[int, Any, set[str]]:
    """Status, body and the names of the threads that ran the app for a form request."""
    body = form.encode()
    sent: list[dict[str, Any]] = []
    threads: set[str] = set()
    app = front.app

    def noting(env: dict[str, Any], start_response: Any) -> Any:
        threads.add(threading.current_thread().name)
        return app(env, start_response)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    request_scope = scope("/keyard", method=method)
    request_scope["headers"] += [
        (b"content-type", b"application/x-www-form-urlencoded"),
        (b"content-length", str(len(body)).encode()),
    ]
    front.app = noting
    try:
        await front(request_scope, receive, send)
    finally:
        front.app = app
    return sent[0]["status"], json.loads(sent[1]["body"]), threads


def register(front: WaitingFront, location: str) -> None:
    front.parked.registry.register(Registration(DEFAULT_NAMESPACE, "web", "1", location))


def test_watchers_park_without_a_thread_and_all_wake_at_one_change_with_its_index() -> None:
    async def scenario() -> None:
        front = create_asgi_app({"store_type": "simple"}, store=MemoryStore(), threads=1)
        register(front, "a")
        _, state = await request(front, "/keyard/services/web")
        index = state["index"]
        watchers = [
            asyncio.ensure_future(request(front, "/keyard/services/web", f"index={index}"))
            for _ in range(50)
        ]
        await asyncio.sleep(0.2)
        assert front.parked.count() == 50 and not any(w.done() for w in watchers)
        register(front, "b")
        answers = await asyncio.wait_for(asyncio.gather(*watchers), 5)
        for status, body in answers:
            assert status == 200
            assert body["index"] > index
            assert sorted(i["location"] for i in body["instances"]) == ["a", "b"]
        assert front.parked.count() == 0

    asyncio.run(scenario())


def test_a_bad_or_stale_index_is_answered_at_once_and_wait_runs_out() -> None:
    async def scenario() -> None:
        front = create_asgi_app({"store_type": "simple"}, store=MemoryStore(), threads=1)
        status, body = await request(front, "/keyard/services/web", "index=x")
        assert status == 400 and "index" in body["description"]
        status, body = await request(front, "/keyard/services/web", "index=1&wait=1h")
        assert status == 400 and "wait" in body["description"]
        register(front, "a")
        status, body = await request(front, "/keyard/services", "index=1")
        assert status == 200 and body["index"] > 1  # another index: at once
        current = body["index"]
        status, body = await asyncio.wait_for(
            request(front, "/keyard/services", f"index={current}&wait=200ms"), 5
        )
        assert (status, body["index"]) == (200, current)

    asyncio.run(scenario())


def test_a_repeated_lookup_is_answered_by_the_front_until_a_write() -> None:
    async def scenario() -> None:
        front = create_asgi_app({"store_type": "simple"}, store=MemoryStore(), threads=1)
        assert front.kept is not None
        register(front, "a")
        calls = 0
        app = front.app

        def counting(env: dict[str, Any], start_response: Any) -> Any:
            nonlocal calls
            calls += 1
            return app(env, start_response)

        front.app = counting
        for _ in range(5):
            assert await request(front, "/keyard", "service_name=web") == (200, {"result": ["a"]})
        assert calls == 1  # the four after the first: the front's kept answer
        register(front, "b")
        assert await request(front, "/keyard", "service_name=web") == (
            200, {"result": ["a", "b"]})  # fmt: skip
        assert calls == 2
        # A choice is never kept: each is picked afresh.
        for _ in range(3):
            await request(front, "/keyard", "service_name=web&load_balancer_strategy=random")
        assert calls == 5

    asyncio.run(scenario())


def test_behind_the_front_the_app_keeps_only_choices_whole() -> None:
    async def scenario() -> None:
        front = create_asgi_app({"store_type": "simple"}, store=MemoryStore(), threads=1)
        register(front, "a")
        await request(front, "/keyard", "service_name=web")
        await request(front, "/keyard", "service_name=web&load_balancer_strategy=random")
        assert front.kept is not None and len(front.kept._kept) == 1  # the lookup
        inner = front.app.kept  # type: ignore[attr-defined]
        assert inner is not None and [key[2] for key in inner._kept] == [
            "service_name=web&load_balancer_strategy=random"
        ]

    asyncio.run(scenario())


def test_the_front_keeps_no_answer_where_headers_do_not_say_who_asks() -> None:
    jwt = {"auth": {"mode": ["jwt", "trusted"], "jwt_secret": "x" * 32}}
    for config in (jwt, {"require_https": True}):
        front = create_asgi_app({"store_type": "simple", **config}, store=MemoryStore())
        assert front.kept is None, config


def test_writes_to_sqlite_run_on_the_loop_and_in_a_thread_when_another_process_writes(
    tmp_path: Path,
) -> None:
    """A write waiting for another process's lock holds up no lookup, and is made once."""
    path = tmp_path / "registry.db"
    loop_thread = threading.current_thread().name

    async def scenario() -> None:
        front = create_asgi_app(
            {"store_type": "sqlite"}, store=SqliteStore(path, timeout=5.0), threads=2
        )
        form = "service_name=web&version=1&location="
        # This process's first write opens its connection, which may wait: tried on the
        # loop, then made in a thread, once (new: 201).
        status, _, ran_in = await send_form(front, "POST", form + "a")
        assert status == 201 and loop_thread in ran_in and len(ran_in) == 2
        status, _, ran_in = await send_form(front, "PUT", form + "a")
        assert (status, ran_in) == (200, {loop_thread})  # on the loop, the thread hop saved
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # another process is writing, for a while
            waiting = asyncio.ensure_future(send_form(front, "POST", form + "b"))
            await asyncio.sleep(0.3)
            assert not waiting.done()
            lookup = await asyncio.wait_for(request(front, "/keyard", "service_name=web"), 2)
            assert lookup == (200, {"result": ["a"]})  # the loop went on meanwhile
            blocker.execute("COMMIT")
            status, _, ran_in = await asyncio.wait_for(waiting, 5)
        finally:
            blocker.close()
        # Tried on the loop, then made once, in a thread: new (201), not a refresh.
        assert status == 201 and loop_thread in ran_in and len(ran_in) == 2
        assert await request(front, "/keyard", "service_name=web") == (
            200, {"result": ["a", "b"]})  # fmt: skip
        front.parked.registry.store.close()

    asyncio.run(scenario())
