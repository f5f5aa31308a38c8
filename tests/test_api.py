"""The /keyard resource through webtest, on the memory store and a fake clock."""

from __future__ import annotations

import io
import json

import falcon
import falcon.testing
import pytest
import webtest

from keyard.api.request_fields import MAX_BODY_BYTES
from keyard.app import create_app
from keyard.stores.memory import MemoryStore
from tests.conftest import FakeClock

LOCATION = "http://127.0.0.1:8001"


@pytest.fixture
def api(clock: FakeClock) -> webtest.TestApp:
    return webtest.TestApp(create_app({}, store=MemoryStore(), clock=clock))


def register(api: webtest.TestApp, status: int = 201, **fields: object) -> dict:
    body = {"service_name": "web", "location": LOCATION, **fields}
    return api.post_json("/keyard", body, status=status).json


def lookup(api: webtest.TestApp, **params: str) -> list[str]:
    return api.get("/keyard", {"service_name": "web", **params}).json["result"]


def assert_error(response: webtest.TestResponse, *words: str) -> None:
    assert response.content_type == "application/json"
    body = response.json
    assert set(body) >= {"title", "description"}
    for word in words:
        assert word in body["description"], body


# -- POST --------------------------------------------------------------------


def test_post_registers_with_defaults_and_answers_201_with_the_instance(
    api: webtest.TestApp, clock: FakeClock
) -> None:
    clock.now = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    body = register(api)
    assert body == {
        "service_name": "web",
        "version": "1.0",
        "location": LOCATION,
        "ttl": 30,
        "expires_at": "2027-01-15T08:00:30.000Z",
    }
    assert lookup(api) == [LOCATION]


def test_post_of_a_registered_instance_refreshes_it_with_200(
    api: webtest.TestApp, clock: FakeClock
) -> None:
    register(api, ttl=10)
    clock.advance(8)
    body = register(api, status=200, ttl=10)
    assert body["ttl"] == 10
    clock.advance(8)
    assert lookup(api) == [LOCATION]


def test_post_accepts_a_form_body_like_curl_d(api: webtest.TestApp) -> None:
    response = api.post(
        "/keyard", {"service_name": "web", "version": "2", "location": LOCATION, "ttl": "60"}
    )
    assert response.status_int == 201
    assert response.json["version"] == "2" and response.json["ttl"] == 60


def test_post_accepts_fields_in_the_query_string(api: webtest.TestApp) -> None:
    api.post(f"/keyard?service_name=web&location={LOCATION}", status=201)
    assert lookup(api) == [LOCATION]


def test_trailing_slash_is_the_same_resource(api: webtest.TestApp) -> None:
    api.post_json("/keyard/", {"service_name": "web", "location": LOCATION}, status=201)
    assert api.get("/keyard/?service_name=web").json["result"] == [LOCATION]


@pytest.mark.parametrize(
    "location",
    [
        "http://10.0.0.1:8080/a/b?x=1&y=%20z#frag",
        "ünïcødé://服务/🚀",
        "  spaces around  ",
        "tcp://[::1]:9000",
    ],
)
def test_any_location_comes_back_byte_for_byte(api: webtest.TestApp, location: str) -> None:
    assert register(api, location=location)["location"] == location
    assert lookup(api) == [location]
    raw = api.get("/keyard", {"service_name": "web"}).body
    assert json.loads(raw)["result"] == [location]
    api.delete("/keyard", {"service_name": "web", "location": location})
    assert lookup(api) == []


# -- GET ---------------------------------------------------------------------


def test_get_matches_name_and_version_exactly(api: webtest.TestApp) -> None:
    register(api, service_name="web", location="a")
    register(api, service_name="webapp", location="b")
    register(api, service_name="web", version="1.0.1", location="c")
    assert lookup(api, version="1.0") == ["a"]
    assert lookup(api, version="1.0.1") == ["c"]
    assert api.get("/keyard?service_name=webapp").json == {"result": ["b"]}


def test_get_without_version_lists_every_version_ordered_by_version_then_location(
    api: webtest.TestApp,
) -> None:
    register(api, version="2.0", location="z")
    register(api, version="1.0", location="y")
    register(api, version="1.0", location="b")
    assert lookup(api) == ["b", "y", "z"]


def test_get_of_unknown_service_is_an_empty_list(api: webtest.TestApp) -> None:
    assert api.get("/keyard?service_name=nobody").json == {"result": []}


