"""Amalgam8's registry API at ``/api/v1``, in process: every route, status and bad input.

As Amalgam8's Go client (``registry/client``) and sidecar call it: JSON bodies, a
bearer token naming the namespace (auth mode ``trusted``), 201 on every registration,
410 for an unknown id, ``{"Error": ...}`` for every error.
"""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import jwt
import pytest
import webtest

from keyard.api.amalgam8 import mapping
from keyard.app import create_app
from keyard.errors import StoreUnavailable
from keyard.stores.memory import MemoryStore
from tests.conftest import FakeClock

A, B = "team-a", "team-b"
SECRET = "a-test-secret-of-at-least-32-bytes-0123456789"
CONFIG = {"auth": {"mode": "trusted"}, "min_ttl": 5, "max_ttl": 600, "default_ttl": 30}


def as_(namespace: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {namespace}"}


@pytest.fixture
def api(clock: FakeClock) -> webtest.TestApp:
    return webtest.TestApp(create_app(CONFIG, store=MemoryStore(), clock=clock))


def body(**fields: Any) -> dict[str, Any]:
    """A registration as the Go client sends it (``last_heartbeat`` included)."""
    return {
        "service_name": "reviews",
        "endpoint": {"type": "http", "value": "10.0.0.1:9080"},
        "tags": ["v1"],
        "ttl": 30,
        "last_heartbeat": "0001-01-01T00:00:00Z",
        **fields,
    }


def register(api: webtest.TestApp, namespace: str = A, **fields: Any) -> Any:
    return api.post_json("/api/v1/instances", body(**fields), headers=as_(namespace)).json


def listed(api: webtest.TestApp, namespace: str = A, **query: str) -> list[dict[str, Any]]:
    return api.get("/api/v1/instances", query, headers=as_(namespace)).json["instances"]


def native(api: webtest.TestApp, service: str = "reviews", namespace: str = A) -> list[Any]:
    return api.get(f"/keyard/services/{service}", headers=as_(namespace)).json["instances"]


def heartbeat(api: webtest.TestApp, amalgam8_id: str, namespace: str = A) -> Any:
    return api.put(
        f"/api/v1/instances/{amalgam8_id}/heartbeat",
        headers={**as_(namespace), "Content-Length": "0"},
        expect_errors=True,
    )


def assert_error(answer: webtest.TestResponse, status: int, *words: str) -> None:
    """The answer is ``status`` with Amalgam8's error body naming ``words``."""
    assert answer.status_int == status, (answer.status, answer.body)
    assert answer.content_type == "application/json"
    assert list(answer.json) == ["Error"]
    message = answer.json["Error"]
    assert isinstance(message, str)
    for word in words:
        assert word.lower() in message.lower(), (word, message)


# -- register ----------------------------------------------------------------------------


def test_register_answers_201_with_the_id_ttl_links_and_location(api: webtest.TestApp) -> None:
    answer = api.post_json("/api/v1/instances", body(), headers=as_(A))
    assert answer.status_int == 201
    assert set(answer.json) == {"id", "ttl", "links"}
    amalgam8_id = answer.json["id"]
    assert answer.json["ttl"] == 30
    self_url = f"http://localhost:80/api/v1/instances/{amalgam8_id}"
    assert answer.json["links"] == {"self": self_url, "heartbeat": self_url + "/heartbeat"}
    assert answer.headers["Location"] == self_url


def test_the_id_is_stable_for_service_and_endpoint_and_names_the_service(
    api: webtest.TestApp,
) -> None:
    first = register(api)["id"]
    assert register(api, tags=["v2"], status="starting")["id"] == first  # still 201
    assert register(api, endpoint={"type": "http", "value": "10.0.0.2:9080"})["id"] != first
    assert register(api, endpoint={"type": "tcp", "value": "10.0.0.1:9080"})["id"] != first
    assert register(api, service_name="ratings")["id"] != first
    prefix, _, digest = first.partition(".")
    assert base64.urlsafe_b64decode(prefix + "=" * (-len(prefix) % 4)) == b"reviews"
    assert len(digest) == 16 and int(digest, 16) >= 0
    # keyard's instance_id is the same id, so both APIs name the instance alike.
    ids = [i["instance_id"] for i in native(api)]
    assert first in ids
    answer = api.get(f"/keyard/services/reviews/instances/{first}", headers=as_(A))
    assert answer.json["location"] == "http://10.0.0.1:9080"


def test_a_re_registration_replaces_tags_metadata_and_status(api: webtest.TestApp) -> None:
    register(api, tags=["v1", "canary"], metadata={"zone": "eu"}, status="STARTING")
    register(api, tags=None, metadata=None, ttl=0)
    (shown,) = listed(api, status="ALL")
    assert shown["status"] == "UP"
    assert "tags" not in shown and "metadata" not in shown
    assert shown["ttl"] == 30  # 0 is the default, as in Amalgam8


def test_unknown_fields_are_ignored(api: webtest.TestApp) -> None:
    answer = register(api, id="chosen-by-client", links={"self": "x"}, color="blue")
    assert answer["id"] != "chosen-by-client"


@pytest.mark.parametrize(("asked", "given"), [(None, 30), (1, 5), (5, 5), (45, 45), (10**9, 600)])
def test_the_ttl_is_clamped_silently_into_the_bounds(
    api: webtest.TestApp, asked: int | None, given: int
) -> None:
    assert register(api, ttl=asked)["ttl"] == given
    assert native(api)[0]["ttl"] == given


def test_the_status_is_read_case_insensitively(api: webtest.TestApp) -> None:
    register(api, status="out_of_service")
    assert listed(api, status="ALL")[0]["status"] == "OUT_OF_SERVICE"


LONG = "x" * 1100
BAD_REGISTRATIONS = [
    ({"service_name": None}, "service name is required"),
    ({"service_name": ""}, "service name is required"),
    ({"service_name": 7}, "service_name must be a string"),
    ({"service_name": "   "}, "service_name must not be empty"),
    ({"service_name": "s" * 84}, "the limit is 83"),
    ({"service_name": "é" * 42}, "84 bytes"),
    ({"endpoint": None}, "endpoint is required"),
    ({"endpoint": "10.0.0.1:80"}, "endpoint must be an object"),
    ({"endpoint": {"value": "10.0.0.1:80"}}, "type or value are missing"),
    ({"endpoint": {"type": "http", "value": ""}}, "type or value are missing"),
    ({"endpoint": {"type": "http", "value": 80}}, "value must be a string"),
    ({"endpoint": {"type": "HTTP", "value": "x"}}, "endpoint type is invalid"),
    ({"endpoint": {"type": "grpc", "value": "x"}}, "valid: http, https, tcp, udp, user"),
    ({"endpoint": {"type": "user", "value": LONG}}, "location is 1100 characters"),
    ({"status": "DOWN"}, "valid statuses are: UP, STARTING, OUT_OF_SERVICE"),
    ({"status": "sleeping"}, "valid statuses"),
    ({"status": 1}, "status must be a string"),
    ({"ttl": -1}, "ttl must be a whole number"),
    ({"ttl": 1.5}, "ttl must be a whole number"),
    ({"ttl": "30"}, "ttl must be a whole number"),
    ({"ttl": True}, "ttl must be a whole number"),
    ({"tags": "v1"}, "tags must be a list of strings"),
    ({"tags": [1]}, "tags must be a list of strings"),
    ({"tags": [""]}, "empty tag"),
    ({"tags": ["t" * 200]}, "the limit is 128"),
    ({"tags": [f"t{n}" for n in range(65)]}, "more than 64 tags"),
    ({"metadata": {"amalgam8.endpoint_type": "x"}}, "reserved"),
    ({"metadata": {f"k{n}": n for n in range(64)}}, "the limit is 63"),
    ({"metadata": {"big": LONG}}, "metadata value of 'big'"),
    ({"metadata": [LONG]}, "metadata value of 'amalgam8.metadata'"),
    ({"metadata": {"": 1}}, "metadata keys must not be empty"),
]


@pytest.mark.parametrize(("fields", "words"), BAD_REGISTRATIONS)
def test_a_bad_registration_is_a_400_naming_the_field(
    api: webtest.TestApp, fields: dict[str, Any], words: str
) -> None:
    answer = api.post_json(
        "/api/v1/instances", body(**fields), headers=as_(A), expect_errors=True
    )
    assert_error(answer, 400, words)
    assert listed(api, status="ALL") == []


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"", "the body is empty"),
        (b"{", "not valid JSON"),
        (b"[1]", "must be a JSON object, got list"),
        (b'{"service_name": NaN}', "not valid JSON"),
        (b'{"metadata": {"a": 1e999}}', "out of range"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"metadata":' + b"[" * 30000 + b"]" * 30000 + b"}", "not valid JSON"),
        (b"[" * 100000 + b"]" * 100000, "the limit is 65536"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_a_4xx(
    api: webtest.TestApp, raw: bytes, words: str
) -> None:
    answer = api.post(
        "/api/v1/instances", raw, headers={**as_(A), "Content-Type": "application/json"},
        expect_errors=True,
    )  # fmt: skip
    assert_error(answer, 413 if "limit" in words else 400, words)


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "text/plain", "application/json; charset=latin-1", ""],
)
def test_a_write_without_a_json_content_type_is_a_415(
    api: webtest.TestApp, content_type: str
) -> None:
    raw = json.dumps(body()).encode()
    headers = {**as_(A), "Content-Type": content_type}
    answer = api.post("/api/v1/instances", raw, headers=headers, expect_errors=True)
    assert_error(answer, 415, "expected 'application/json'")
    amalgam8_id = register(api)["id"]
    for method, path in (
        ("PUT", f"/api/v1/instances/{amalgam8_id}/heartbeat"),
        ("DELETE", f"/api/v1/instances/{amalgam8_id}"),
    ):
        answer = api.request(path, method=method, body=b"x", headers=headers, expect_errors=True)
        assert_error(answer, 415, "content-type")
    # With JSON's type and charset named, a body is fine.
    headers["Content-Type"] = "application/json; charset=UTF-8"
    assert api.post("/api/v1/instances", raw, headers=headers).status_int == 201


