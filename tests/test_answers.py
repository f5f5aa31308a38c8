"""Kept lookup answers (keyard.answers) through the /keyard API: fast, and never stale.

A kept answer must be given back byte for byte as a fresh one, and never once a
write (of this process or another on the same store) or an expiry has changed it.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import Counter
from pathlib import Path

import pytest
import webtest

from keyard.answers import KEPT_ANSWERS
from keyard.app import create_app
from keyard.stores.base import Store
from keyard.stores.etcd import EtcdStore
from keyard.stores.memory import MemoryStore
from keyard.stores.redis import RedisStore
from keyard.stores.sqlite import SqliteStore
from keyard.testing.store_contract import make
from tests.conftest import FakeClock
from tests.etcd_server import unique_base_path
from tests.test_store_etcd_cache import cached_store


def _lookup_answers(app: webtest.TestApp, query: str = "service_name=web") -> bytes:
    return app.get(f"/keyard?{query}").body


@pytest.fixture(params=["simple", "sqlite"])
def store_and_path(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[object, Path]:
    path = tmp_path / "registry.db"
    store = MemoryStore() if request.param == "simple" else SqliteStore(path)
    yield store, path
    store.close()


@pytest.fixture
def api(store_and_path: tuple[object, Path], clock: FakeClock) -> webtest.TestApp:
    store, _ = store_and_path
    return webtest.TestApp(create_app({}, store=store, clock=clock))


def _register(app: webtest.TestApp, location: str, **fields: object) -> None:
    app.post_json("/keyard", {"service_name": "web", "location": location, **fields})


def _resource(app: webtest.TestApp) -> object:
    return app.app._router.find("/keyard")[0]


def test_a_repeated_lookup_answers_the_same_bytes_from_what_was_kept(
    api: webtest.TestApp,
) -> None:
    _register(api, "http://a", ttl=60)
    _register(api, "http://b", ttl=60)
    first = api.get("/keyard?service_name=web")
    api.get("/keyard?service_name=web")  # sqlite's first read opens what tells changes
    kept = _resource(api).answers._kept  # type: ignore[attr-defined]
    assert len(kept) == 1
    again = api.get("/keyard?service_name=web")
    assert again.body == first.body == b'{"result": ["http://a", "http://b"]}'
    assert again.headers["Content-Type"] == first.headers["Content-Type"] == "application/json"
    assert again.headers["Content-Length"] == first.headers["Content-Length"]


def test_every_write_shows_at_once(api: webtest.TestApp) -> None:
    _register(api, "http://a")
    assert _lookup_answers(api) == b'{"result": ["http://a"]}'
    _register(api, "http://b")
    assert _lookup_answers(api) == b'{"result": ["http://a", "http://b"]}'
    api.delete("/keyard", {"service_name": "web", "location": "http://a"})
    assert _lookup_answers(api) == b'{"result": ["http://b"]}'
    instance_id = api.get("/keyard/services/web").json["instances"][0]["instance_id"]
    api.put_json(f"/keyard/services/web/instances/{instance_id}/status", {"status": "DOWN"})
    assert _lookup_answers(api) == b'{"result": []}'
    api.delete(f"/keyard/services/web/instances/{instance_id}/status")
    assert _lookup_answers(api) == b'{"result": ["http://b"]}'
    _register(api, "http://b", tags=["canary"])
    assert _lookup_answers(api, "service_name=web&tag=canary") == b'{"result": ["http://b"]}'
    _register(api, "http://b", tags=[])
    assert _lookup_answers(api, "service_name=web&tag=canary") == b'{"result": []}'


def test_an_expiry_shows_at_once_though_nothing_was_written(
    api: webtest.TestApp, clock: FakeClock
) -> None:
    _register(api, "http://brief", ttl=5)
    _register(api, "http://lasting", ttl=60)
    assert _lookup_answers(api) == b'{"result": ["http://brief", "http://lasting"]}'
    clock.advance(4.9)
    assert _lookup_answers(api) == b'{"result": ["http://brief", "http://lasting"]}'
    clock.advance(0.2)
    assert _lookup_answers(api) == b'{"result": ["http://lasting"]}'


def test_a_clock_that_went_back_is_not_answered_from_a_later_read(
    api: webtest.TestApp, store_and_path: tuple[object, Path], clock: FakeClock
) -> None:
    _register(api, "http://brief", ttl=5)
    clock.advance(10)
    assert _lookup_answers(api) == b'{"result": []}'
    clock.advance(-8)
    fresh = webtest.TestApp(create_app({}, store=store_and_path[0], clock=clock))
    assert _lookup_answers(api) == _lookup_answers(fresh)


def test_a_lookup_with_a_body_is_not_answered_from_the_query_alone(
    api: webtest.TestApp,
) -> None:
    _register(api, "http://one", version="1")
    _register(api, "http://two", version="2")
    assert _lookup_answers(api) == b'{"result": ["http://one", "http://two"]}'
    with_body = api.request(
        "/keyard?service_name=web",
        method="GET",
        body=b"version=2",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert with_body.json == {"result": ["http://two"]}


def test_choices_from_kept_candidates_still_spread_and_take_turns(api: webtest.TestApp) -> None:
    for location in ("http://a", "http://b", "http://c"):
        _register(api, location)
    picked = Counter(
        api.get("/keyard?service_name=web&load_balancer_strategy=random").json["result"]
        for _ in range(150)
    )
    assert set(picked) == {"http://a", "http://b", "http://c"}
    turns = [
        api.get("/keyard?service_name=web&load_balancer_strategy=round_robin").json["result"]
        for _ in range(6)
    ]
    assert turns[:3] == turns[3:] and sorted(turns[:3]) == ["http://a", "http://b", "http://c"]
    _register(api, "http://a", weight=0)
    _register(api, "http://b", weight=0)
    weighted = {
        api.get("/keyard?service_name=web&load_balancer_strategy=weighted").json["result"]
        for _ in range(30)
    }
    assert weighted == {"http://c"}
    _register(api, "http://c", weight=0)
    response = api.get("/keyard?service_name=web&load_balancer_strategy=weighted", status=404)
    assert "weight" in response.json["description"]


def test_a_kept_weighted_choice_keeps_the_proportions_and_never_picks_weight_zero(
    api: webtest.TestApp,
) -> None:
    # Weight 0 first, between and last: the kept running totals must skip each one.
    for location, weight in (("http://a", 0), ("http://b", 300), ("http://c", 0)):
        _register(api, location, weight=weight)
    _register(api, "http://d", weight=100)
    _register(api, "http://e", weight=0)
    picked = Counter(
        api.get("/keyard?service_name=web&load_balancer_strategy=weighted").json["result"]
        for _ in range(2000)
    )
    assert set(picked) == {"http://b", "http://d"}
    assert 2.4 < picked["http://b"] / picked["http://d"] < 3.7


def test_an_unknown_strategy_or_no_instance_is_an_error_every_time(
    api: webtest.TestApp,
) -> None:
    for _ in range(2):
        api.get("/keyard?service_name=web&load_balancer_strategy=random", status=404)
        api.get("/keyard?service_name=web&load_balancer_strategy=nope", status=400)


def test_distinct_query_strings_keep_a_bounded_number_of_answers(api: webtest.TestApp) -> None:
    _register(api, "http://a")
    for n in range(KEPT_ANSWERS + 10):
        api.get(f"/keyard?service_name=web&version={n}")
    assert len(_resource(api).answers._kept) <= KEPT_ANSWERS  # type: ignore[attr-defined]
    assert len(api.app.kept._kept) <= KEPT_ANSWERS  # type: ignore[attr-defined]


# -- whole answers, kept by the app itself (keyard.app.App) --------------------------


def test_the_app_keeps_whole_answers_apart_by_namespace_and_accept(
    store_and_path: tuple[Store, Path], clock: FakeClock
) -> None:
    store, _ = store_and_path
    app = create_app({"auth": {"mode": "trusted"}}, store=store, clock=clock)
    api = webtest.TestApp(app)
    for team in ("team-a", "team-b"):
        api.authorization = ("Bearer", team)
        _register(api, f"http://{team}", ttl=60)
    for _ in range(3):  # alternating: neither namespace's kept answer answers the other
        for team in ("team-a", "team-b"):
            api.authorization = ("Bearer", team)
            assert api.get("/keyard?service_name=web").json == {"result": [f"http://{team}"]}
    assert app.kept is not None and len(app.kept._kept) == 2  # type: ignore[attr-defined]
    # The same query and token with an Accept that refuses JSON is refused every time.
    refused = api.get("/keyard?service_name=web", headers={"Accept": "text/html"}, status=406)
    assert "application/json" in refused.json["description"]
    api.authorization = None
    assert api.get("/keyard?service_name=web", status=401).json["title"]
    # A write in one namespace changes its kept answer, not the other's.
    api.authorization = ("Bearer", "team-a")
    _register(api, "http://team-a-2", ttl=60)
    assert api.get("/keyard?service_name=web").json["result"] == [
        "http://team-a",
        "http://team-a-2",
    ]
    api.authorization = ("Bearer", "team-b")
    assert api.get("/keyard?service_name=web").json["result"] == ["http://team-b"]


def test_a_kept_choice_answers_each_pick_with_its_own_length(api: webtest.TestApp) -> None:
    _register(api, "http://a", ttl=60)
    _register(api, "http://a-much-longer-location:8080/path", ttl=60)
    seen = set()
    for _ in range(60):
        answer = api.get("/keyard?service_name=web&load_balancer_strategy=random")
        assert int(answer.headers["Content-Length"]) == len(answer.body)
        seen.add(answer.json["result"])
    assert seen == {"http://a", "http://a-much-longer-location:8080/path"}
    assert api.app.kept is not None and len(api.app.kept._kept) == 1  # type: ignore[attr-defined]


def test_the_app_keeps_no_whole_answer_where_headers_do_not_say_who_asks() -> None:
    jwt = {"auth": {"mode": ["jwt", "trusted"], "jwt_secret": "x" * 32}}
    for config in (jwt, {"require_https": True}):
        assert create_app(config, store=MemoryStore()).kept is None, config  # type: ignore[attr-defined]
    assert create_app({"auth": {"mode": "trusted"}}, store=MemoryStore()).kept is not None  # type: ignore[attr-defined]


# -- another process on the same sqlite file ------------------------------------------


def _writer(path: str, orders: multiprocessing.Queue, done: multiprocessing.Queue) -> None:
    """Another keyard process: registers (or removes) what it is told, then says so."""
    app = webtest.TestApp(create_app({"store_type": "sqlite", "sqlite": {"path": path}}))
    while (order := orders.get(timeout=60)) is not None:
        verb, location = order
        if verb == "add":
            app.post("/keyard", {"service_name": "web", "location": location, "ttl": 300})
        else:
            app.delete("/keyard", {"service_name": "web", "location": location})
        done.put(location)


def test_another_process_s_write_is_seen_by_the_next_lookup(tmp_path: Path) -> None:
    """The bound of the sqlite store's kept answers: none. A write another process has
    committed (its request answered) is in the next lookup of every process."""
    path = str(tmp_path / "registry.db")
    app = webtest.TestApp(create_app({"store_type": "sqlite", "sqlite": {"path": path}}))
    context = multiprocessing.get_context("spawn")
    orders: multiprocessing.Queue = context.Queue()
    done: multiprocessing.Queue = context.Queue()
    writer = context.Process(target=_writer, args=(path, orders, done), daemon=True)
    writer.start()
    try:
        expected: list[str] = []
        for n in range(40):
            assert app.get("/keyard?service_name=web").json["result"] == expected  # kept
            location = f"http://10.0.0.{n}:80"
            orders.put(("add", location))
            assert done.get(timeout=60) == location
            expected = sorted([*expected, location])
            assert app.get("/keyard?service_name=web").json["result"] == expected
            if n % 3 == 2:
                orders.put(("remove", expected[0]))
                done.get(timeout=60)
                expected = expected[1:]
                assert app.get("/keyard?service_name=web").json["result"] == expected
    finally:
        orders.put(None)
        writer.join(timeout=60)
    assert writer.exitcode == 0


def test_the_sqlite_store_tells_changes_by_shared_memory(tmp_path: Path) -> None:
    """The stamp is the WAL index header: there after one read, moved by another
    connection's commit, and unmoved by reads and checkpoints."""
    path = tmp_path / "registry.db"
    reader, writer = SqliteStore(path), SqliteStore(path)
    try:
        reader.lookup("default", "web", None, time.time())
        first = reader.change_stamp("default", "web")
        assert isinstance(first, bytes)
        reader.lookup("default", "web", None, time.time())
        assert reader.change_stamp("default", "web") == first
        writer.put(make(service="other"))
        assert reader.change_stamp("default", "web") != first
    finally:
        reader.close()
        writer.close()


