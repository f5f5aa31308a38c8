"""Namespaces: two callers never see, change, delete or wake each other's instances.

Through the API (webtest, auth mode trusted: the namespace is the bearer token) on
every store: memory, sqlite, a real Redis and a real etcd, each of those two with and
without its per-process cache. Then the capacity of a namespace, names that must
round-trip exactly, and a walk over the app's whole route table that checks that no
route answers without credentials.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import falcon
import jwt
import pytest
import webtest

from keyard.app import create_app
from keyard.stores import create_store
from keyard.stores.base import Store
from keyard.stores.memory import MemoryStore
from tests.etcd_server import unique_base_path

STORES = ("memory", "sqlite", "redis", "redis-cache", "etcd", "etcd-cache")
A, B = "team-a", "team-b"
LOCATION = "http://10.0.0.7:9000"
SECRET = "a-test-secret-of-at-least-32-bytes-0123456789"


def build_store(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if name == "memory":
        return MemoryStore()
    if name == "sqlite":
        return create_store("sqlite", {"path": str(tmp_path / "registry.db")})
    cache = name.endswith("-cache")
    if name.startswith("redis"):
        from tests.test_store_redis_cache import started_cache

        server = request.getfixturevalue("redis_server")
        prefix = request.getfixturevalue("redis_prefix")
        store = create_store("redis", {"url": server.url, "prefix": prefix, "cache": cache})
        if cache:
            started_cache(store)  # type: ignore[arg-type]
        return store
    endpoint = request.getfixturevalue("etcd_server").endpoint
    if cache:
        from tests.test_store_etcd_cache import cached_store

        return cached_store(endpoint, unique_base_path())
    return create_store("etcd", {"host": endpoint, "base_path": unique_base_path()})


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    built = build_store(request.param, request, tmp_path)
    yield built
    built.close()


@pytest.fixture
def api(store: Store) -> webtest.TestApp:
    return webtest.TestApp(create_app({"auth": {"mode": "trusted"}}, store=store))


def as_(namespace: str) -> dict[str, str]:
    """The bearer header of ``namespace``: its UTF-8 bytes, as a WSGI server gives them."""
    return {"Authorization": ("Bearer " + namespace).encode().decode("latin-1")}


def register(api: webtest.TestApp, namespace: str, **fields: Any) -> Any:
    body = {"service_name": "payments", "version": "2", "location": LOCATION, **fields}
    return api.post_json("/keyard", body, headers=as_(namespace))


def instances(api: webtest.TestApp, namespace: str, service: str = "payments") -> list[Any]:
    answer = api.get(f"/keyard/services/{service}", headers=as_(namespace))
    return answer.json["instances"]


def lookup(api: webtest.TestApp, namespace: str, **query: str) -> Any:
    return api.get(
        "/keyard", {"service_name": "payments", **query}, headers=as_(namespace),
        expect_errors=True,
    ).json  # fmt: skip


# -- isolation, on every store ---------------------------------------------------------


def test_the_same_name_and_location_in_two_namespaces_are_two_instances(
    api: webtest.TestApp,
) -> None:
    assert register(api, A, metadata={"owner": "a"}).status_int == 201
    assert register(api, B, metadata={"owner": "b"}, weight=7).status_int == 201  # new, not 200
    for namespace, owner in ((A, "a"), (B, "b")):
        (record,) = instances(api, namespace)
        assert record["namespace"] == namespace
        assert record["metadata"] == {"owner": owner}
        for _ in range(2):  # the second lookup is answered from what the first kept
            assert lookup(api, namespace) == {"result": [LOCATION]}
        summary = api.get("/keyard/services", headers=as_(namespace)).json["services"]
        assert summary == [{"service_name": "payments", "instances": 1, "up": 1}]
        instance_id = record["instance_id"]
        one = api.get(f"/keyard/services/payments/instances/{instance_id}", headers=as_(namespace))
        assert one.json["metadata"] == {"owner": owner}
    assert lookup(api, "team-c") == {"result": []}
    assert lookup(api, "team-c", load_balancer_strategy="random")["title"] == "Not found"
    assert api.get("/keyard/services", headers=as_("team-c")).json["services"] == []
    assert register(api, A).status_int == 200  # A's own is refreshed, B's untouched
    assert instances(api, B)[0]["weight"] == 7


def test_a_namespace_never_changes_anothers_instances(api: webtest.TestApp) -> None:
    register(api, A, instance_id="a-1", weight=10)
    register(api, B, instance_id="b-1")
    # A heartbeat of the same id in B is B's own instance, registered there.
    heartbeat = api.put_json(
        "/keyard", {"service_name": "payments", "version": "2", "location": "http://b",
                    "instance_id": "a-1", "weight": 99}, headers=as_(B),
    )  # fmt: skip
    assert heartbeat.status_int == 201
    (a_record,) = instances(api, A)
    assert (a_record["location"], a_record["weight"]) == (LOCATION, 10)
    status = "/keyard/services/payments/instances/{}/status"
    put = api.put_json(status.format("b-1"), {"status": "OUT_OF_SERVICE"}, headers=as_(A),
                       expect_errors=True)
    assert put.status_int == 404  # b-1 is not A's
    api.put_json(status.format("a-1"), {"status": "OUT_OF_SERVICE"}, headers=as_(B))
    assert instances(api, A)[0]["status"] == "UP"
    assert {r["instance_id"]: r["status"] for r in instances(api, B)} == {
        "a-1": "OUT_OF_SERVICE", "b-1": "UP",
    }  # fmt: skip
    cleared = api.delete(status.format("b-1"), headers=as_(A), expect_errors=True)
    assert cleared.status_int == 404


def test_a_namespace_never_deletes_anothers_instances(api: webtest.TestApp) -> None:
    register(api, A)
    register(api, A, instance_id="a-only", location="http://a-only")
    register(api, B)
    gone = api.delete(
        "/keyard", {"service_name": "payments", "version": "2", "location": LOCATION},
        headers=as_(B),
    )  # fmt: skip
    assert gone.status_int == 200
    assert instances(api, B) == []
    assert len(instances(api, A)) == 2
    by_id = api.delete("/keyard/services/payments/instances/a-only", headers=as_(B),
                       expect_errors=True)
    assert by_id.status_int == 404
    by_field = api.delete("/keyard", {"service_name": "payments", "instance_id": "a-only"},
                          headers=as_(B), expect_errors=True)
    assert by_field.status_int == 404
    again = api.delete(
        "/keyard", {"service_name": "payments", "version": "2", "location": LOCATION},
        headers=as_(B), expect_errors=True,
    )  # fmt: skip
    assert again.status_int == 404
    assert len(instances(api, A)) == 2


class Watcher:
    """A blocking query in a thread: the answer and how long it took."""

    def __init__(self, api: webtest.TestApp, path: str, namespace: str) -> None:
        self.answer: Any = None
        self.seconds = 0.0

        def run() -> None:
            started = time.monotonic()
            self.answer = api.get(path, headers=as_(namespace))
            self.seconds = time.monotonic() - started

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def wait(self) -> Any:
        self.thread.join(30)
        assert not self.thread.is_alive(), "the blocking query never answered"
        return self.answer


def test_a_namespace_never_wakes_anothers_watchers_nor_moves_their_indexes(
    api: webtest.TestApp,
) -> None:
    register(api, A, instance_id="a-1")
    service = api.get("/keyard/services/payments", headers=as_(A))
    catalog = api.get("/keyard/services", headers=as_(A))
    index, catalog_index = service.json["index"], catalog.json["index"]
    watchers = [
        Watcher(api, f"/keyard/services/payments?index={index}&wait=1500ms", A),
        Watcher(api, f"/keyard/services?index={catalog_index}&wait=1500ms", A),
    ]
    time.sleep(0.2)
    register(api, B, instance_id="a-1")  # the same key but the namespace
    register(api, B, instance_id="b-2", location="http://b-2")
    register(api, B, instance_id="b-3", service_name="billing")
    api.put_json("/keyard/services/payments/instances/a-1/status", {"status": "DOWN"},
                 headers=as_(B))
    api.delete("/keyard/services/payments/instances/b-2", headers=as_(B))
    service_answer, catalog_answer = (watcher.wait() for watcher in watchers)
    for watcher in watchers:
        assert watcher.seconds >= 1.4, "woken by another namespace's writes"
    assert service_answer.json["index"] == index
    assert [r["instance_id"] for r in service_answer.json["instances"]] == ["a-1"]
    assert service_answer.json["instances"][0]["status"] == "UP"
    assert catalog_answer.json["index"] == catalog_index
    assert api.get("/keyard/services/payments", headers=as_(A)).json["index"] == index
    # ... while A's own write wakes A's watcher at once.
    woken = Watcher(api, f"/keyard/services/payments?index={index}&wait=20", A)
    time.sleep(0.2)
    register(api, A, instance_id="a-2", location="http://a-2")
    assert woken.wait().json["index"] != index
    assert woken.seconds < 10


# -- names that must round-trip --------------------------------------------------------

NAMES = (
    "a", "a/b", "a:b", "a:b:c", "/", ":", "a%2Fb", "..", "a b", "ünïcødé/名前:1", "🦀",
    "default", "n" * 128,
)  # fmt: skip


def test_any_namespace_name_round_trips_exactly_on_every_store(api: webtest.TestApp) -> None:
    for namespace in NAMES:
        register(api, namespace, instance_id="i", metadata={"ns": namespace})
    for namespace in NAMES:
        (record,) = instances(api, namespace)
        assert record["namespace"] == namespace
        assert record["metadata"] == {"ns": namespace}
        assert lookup(api, namespace) == {"result": [LOCATION]}


def test_a_namespace_and_a_service_name_never_run_together(api: webtest.TestApp) -> None:
    """``a:b`` + ``c`` and ``a`` + ``b:c`` (or with ``/``) are four different services."""
    pairs = (("a:b", "c"), ("a", "b:c"), ("a/b", "c"), ("a", "b/c"))
    for namespace, service in pairs:
        register(api, namespace, service_name=service, location=f"http://{namespace}|{service}")
    for namespace, service in pairs:
        found = api.get("/keyard", {"service_name": service}, headers=as_(namespace)).json
        assert found == {"result": [f"http://{namespace}|{service}"]}
    services = api.get("/keyard/services", headers=as_("a")).json["services"]
    assert [s["service_name"] for s in services] == ["b/c", "b:c"]


# -- capacity, on every store ----------------------------------------------------------


def test_a_full_namespace_refuses_new_instances_only(store: Store) -> None:
    api = webtest.TestApp(
        create_app({"auth": {"mode": "trusted"}, "namespace_capacity": 2}, store=store)
    )
    register(api, A, instance_id="1")
    register(api, A, instance_id="2", ttl=1)
    refused = api.post_json(
        "/keyard", {"service_name": "other", "location": "x", "instance_id": "3"},
        headers=as_(A), expect_errors=True,
    )  # fmt: skip
    assert refused.status_int == 403
    assert refused.json["title"] == "Namespace full"
    assert "holds 2 live instance(s) and its capacity (namespace_capacity) is 2" in (
        refused.json["description"]
    )
    assert A not in refused.text  # the namespace may be a credential: never echoed
    # Re-registering, heartbeating and moving an existing instance are never refused.
    assert register(api, A, instance_id="1").status_int == 200
    assert api.put_json("/keyard", {"service_name": "payments", "version": "2",
                                    "location": LOCATION, "instance_id": "1"},
                        headers=as_(A)).status_int == 200
    assert register(api, A, instance_id="1", location="http://moved").status_int == 200
    # Another namespace has room of its own.
    assert register(api, B, instance_id="1").status_int == 201
    # A deregistration frees room ...
    api.delete("/keyard/services/payments/instances/1", headers=as_(A))
    assert register(api, A, instance_id="4").status_int == 201
    assert register_expect(api, A, instance_id="5").status_int == 403
    # ... and so does an expiry (instance 2's TTL is 1 s).
    time.sleep(1.2)
    assert register(api, A, instance_id="5").status_int == 201


def register_expect(api: webtest.TestApp, namespace: str, **fields: Any) -> Any:
    body = {"service_name": "payments", "version": "2", "location": LOCATION, **fields}
    return api.post_json("/keyard", body, headers=as_(namespace), expect_errors=True)


# -- no route answers without credentials ----------------------------------------------


def routes(app: falcon.App) -> list[tuple[str, list[str]]]:
    """Every route of the app's router: its URI template and its resource's responders
    (the methods it has an ``on_<method>`` for)."""
    found: list[tuple[str, list[str]]] = []

    def walk(nodes: list[Any]) -> None:
        for node in nodes:
            if node.resource is not None:
                responders = [
                    method for method in node.method_map
                    if hasattr(node.resource, f"on_{method.lower()}")
                ]  # fmt: skip
                found.append((node.uri_template, sorted(responders)))
            walk(node.children)

    walk(app._router._roots)
    return found


def filled(template: str) -> str:
    """A path for ``template``: each ``{field}`` replaced by a name."""
    import re

    return re.sub(r"\{[^}]+\}", "x", template)


AUTH_MODES = {
    "trusted": {"mode": "trusted"},
    "jwt": {"mode": "jwt", "jwt_secret": SECRET},
    "jwt-then-trusted": {"mode": ["jwt", "trusted"], "jwt_secret": SECRET},
}


@pytest.mark.parametrize("mode", sorted(AUTH_MODES))
def test_no_route_of_any_tree_answers_without_credentials(mode: str) -> None:
    app = create_app({"auth": AUTH_MODES[mode]}, store=MemoryStore())
    api = webtest.TestApp(app)
    table = routes(app)
    templates = {template for template, _ in table}
    assert {"/keyard", "/keyard/services", "/keyard/services/{service_name}"} <= templates
    assert len(table) >= 5
    assert dict(table)["/keyard"] == ["DELETE", "GET", "HEAD", "POST", "PUT"]
    methods = 0
    for template, answered in table:
        assert answered, template
        # Its responders, and falcon's own answers (OPTIONS, a method it does not allow).
        for method in (*answered, "OPTIONS", "PATCH"):
            answer = api.request(filled(template), method=method, expect_errors=True)
            assert answer.status_int == 401, (method, template, answer.status)
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
            if method != "HEAD" and answer.body:  # in the tree's own error format
                assert b"token" in answer.body.lower(), (method, template, answer.body)
            methods += 1
    assert methods >= 5 + 5 * 2
    # A bad credential is no better than none, and a path no tree serves is refused too.
    for value in ("Bearer ", "Basic !!", "Digest x"):
        headers = {"Authorization": value}
        assert api.get("/keyard/services", headers=headers, expect_errors=True).status_int == 401
    assert api.get("/not-served", expect_errors=True).status_int == 401
    # With credentials the same routes answer.
    token = "team-a" if mode != "jwt" else jwt.encode({"namespace": "team-a"}, SECRET)
    assert api.get("/keyard/services", headers=as_(token)).status_int == 200