# -- heartbeat and deregister ------------------------------------------------------------


def test_a_heartbeat_renews_the_lease_and_keeps_every_field(
    api: webtest.TestApp, clock: FakeClock
) -> None:
    amalgam8_id = register(api, ttl=10, metadata={"zone": "eu"}, status="STARTING")["id"]
    clock.advance(8)
    answer = heartbeat(api, amalgam8_id)
    assert answer.status_int == 200 and answer.body == b""
    clock.advance(8)  # 16 s after registering, 8 after the heartbeat: still live
    (shown,) = listed(api, service_name="reviews")
    assert shown["status"] == "STARTING" and shown["metadata"] == {"zone": "eu"}
    assert shown["ttl"] == 10 and shown["tags"] == ["v1"]


def test_an_expired_instance_is_gone_410_and_registering_again_brings_it_back(
    api: webtest.TestApp, clock: FakeClock
) -> None:
    amalgam8_id = register(api, ttl=10)["id"]
    clock.advance(11)
    assert_error(heartbeat(api, amalgam8_id), 410, "failed to renew", amalgam8_id)
    assert listed(api) == []
    assert register(api, ttl=10)["id"] == amalgam8_id
    assert heartbeat(api, amalgam8_id).status_int == 200


def test_deregister_answers_200_then_410(api: webtest.TestApp) -> None:
    amalgam8_id = register(api)["id"]
    answer = api.delete(f"/api/v1/instances/{amalgam8_id}", headers=as_(A))
    assert answer.status_int == 200 and answer.body == b""
    assert native(api) == []
    answer = api.delete(f"/api/v1/instances/{amalgam8_id}", headers=as_(A), expect_errors=True)
    assert_error(answer, 410, "failed to deregister")
    assert_error(heartbeat(api, amalgam8_id), 410)