# -- the cache options of redis and etcd ----------------------------------------------


def _cached_stores(kind: str, request: pytest.FixtureRequest) -> tuple[Store, Store]:
    """Two stores with ``cache`` on one server: this process's, and another keyard's."""
    if kind == "redis":
        server = request.getfixturevalue("redis_server")
        options = {"url": server.url, "prefix": request.getfixturevalue("redis_prefix")}
        return (
            RedisStore.from_options({**options, "cache": True}),
            RedisStore.from_options(options),
        )
    endpoint = request.getfixturevalue("etcd_server").endpoint
    base_path = unique_base_path()
    return cached_store(endpoint, base_path), EtcdStore(base_path=base_path, host=endpoint)


@pytest.mark.parametrize("kind", ["redis", "etcd"])
def test_a_cached_store_s_kept_answers_follow_another_process_s_writes(
    kind: str, request: pytest.FixtureRequest
) -> None:
    ours, theirs = _cached_stores(kind, request)
    try:
        app = webtest.TestApp(create_app({}, store=ours))
        other = webtest.TestApp(create_app({}, store=theirs))
        expected: list[str] = []
        for n in range(5):
            location = f"http://10.0.0.{n}:80"
            other.post("/keyard", {"service_name": "web", "location": location, "ttl": 60})
            expected.append(location)
            deadline = time.monotonic() + 5
            while app.get("/keyard?service_name=web").json["result"] != expected:
                assert time.monotonic() < deadline, f"{location} never reached the kept answer"
                time.sleep(0.005)
        # The copy loads a service in the background: until then lookups go to the
        # store itself, and their answers are not kept.
        answers = _resource(app).answers  # type: ignore[attr-defined]
        deadline = time.monotonic() + 5
        while not answers._kept:
            assert time.monotonic() < deadline, "the cached store's answers were never kept"
            assert app.get("/keyard?service_name=web").json["result"] == expected
            time.sleep(0.005)
        other.delete("/keyard", {"service_name": "web", "location": expected[0]})
        deadline = time.monotonic() + 5
        while app.get("/keyard?service_name=web").json["result"] != expected[1:]:
            assert time.monotonic() < deadline, "the removal never reached the kept answer"
            time.sleep(0.005)
    finally:
        ours.close()
        theirs.close()