def test_random_strategy_returns_one_live_location(api: webtest.TestApp) -> None:
    register(api, location="a")
    register(api, location="b")
    seen = {
        api.get("/keyard?service_name=web&load_balancer_strategy=random").json["result"]
        for _ in range(100)
    }
    assert seen == {"a", "b"}


def test_round_robin_strategy_takes_locations_in_turn(api: webtest.TestApp) -> None:
    for location in ("a", "b", "c"):
        register(api, location=location)
    picks = [
        api.get("/keyard?service_name=web&load_balancer_strategy=round_robin").json["result"]
        for _ in range(6)
    ]
    assert sorted(picks[:3]) == ["a", "b", "c"] and picks[3:] == picks[:3]


def test_strategy_with_no_live_location_is_404(api: webtest.TestApp) -> None:
    response = api.get("/keyard?service_name=web&load_balancer_strategy=random", status=404)
    assert_error(response, "no live instance", "'web'")


def test_unknown_strategy_is_400_naming_the_valid_ones(api: webtest.TestApp) -> None:
    register(api)
    response = api.get("/keyard?service_name=web&load_balancer_strategy=fastest", status=400)
    assert_error(response, "'fastest'", "random", "round_robin")


# -- PUT ---------------------------------------------------------------------


def test_put_refreshes_expiry_and_keeps_the_registered_ttl(
    api: webtest.TestApp, clock: FakeClock
) -> None:
    register(api, ttl=100)
    clock.advance(90)
    response = api.put_json("/keyard", {"service_name": "web", "location": LOCATION}, status=200)
    assert response.json["ttl"] == 100
    clock.advance(90)
    assert lookup(api) == [LOCATION]
    clock.advance(11)
    assert lookup(api) == []


def test_put_can_change_the_ttl(api: webtest.TestApp, clock: FakeClock) -> None:
    register(api, ttl=100)
    api.put_json("/keyard", {"service_name": "web", "location": LOCATION, "ttl": 5}, status=200)
    clock.advance(6)
    assert lookup(api) == []


def test_put_of_an_unknown_instance_registers_it_with_201(api: webtest.TestApp) -> None:
    response = api.put("/keyard", {"service_name": "web", "location": LOCATION}, status=201)
    assert response.json["ttl"] == 30
    assert lookup(api) == [LOCATION]


# -- DELETE ------------------------------------------------------------------


def test_delete_removes_the_instance(api: webtest.TestApp) -> None:
    register(api, location="a")
    register(api, location="b")
    response = api.delete_json("/keyard", {"service_name": "web", "location": "a"})
    assert response.json == {
        "deregistered": {"service_name": "web", "version": "1.0", "location": "a"}
    }
    assert lookup(api) == ["b"]


def test_delete_accepts_query_parameters(api: webtest.TestApp) -> None:
    register(api, version="3")
    api.delete(f"/keyard?service_name=web&version=3&location={LOCATION}", status=200)
    assert lookup(api) == []


def test_delete_of_an_unknown_instance_is_404(api: webtest.TestApp) -> None:
    response = api.delete("/keyard?service_name=web&location=nowhere", status=404)
    assert_error(response, "'nowhere'")


def test_delete_of_an_expired_instance_is_404(api: webtest.TestApp, clock: FakeClock) -> None:
    register(api, ttl=5)
    clock.advance(5)
    api.delete(f"/keyard?service_name=web&location={LOCATION}", status=404)


# -- TTL ---------------------------------------------------------------------


def test_get_never_returns_an_instance_at_or_after_its_expiry(
    api: webtest.TestApp, clock: FakeClock
) -> None:
    register(api, ttl=10, location="short")
    register(api, ttl=20, location="long")
    clock.advance(9.999)
    assert lookup(api) == ["long", "short"]
    clock.advance(0.001)
    assert lookup(api) == ["long"]
    assert api.get("/keyard?service_name=web&load_balancer_strategy=random").json == {
        "result": "long"
    }
    clock.advance(10)
    assert lookup(api) == []
    api.get("/keyard?service_name=web&load_balancer_strategy=random", status=404)


def test_registering_again_after_expiry_is_new(api: webtest.TestApp, clock: FakeClock) -> None:
    register(api, ttl=5)
    clock.advance(6)
    register(api, status=201)