@pytest.mark.parametrize(
    "amalgam8_id",
    [
        "nope",
        "cmV2aWV3cw",  # the service, no separator
        "cmV2aWV3cw.",  # nothing after it
        ".0123456789abcdef",
        "cmV2aWV3cw==.0123456789abcdef",  # padded: not the canonical form
        "cmV2aWV3c.0123456789abcdef",  # not base64 of whole bytes
        "_w.0123456789abcdef",  # base64 of bytes that are not UTF-8
        "ICA.0123456789abcdef",  # a blank service name
        "cmV2aWV3cw." + "f" * 300,
        "%F0%9F%9A%80.x",
    ],
)
def test_an_id_that_is_not_one_is_gone_410_never_a_500(
    api: webtest.TestApp, amalgam8_id: str
) -> None:
    register(api)
    assert_error(heartbeat(api, amalgam8_id), 410)
    answer = api.delete(f"/api/v1/instances/{amalgam8_id}", headers=as_(A), expect_errors=True)
    assert_error(answer, 410)
    assert len(listed(api)) == 1


# -- routes, methods, errors -------------------------------------------------------------

KNOWN = {
    "/api/v1/instances": {"GET", "POST"},
    "/api/v1/instances/cmV2aWV3cw.0123456789abcdef": {"DELETE"},
    "/api/v1/instances/cmV2aWV3cw.0123456789abcdef/heartbeat": {"PUT"},
    "/api/v1/services": {"GET"},
    "/api/v1/services/reviews": {"GET"},
}


