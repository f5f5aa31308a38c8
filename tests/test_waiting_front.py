"""keyard's ASGI app (``keyard serve``): blocking queries parked on the event loop.

Called in process with ASGI messages, over the memory store (no server, no thread held).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from keyard.app import create_asgi_app
from keyard.model import DEFAULT_NAMESPACE, Registration
from keyard.server.waiting import WaitingFront
from keyard.stores.memory import MemoryStore


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