@pytest.mark.slow
def test_expiry_happens_in_real_time() -> None:
    real = webtest.TestApp(create_app({"min_ttl": 1}, store=MemoryStore()))
    real.post_json("/keyard", {"service_name": "web", "location": "a", "ttl": 1}, status=201)
    assert real.get("/keyard?service_name=web").json == {"result": ["a"]}
    import time

    time.sleep(1.2)
    assert real.get("/keyard?service_name=web").json == {"result": []}


# -- bad input ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"location": LOCATION}, ["service_name is required"]),
        ({"service_name": "web"}, ["location is required"]),
        ({"service_name": "", "location": LOCATION}, ["service_name must not be empty"]),
        ({"service_name": "   ", "location": LOCATION}, ["service_name must not be empty"]),
        ({"service_name": "web", "location": ""}, ["location must not be empty"]),
        ({"service_name": "web", "location": LOCATION, "version": ""}, ["version"]),
        ({"service_name": 42, "location": LOCATION}, ["service_name must be a string", "int"]),
        ({"service_name": "web", "location": ["a"]}, ["location must be a string", "list"]),
        ({"service_name": "web", "location": LOCATION, "version": 2}, ["version", "string"]),
        ({"service_name": "web", "location": LOCATION, "ttl": "ten"}, ["ttl", "'ten'"]),
        ({"service_name": "web", "location": LOCATION, "ttl": 1.5}, ["ttl", "1.5"]),
        ({"service_name": "web", "location": LOCATION, "ttl": True}, ["ttl", "True"]),
        ({"service_name": "web", "location": LOCATION, "ttl": "-5"}, ["ttl", "'-5'"]),
        ({"service_name": "web", "location": LOCATION, "ttl": 0}, ["between 1 and 86400", "0"]),
        ({"service_name": "web", "location": LOCATION, "ttl": 86401}, ["between", "86401"]),
        ({"service_name": "web", "location": LOCATION, "ttl": 10**400}, ["ttl"]),
        ({"service_name": "web", "location": LOCATION, "ttl": "9" * 5000}, ["ttl", "99..."]),
        ({"service_name": "web", "location": "a\ud800"}, ["location is not valid Unicode"]),
        ({"service_name": "x" * 129, "location": LOCATION}, ["service_name", "129", "128"]),
        ({"service_name": "web", "version": "v" * 129, "location": "a"}, ["version", "128"]),
        ({"service_name": "web", "location": "l" * 1025}, ["location", "1025", "1024"]),
        ({"service_name": "web", "location": "a", "servicename": "x"}, ["'servicename'"]),
    ],
)
@pytest.mark.parametrize("method", ["post_json", "put_json"])
def test_bad_fields_are_400_naming_the_problem(
    api: webtest.TestApp, method: str, fields: dict, words: list[str]
) -> None:
    response = getattr(api, method)("/keyard", fields, status=400)
    assert_error(response, *words)
    assert lookup(api) == []


def test_values_at_the_length_limits_are_accepted(api: webtest.TestApp) -> None:
    register(api, service_name="s" * 128, version="v" * 128, location="l" * 1024)


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("", ["service_name is required"]),
        ("?service_name=", ["service_name must not be empty"]),
        ("?service_name=web&version=", ["version must not be empty"]),
        ("?service_name=a&service_name=b", ["service_name is given more than once"]),
        ("?service_name=web&versoin=2", ["'versoin'"]),
        ("?service_name=web&location=x", ["'location'"]),
    ],
)
def test_bad_lookups_are_400(api: webtest.TestApp, query: str, words: list[str]) -> None:
    assert_error(api.get("/keyard" + query, status=400), *words)


def test_delete_without_location_is_400(api: webtest.TestApp) -> None:
    assert_error(api.delete("/keyard?service_name=web", status=400), "location is required")


def test_malformed_json_is_400(api: webtest.TestApp) -> None:
    response = api.post("/keyard", '{"service_name": ', content_type="application/json", status=400)
    assert response.json["title"] == "Malformed JSON"
    assert_error(response, "not valid JSON")


@pytest.mark.parametrize("body", ['["web"]', '"web"', "null", "42"])
def test_json_body_that_is_not_an_object_is_400(api: webtest.TestApp, body: str) -> None:
    response = api.post("/keyard", body, content_type="application/json", status=400)
    assert_error(response, "must be a JSON object")