@pytest.mark.parametrize("path", sorted(KNOWN))
def test_a_wrong_method_on_a_known_path_is_a_405(api: webtest.TestApp, path: str) -> None:
    for method in sorted({"GET", "POST", "PUT", "DELETE", "PATCH"} - KNOWN[path]):
        answer = api.request(path, method=method, headers=as_(A), expect_errors=True)
        assert_error(answer, 405, "method not allowed", method)
        assert set(answer.headers["Allow"].replace(" ", "").split(",")) >= KNOWN[path]


@pytest.mark.parametrize(
    "path",
    ["/api/v1", "/api/v1/nothing", "/api/v1/instances/a/b/c", "/api/v1/services/a/b"],
)
def test_an_unknown_path_under_api_v1_is_a_404_in_amalgam8s_error_body(
    api: webtest.TestApp, path: str
) -> None:
    assert_error(api.get(path, headers=as_(A), expect_errors=True), 404, "resource not found")


def test_no_credentials_or_bad_ones_are_a_401_in_amalgam8s_error_body(
    api: webtest.TestApp,
) -> None:
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Digest x"}):
        answer = api.get("/api/v1/instances", headers=headers, expect_errors=True)
        assert_error(answer, 401)
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_jwt_whose_namespace_claim_is_not_a_string_is_a_401_not_a_500() -> None:
    config = {"auth": {"mode": "jwt", "jwt_secret": SECRET}}
    api = webtest.TestApp(create_app(config, store=MemoryStore()))
    for claim in (7, ["a"], {"a": 1}, None, True):
        token = jwt.encode({"namespace": claim}, SECRET)
        answer = api.post_json(
            "/api/v1/instances", body(), headers=as_(token), expect_errors=True
        )
        assert_error(answer, 401, "namespace")
    good = jwt.encode({"namespace": A}, SECRET)
    assert api.post_json("/api/v1/instances", body(), headers=as_(good)).status_int == 201
    assert api.get("/keyard/services/reviews", headers=as_(A), expect_errors=True).status_int == 401


def test_a_full_namespace_refuses_new_instances_with_403(clock: FakeClock) -> None:
    config = {**CONFIG, "namespace_capacity": 1}
    api = webtest.TestApp(create_app(config, store=MemoryStore(), clock=clock))
    register(api)
    register(api, tags=["v2"])  # a re-registration is never refused
    answer = api.post_json(
        "/api/v1/instances", body(service_name="ratings"), headers=as_(A), expect_errors=True
    )
    assert_error(answer, 403, "namespace_capacity")
    register(api, namespace=B, service_name="ratings")  # another namespace has room


class DownStore(MemoryStore):
    """A store that cannot be reached."""

    def _down(self, *args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("the store did not answer within 1 s")

    put = get = deregister = lookup = services = _down  # type: ignore[assignment]


def test_a_store_that_is_down_is_a_503_in_amalgam8s_error_body() -> None:
    api = webtest.TestApp(create_app(CONFIG, store=DownStore()))
    calls = [
        ("POST", "/api/v1/instances"),
        ("GET", "/api/v1/instances"),
        ("GET", "/api/v1/services"),
        ("GET", "/api/v1/services/reviews"),
        ("PUT", "/api/v1/instances/cmV2aWV3cw.0123456789abcdef/heartbeat"),
        ("DELETE", "/api/v1/instances/cmV2aWV3cw.0123456789abcdef"),
    ]
    for method, path in calls:
        raw = json.dumps(body()).encode() if method == "POST" else b""
        answer = api.request(
            path, method=method, body=raw, headers={**as_(A), "Content-Type": "application/json"},
            expect_errors=True,
        )  # fmt: skip
        assert_error(answer, 503, "did not answer")
        assert answer.headers["Retry-After"] == "1"


# -- listings ----------------------------------------------------------------------------


@pytest.fixture
def four(api: webtest.TestApp) -> dict[str, str]:
    """Four instances of two services, one of each status Amalgam8 knows and a DOWN one
    (registered natively: Amalgam8 has no DOWN)."""
    ids = {
        "up": register(api, tags=["v1", "eu"])["id"],
        "starting": register(api, endpoint={"type": "http", "value": "10.0.0.2:9080"},
                             status="STARTING", tags=["v2"])["id"],
        "out": register(api, service_name="ratings", status="OUT_OF_SERVICE")["id"],
    }  # fmt: skip
    native_body = {"service_name": "ratings", "location": "tcp://10.0.0.9:7000", "status": "DOWN"}
    api.post_json("/keyard", native_body, headers=as_(A))
    return ids


def test_a_listing_without_criteria_lists_up_instances_only(
    api: webtest.TestApp, four: dict[str, str]
) -> None:
    assert [i["id"] for i in listed(api)] == [four["up"]]
    assert [i["id"] for i in listed(api, fields="status")] == [four["up"]]


def test_status_selects_one_status_or_all(api: webtest.TestApp, four: dict[str, str]) -> None:
    assert len(listed(api, status="ALL")) == 4
    assert len(listed(api, status="all")) == 4
    assert [i["id"] for i in listed(api, status="starting")] == [four["starting"]]
    assert [i["id"] for i in listed(api, status="OUT_OF_SERVICE")] == [four["out"]]
    assert [i["status"] for i in listed(api, status="DOWN")] == ["DOWN"]


def test_another_criterion_without_status_lists_every_status(
    api: webtest.TestApp, four: dict[str, str]
) -> None:
    """As Amalgam8's selectCriteria: UP only when nothing at all is asked."""
    assert len(listed(api, service_name="reviews")) == 2
    assert len(listed(api, service_name="ratings")) == 2
    assert [i["id"] for i in listed(api, service_name="reviews", status="UP")] == [four["up"]]
    assert [i["id"] for i in listed(api, tags="v2")] == [four["starting"]]
    assert [i["id"] for i in listed(api, tags="v1,eu")] == [four["up"]]
    assert listed(api, tags="v1,v2") == []
    assert [i["id"] for i in listed(api, id=four["out"])] == [four["out"]]
    assert listed(api, service_name="nothing") == []
    assert listed(api, service_name="") == []
    assert listed(api, service_name="s" * 300) == []


def test_fields_keeps_the_fields_asked_for_and_always_id_and_endpoint(
    api: webtest.TestApp, four: dict[str, str]
) -> None:
    (shown,) = listed(api, fields="status,tags")
    assert shown == {
        "id": four["up"],
        "endpoint": {"type": "http", "value": "10.0.0.1:9080"},
        "status": "UP",
        "tags": ["v1", "eu"],
    }
    (shown,) = listed(api, fields="")
    assert set(shown) == {"id", "endpoint"}


def test_an_instance_is_listed_in_amalgam8s_shape(
    api: webtest.TestApp, clock: FakeClock, four: dict[str, str]
) -> None:
    (shown,) = listed(api)
    assert list(shown) == [
        "id", "service_name", "endpoint", "ttl", "status", "last_heartbeat", "tags",
    ]  # fmt: skip
    assert shown["service_name"] == "reviews" and shown["ttl"] == 30
    assert shown["last_heartbeat"] == "2027-01-15T08:00:00.000Z"


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ({"color": "blue"}, "invalid instance selection criteria: 'color'"),
        ({"ttl": "30"}, "'ttl'"),
        ({"endpoint": "x"}, "'endpoint'"),
        ({"status": "SLEEPING"}, "status 'SLEEPING' is not known"),
        ({"status": ""}, "is not known"),
        ({"fields": "status,colour"}, "undefined instance field(s) in fields: 'colour'"),
    ],
)
def test_a_bad_listing_query_is_a_400(
    api: webtest.TestApp, query: dict[str, str], words: str
) -> None:
    answer = api.get("/api/v1/instances", query, headers=as_(A), expect_errors=True)
    assert_error(answer, 400, words)