def test_invalid_utf8_is_400(api: webtest.TestApp) -> None:
    api.post("/keyard", b'{"service_name": "\xff"}', content_type="application/json", status=400)
    api.post(
        "/keyard",
        b"service_name=\xff",
        content_type="application/x-www-form-urlencoded",
        status=400,
    )


def test_deeply_nested_json_is_400_not_500(api: webtest.TestApp) -> None:
    body = "[" * 100_000 + "]" * 100_000
    response = api.post(
        "/keyard", body[:MAX_BODY_BYTES], content_type="application/json", status=400
    )
    assert_error(response)


def test_field_in_query_and_body_is_400(api: webtest.TestApp) -> None:
    response = api.post_json(
        "/keyard?service_name=a", {"service_name": "b", "location": "x"}, status=400
    )
    assert_error(response, "service_name is given both")


def test_repeated_form_field_is_400(api: webtest.TestApp) -> None:
    response = api.post(
        "/keyard",
        "service_name=a&service_name=b&location=x",
        content_type="application/x-www-form-urlencoded",
        status=400,
    )
    assert_error(response, "service_name is given more than once")


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "multipart/form-data"])
def test_unsupported_content_type_is_415(api: webtest.TestApp, content_type: str) -> None:
    response = api.post("/keyard", "service_name=web", content_type=content_type, status=415)
    assert_error(response, "application/json", "application/x-www-form-urlencoded")


def test_json_with_charset_parameter_is_accepted(api: webtest.TestApp) -> None:
    body = json.dumps({"service_name": "web", "location": "a"})
    api.post("/keyard", body, content_type="application/json; charset=utf-8", status=201)


def test_body_over_the_limit_is_413(api: webtest.TestApp) -> None:
    body = json.dumps({"service_name": "web", "location": "x" * MAX_BODY_BYTES})
    response = api.post("/keyard", body, content_type="application/json", status=413)
    assert_error(response, str(MAX_BODY_BYTES))


@pytest.mark.parametrize("accept", ["text/html", "application/xml", "text/plain"])
def test_accept_that_excludes_json_is_406_in_json(api: webtest.TestApp, accept: str) -> None:
    response = api.get("/keyard?service_name=web", headers={"Accept": accept}, status=406)
    assert_error(response, "application/json")


@pytest.mark.parametrize("accept", ["*/*", "application/*", "text/html, application/json;q=0.5"])
def test_accept_that_admits_json_is_served(api: webtest.TestApp, accept: str) -> None:
    api.get("/keyard?service_name=web", headers={"Accept": accept}, status=200)


def test_unknown_path_is_404_json(api: webtest.TestApp) -> None:
    assert_error(api.get("/services", status=404), "/keyard")


def test_unsupported_method_is_405_json(api: webtest.TestApp) -> None:
    assert_error(api.patch("/keyard", status=405), "PATCH", "GET")


def test_head_answers_as_get_without_a_body(api: webtest.TestApp) -> None:
    register(api)
    get = api.get("/keyard", {"service_name": "web"})
    head = api.head("/keyard?service_name=web", status=200)
    assert head.body == b""
    assert head.content_type == "application/json"
    assert head.headers["Content-Length"] == get.headers["Content-Length"]
    assert api.head("/keyard", status=400).body == b""  # no service_name: as GET


@pytest.mark.parametrize(
    "path", ["/keyard", "/keyard/services", "/keyard/services/web/instances/x/status"]
)
def test_options_lists_every_method_options_included_with_no_body_and_no_type(
    api: webtest.TestApp, path: str
) -> None:
    response = api.options(path, status=204)
    allowed = set(response.headers["Allow"].split(", "))
    assert "OPTIONS" in allowed and "GET" in allowed or "PUT" in allowed
    assert response.body == b""
    assert "Content-Type" not in response.headers
    not_allowed = api.patch(path, status=405)
    assert set(not_allowed.headers["Allow"].split(", ")) == allowed