def test_a_repeated_or_undecodable_query_field_is_a_400(api: webtest.TestApp) -> None:
    for query in ("status=UP&status=ALL", "service_name=%ff"):
        answer = api.get(f"/api/v1/instances?{query}", headers=as_(A), expect_errors=True)
        assert_error(answer, 400)


def test_services_lists_every_service_with_a_live_instance(
    api: webtest.TestApp, clock: FakeClock, four: dict[str, str]
) -> None:
    assert api.get("/api/v1/services", headers=as_(A)).json == {"services": ["ratings", "reviews"]}
    answer = api.get("/api/v1/services/ratings", headers=as_(A)).json
    assert answer["service_name"] == "ratings"
    assert sorted(i["status"] for i in answer["instances"]) == ["DOWN", "OUT_OF_SERVICE"]
    clock.advance(31)
    assert api.get("/api/v1/services", headers=as_(A)).json == {"services": []}
    answer = api.get("/api/v1/services/ratings", headers=as_(A), expect_errors=True)
    assert_error(answer, 404, "service name not found", "ratings")


def test_a_service_name_with_a_slash_round_trips_in_the_path(api: webtest.TestApp) -> None:
    register(api, service_name="a/b")
    answer = api.get("/api/v1/services/a%2Fb", headers=as_(A), extra_environ={
        "REQUEST_URI": "/api/v1/services/a%2Fb"})  # fmt: skip
    assert answer.json["service_name"] == "a/b"


# -- the mapping onto keyard's instance --------------------------------------------------


def test_an_amalgam8_instance_is_seen_natively(api: webtest.TestApp) -> None:
    metadata = {"version": "v2", "weight": 3, "nested": {"a": [1, None]}, "name": "x"}
    register(api, metadata=metadata, tags=["v1", "v1", "canary"])
    (record,) = native(api)
    assert record["location"] == "http://10.0.0.1:9080"
    assert record["version"] == "v2"  # from metadata "version"
    assert record["tags"] == ["v1", "canary"]  # a repeated tag is one
    assert record["metadata"] == {
        "amalgam8.endpoint_type": "http",
        "version": '"v2"',
        "weight": "3",
        "nested": '{"a":[1,null]}',
        "name": '"x"',
    }
    assert record["status"] == "UP" and record["ttl"] == 30
    # and back: the JSON as it was sent
    assert listed(api)[0]["metadata"] == metadata
    # Without a version in metadata, keyard's default version.
    register(api, service_name="ratings", metadata={"version": 2})
    assert native(api, "ratings")[0]["version"] == "1.0"


@pytest.mark.parametrize("metadata", [[1, "a"], "text", 3.5, True, {}])
def test_metadata_that_is_not_an_object_round_trips(
    api: webtest.TestApp, metadata: object
) -> None:
    register(api, metadata=metadata)
    shown = listed(api)[0]
    assert shown.get("metadata") == (metadata if metadata != {} else None)


@pytest.mark.parametrize(
    ("endpoint", "location"),
    [
        ({"type": "http", "value": "10.0.0.1:9080"}, "http://10.0.0.1:9080"),
        ({"type": "https", "value": "reviews.example:443"}, "https://reviews.example:443"),
        ({"type": "tcp", "value": "10.0.0.1:5432"}, "tcp://10.0.0.1:5432"),
        ({"type": "udp", "value": "10.0.0.1:53"}, "udp://10.0.0.1:53"),
        ({"type": "user", "value": "http://any/thing"}, "http://any/thing"),
        ({"type": "http", "value": "http://10.0.0.1"}, "http://http://10.0.0.1"),
    ],
)
def test_each_endpoint_type_maps_to_a_location_and_back(
    api: webtest.TestApp, endpoint: dict[str, str], location: str
) -> None:
    register(api, endpoint=endpoint)
    assert native(api)[0]["location"] == location
    assert listed(api)[0]["endpoint"] == endpoint


@pytest.mark.parametrize(
    ("location", "endpoint"),
    [
        ("http://10.0.0.5:8080", {"type": "http", "value": "10.0.0.5:8080"}),
        ("HTTPS://host:443/path", {"type": "https", "value": "host:443/path"}),
        ("tcp://10.0.0.5:9", {"type": "tcp", "value": "10.0.0.5:9"}),
        ("10.0.0.5:8080", {"type": "user", "value": "10.0.0.5:8080"}),
        ("grpc://10.0.0.5:1", {"type": "user", "value": "grpc://10.0.0.5:1"}),
        ("user://x", {"type": "user", "value": "user://x"}),
    ],
)
def test_a_native_instance_is_listed_with_its_location_as_endpoint_and_can_be_renewed(
    api: webtest.TestApp, clock: FakeClock, location: str, endpoint: dict[str, str]
) -> None:
    native_body = {
        "service_name": "reviews", "location": location, "instance_id": "r-1", "ttl": 10,
        "metadata": {"zone": "eu", "count": "2"},
    }  # fmt: skip
    api.post_json("/keyard", native_body, headers=as_(A))
    (shown,) = listed(api)
    assert shown["endpoint"] == endpoint
    assert shown["metadata"] == {"zone": "eu", "count": "2"}  # strings as they are
    assert shown["id"] == mapping.encoded_name("reviews") + ".r-1"
    clock.advance(8)
    assert heartbeat(api, shown["id"]).status_int == 200
    clock.advance(8)
    assert [i["instance_id"] for i in native(api)] == ["r-1"]
    assert api.delete(f"/api/v1/instances/{shown['id']}", headers=as_(A)).status_int == 200
    assert native(api) == []


def test_a_lyft_host_and_an_amalgam8_instance_see_each_other(api: webtest.TestApp) -> None:
    form = {"ip": "10.0.0.5", "port": "8080", "service_repo_name": "reviews-repo"}
    api.post("/v1/registration/reviews", form, headers=as_(A))
    register(api, endpoint={"type": "http", "value": "10.0.0.6:8080"})
    endpoints = [i["endpoint"] for i in listed(api)]
    assert {"type": "http", "value": "10.0.0.5:8080"} in endpoints
    assert {"type": "http", "value": "10.0.0.6:8080"} in endpoints
    hosts = api.get("/v1/registration/reviews", headers=as_(A)).json["hosts"]
    assert sorted((h["ip_address"], h["port"]) for h in hosts) == [
        ("10.0.0.5", 8080), ("10.0.0.6", 8080)]  # fmt: skip