def test_options_of_keyard_allows_every_method_it_serves(api: webtest.TestApp) -> None:
    allowed = api.options("/keyard", status=204).headers["Allow"].split(", ")
    assert set(allowed) == {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"}


# -- request encoding edge cases ------------------------------------------------


@pytest.mark.parametrize(
    "url", ["/keyard?service_name=web&location=%ff", "/keyard?service_name=w%c3&location=a"]
)
def test_query_string_bytes_that_are_not_utf8_are_400_never_replaced(
    api: webtest.TestApp, url: str
) -> None:
    assert_error(api.post(url, status=400), "not valid UTF-8", "query string")
    assert api.get("/keyard?service_name=web").json == {"result": []}
    assert_error(api.get("/keyard?service_name=%ff", status=400), "service_name", "UTF-8")
    assert_error(api.get("/keyard?service_name=web&%fe=1", status=400), "field name", "UTF-8")


def test_percent_encoded_form_bytes_that_are_not_utf8_are_400_never_replaced(
    api: webtest.TestApp,
) -> None:
    response = api.post(
        "/keyard",
        "service_name=web&location=%ff%fe",
        content_type="application/x-www-form-urlencoded",
        status=400,
    )
    assert_error(response, "location", "form body", "not valid UTF-8")
    assert lookup(api) == []


def test_form_values_raw_or_percent_encoded_utf8_come_back_unchanged(api: webtest.TestApp) -> None:
    body = "service_name=web&location=http://h/é☃?q=%E2%98%83%26x+y%2By".encode()
    response = api.post(
        "/keyard", body, content_type="application/x-www-form-urlencoded", status=201
    )
    assert response.json["location"] == "http://h/é☃?q=☃&x y+y"
    assert lookup(api) == ["http://h/é☃?q=☃&x y+y"]
    assert lookup(api, version="1.0") == ["http://h/é☃?q=☃&x y+y"]


def test_json_object_with_a_repeated_key_is_400(api: webtest.TestApp) -> None:
    body = '{"service_name": "web", "location": "a", "location": "b"}'
    response = api.post("/keyard", body, content_type="application/json", status=400)
    assert_error(response, "location is given more than once")
    assert lookup(api) == []


def test_body_without_content_type_is_415_saying_so(api: webtest.TestApp) -> None:
    response = api.post("/keyard", "service_name=web&location=a", content_type="", status=415)
    assert_error(response, "no Content-Type", "application/json")


def call_without_content_length(
    app: falcon.App, body: bytes, *, input_terminated: bool
) -> tuple[str, dict]:
    """POST ``body`` chunked, as gunicorn hands it over: no CONTENT_LENGTH."""
    environ = falcon.testing.create_environ(
        method="POST",
        path="/keyard",
        body=body,
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    )
    del environ["CONTENT_LENGTH"]
    environ["wsgi.input_terminated"] = input_terminated
    start_response = falcon.testing.StartResponseMock()
    answer = b"".join(app(environ, start_response))
    return start_response.status, json.loads(answer)


def test_chunked_body_without_content_length_is_read() -> None:
    app = create_app({}, store=MemoryStore())
    body = json.dumps({"service_name": "web", "location": LOCATION}).encode()
    status, answer = call_without_content_length(app, body, input_terminated=True)
    assert status == "201 Created", answer
    assert answer["location"] == LOCATION


def test_chunked_body_over_the_limit_is_413() -> None:
    app = create_app({}, store=MemoryStore())
    body = json.dumps({"service_name": "web", "location": "x" * MAX_BODY_BYTES}).encode()
    status, answer = call_without_content_length(app, body, input_terminated=True)
    assert status.startswith("413"), answer
    assert str(MAX_BODY_BYTES) in answer["description"]


class _MalformedChunks(io.BytesIO):
    """A body whose reading fails as gunicorn's does on a bad chunk (not an OSError)."""

    def read(self, size: int | None = -1) -> bytes:
        raise ValueError("Invalid chunk size: b'zz'")


def test_body_the_server_cannot_read_is_400_not_500() -> None:
    app = create_app({}, store=MemoryStore())
    environ = falcon.testing.create_environ(
        method="POST",
        path="/keyard",
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    )
    environ.pop("CONTENT_LENGTH", None)
    environ["wsgi.input_terminated"] = True
    environ["wsgi.input"] = _MalformedChunks()
    start_response = falcon.testing.StartResponseMock()
    answer = json.loads(b"".join(app(environ, start_response)))
    assert start_response.status.startswith("400"), answer
    assert answer["title"] == "Malformed body"
    assert "Invalid chunk size" in answer["description"]


def test_chunked_body_on_a_server_that_does_not_end_the_stream_is_411() -> None:
    app = create_app({}, store=MemoryStore())
    body = json.dumps({"service_name": "web", "location": LOCATION}).encode()
    status, answer = call_without_content_length(app, body, input_terminated=False)
    assert status.startswith("411"), answer
    assert "Content-Length" in answer["description"]