# -- namespaces --------------------------------------------------------------------------


def test_two_namespaces_never_see_or_change_each_others_instances(api: webtest.TestApp) -> None:
    id_a = register(api, A, metadata={"team": "a"})["id"]
    assert listed(api, B, status="ALL") == []
    assert api.get("/api/v1/services", headers=as_(B)).json == {"services": []}
    answer = api.get("/api/v1/services/reviews", headers=as_(B), expect_errors=True)
    assert_error(answer, 404)
    assert_error(heartbeat(api, id_a, B), 410)
    answer = api.delete(f"/api/v1/instances/{id_a}", headers=as_(B), expect_errors=True)
    assert_error(answer, 410)
    # The same service and endpoint in B is B's own instance, with the same id.
    id_b = register(api, B, metadata={"team": "b"})["id"]
    assert id_b == id_a
    assert [i["metadata"] for i in listed(api, A)] == [{"team": "a"}]
    assert [i["metadata"] for i in listed(api, B)] == [{"team": "b"}]
    api.delete(f"/api/v1/instances/{id_b}", headers=as_(B))
    assert [i["metadata"] for i in listed(api, A)] == [{"team": "a"}]
    assert listed(api, B) == []


# -- fuzz ----------------------------------------------------------------------------------

ODD: list[object] = [
    "", " ", "reviews", "\ud800", "a\x00b", "ü/🚀?#%", "9" * 3000, -1, 0, 1.5, 10**30,
    True, None, [], ["a"], {}, {"type": "http"}, {"type": "user", "value": "\ud800"},
    {"type": "http", "value": "x", "extra": 1}, {"a": {"b": [1, 2]}},
]  # fmt: skip
FIELDS = ["service_name", "endpoint", "status", "tags", "metadata", "ttl", "id", "x"]
PATHS = [
    "/api/v1/instances", "/api/v1/instances/{id}", "/api/v1/instances/{id}/heartbeat",
    "/api/v1/services", "/api/v1/services/{name}", "/api/v1/{name}",
]  # fmt: skip
PIECES = ["reviews", "cmV2aWV3cw.x", "%ff", "%2F", "..", "a.b", "%F0%9F%9A%80", "x" * 300, "%00"]
QUERIES = ["", "status=ALL", "tags=,", "fields=,", "fields=id,id", "status=%ff", "id=", "a=b"]


def test_no_input_gives_a_500(api: webtest.TestApp) -> None:
    rng = random.Random(13)
    register(api)
    for _ in range(400):
        fields = body()
        for _ in range(rng.randint(0, 3)):
            fields[rng.choice(FIELDS)] = rng.choice(ODD)
        raw = json.dumps(fields).encode("utf-8", "surrogatepass")
        if rng.random() < 0.1:
            raw = raw[: rng.randint(0, len(raw))]
        path = rng.choice(PATHS).format(id=rng.choice(PIECES), name=rng.choice(PIECES))
        query = rng.choice(QUERIES)
        method = rng.choice(["GET", "POST", "PUT", "DELETE"])
        content_type = rng.choice(["application/json", "text/plain", ""])
        url = f"{path}?{query}" if query else path
        raw_path = {"REQUEST_URI": url} if rng.random() < 0.5 else {}  # as gunicorn gives it
        answer = api.request(
            url, method=method, body=raw if method != "GET" or rng.random() < 0.2 else b"",
            headers={**as_(A), "Content-Type": content_type}, environ=raw_path,
            expect_errors=True,
        )  # fmt: skip
        assert answer.status_int < 500, (method, path, query, raw[:200], answer.body[:300])
        if answer.status_int >= 400:
            assert "Error" in answer.json, (method, path, answer.body[:300])
