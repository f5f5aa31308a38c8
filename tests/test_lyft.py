"""lyft's discovery API (Envoy v1 SDS) through webtest, on the memory and sqlite stores."""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path
from typing import Any

import pytest
import webtest

from keyard.api.lyft import hosts
from keyard.app import create_app
from keyard.errors import InvalidInput, NotFound
from keyard.model import InstanceKey, Registration
from keyard.registry import Registry
from keyard.stores import create_store
from keyard.stores.base import Store
from keyard.stores.memory import MemoryStore
from keyard.stores.sqlite import SqliteStore
from tests.conftest import FakeClock
from tests.redis_server import RedisServer

TAGS = {"az": "us-east-1a", "instance_id": "i-0abc", "region": "us-east-1"}


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    built: Store = (
        MemoryStore()
        if request.param == "memory"
        else SqliteStore.from_options({"path": str(tmp_path / "registry.db")})
    )
    yield built
    built.close()


@pytest.fixture
def api(store: Store, clock: FakeClock) -> webtest.TestApp:
    return webtest.TestApp(create_app({}, store=store, clock=clock))


def register(
    api: webtest.TestApp, service: str = "web", status: int = 200, **form: object
) -> webtest.TestResponse:
    fields: dict[str, object] = {
        "ip": "10.0.0.5",
        "port": "8080",
        "revision": "abc123",
        "service_repo_name": "web-repo",
        "tags": json.dumps(TAGS),
        **form,
    }
    sent = {name: value for name, value in fields.items() if value is not None}
    return api.post(f"/v1/registration/{service}", sent, status=status, expect_errors=True)


def sds(api: webtest.TestApp, service: str = "web", **kwargs: Any) -> dict[str, Any]:
    answer: dict[str, Any] = api.get(f"/v1/registration/{service}", **kwargs).json
    return answer


def native(api: webtest.TestApp, service: str = "web") -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = api.get(f"/keyard/services/{service}").json["instances"]
    return found


def assert_error(response: webtest.TestResponse, status: int, *words: str) -> None:
    assert response.status_int == status, response
    assert response.content_type == "application/json"
    assert set(response.json) == {"error"}, response.json
    for word in words:
        assert word in response.json["error"], response.json


def assert_envoy_takes(answer: dict[str, Any]) -> None:
    """What Envoy's v1 SDS requires of every host (one bad host drops the whole update)."""
    assert set(answer) == {"env", "hosts", "service"}
    for host in answer["hosts"]:
        assert hosts.is_ipv4(host["ip_address"])
        assert type(host["port"]) is int and 1 <= host["port"] <= 65535
        tags = host["tags"]
        assert type(tags["az"]) is str
        assert type(tags["canary"]) is bool
        weight = tags["load_balancing_weight"]
        assert type(weight) is int and 1 <= weight <= 100


# -- registration, the SDS answer, heartbeats ---------------------------------------------


def test_a_form_post_registers_and_sds_answers_it_as_lyft_does(
    api: webtest.TestApp, clock: FakeClock
) -> None:
    clock.now = 1_800_000_000.25  # 2027-01-15 08:00:00.25 UTC
    response = register(api, tags=json.dumps({**TAGS, "canary": True, "load_balancing_weight": 40}))
    assert response.status_int == 200 and response.json == {}
    answer = sds(api)
    assert answer == {
        "env": "default",
        "service": "web",
        "hosts": [
            {
                "ip_address": "10.0.0.5",
                "last_check_in": "2027-01-15 08:00:00.250000",
                "port": 8080,
                "revision": "abc123",
                "service": "web",
                "service_repo_name": "web-repo",
                "tags": {**TAGS, "canary": True, "load_balancing_weight": 40},
            }
        ],
    }
    assert_envoy_takes(answer)


def test_a_lyft_host_is_a_keyard_instance_with_the_documented_fields(api: webtest.TestApp) -> None:
    register(api, tags=json.dumps({**TAGS, "canary": False, "load_balancing_weight": 40,
                                   "rack": 7, "labels": ["a"]}))
    [instance] = native(api)
    assert instance["instance_id"] == "10.0.0.5"
    assert instance["location"] == "http://10.0.0.5:8080"
    assert instance["version"] == "abc123"
    assert instance["weight"] == 400
    assert instance["status"] == "UP"
    assert instance["ttl"] == 30  # keyard's default_ttl
    assert instance["metadata"] == {
        "lyft.service_repo_name": "web-repo",
        "lyft.tag.az": "us-east-1a",
        "lyft.tag.instance_id": "i-0abc",
        "lyft.tag.region": "us-east-1",
        "lyft.json.canary": "false",
        "lyft.json.rack": "7",
        "lyft.json.labels": '["a"]',
    }
    [host] = sds(api)["hosts"]
    assert host["tags"] == {**TAGS, "canary": False, "load_balancing_weight": 40, "rack": 7,
                            "labels": ["a"]}


def test_a_post_of_the_same_host_is_the_heartbeat_200_tags_merged_other_fields_replaced(
    api: webtest.TestApp, clock: FakeClock
) -> None:
    register(api, tags=json.dumps({**TAGS, "canary": True, "load_balancing_weight": 30}))
    clock.advance(20)
    response = register(
        api, port="9090", revision="def456", service_repo_name=None,
        tags=json.dumps({"az": "us-east-1b", "team": "pay"}),
    )  # fmt: skip
    assert response.status_int == 200 and response.json == {}
    [host] = sds(api)["hosts"]
    assert host["port"] == 9090 and host["revision"] == "def456"
    assert host["service_repo_name"] == ""  # replaced, as lyft blanks it
    assert host["tags"] == {
        "az": "us-east-1b", "instance_id": "i-0abc", "region": "us-east-1", "canary": True,
        "team": "pay", "load_balancing_weight": 30,
    }  # fmt: skip
    clock.advance(20)  # 40 s after the first post: alive by the heartbeat's lease
    assert len(sds(api)["hosts"]) == 1
    assert len(native(api)) == 1  # one host: the same instance, not a second one


def test_a_host_expires_after_default_ttl_and_answers_without_500s(
    api: webtest.TestApp, clock: FakeClock
) -> None:
    register(api)
    clock.advance(31)
    assert sds(api)["hosts"] == []
    assert api.get("/v1/registration/repo/web-repo").json["hosts"] == []
    response = api.post("/v1/loadbalancing/web/10.0.0.5", {"load_balancing_weight": "5"},
                        expect_errors=True)
    assert_error(response, 404, "10.0.0.5")
    assert api.post("/v1/loadbalancing/web", {"load_balancing_weight": "5"}).status_int == 204
    assert_error(api.delete("/v1/registration/web/10.0.0.5", expect_errors=True), 400)
    assert register(api).status_int == 200  # registers again
    assert len(sds(api)["hosts"]) == 1


def test_revision_and_tags_are_optional(api: webtest.TestApp) -> None:
    register(api, revision=None, tags=None, service_repo_name=None)
    [host] = sds(api)["hosts"]
    assert host["revision"] == "1.0"
    assert host["tags"] == {"az": "", "canary": False, "load_balancing_weight": 10}


def test_auto_ip_takes_the_last_x_forwarded_for_entry_else_the_peer(api: webtest.TestApp) -> None:
    form = {"port": "8080", "auto_ip": "true"}
    headers = {"X-Forwarded-For": "1.2.3.4, 10.0.0.77"}
    assert api.post("/v1/registration/web", form, headers=headers).json == {}
    api.post("/v1/registration/web", form, extra_environ={"REMOTE_ADDR": "10.0.0.88"})
    assert [h["ip_address"] for h in sds(api)["hosts"]] == ["10.0.0.77", "10.0.0.88"]
    response = api.post("/v1/registration/web", form, headers={"X-Forwarded-For": "::1"},
                        expect_errors=True)
    assert_error(response, 400, "auto_ip", "X-Forwarded-For", "IPv4")
    response = api.post("/v1/registration/web", {"port": "8080"}, expect_errors=True)
    assert_error(response, 400, "ip is required", "auto_ip")


# -- what SDS leaves out --------------------------------------------------------------------


def test_native_instances_are_shown_when_their_location_is_an_ipv4_host_and_port(
    api: webtest.TestApp,
) -> None:
    for location in ("http://10.0.0.6:8080", "10.0.0.7:9000", "https://10.0.0.8:8443/",
                     "http://myhost:8080", "http://[::1]:8080", "http://10.0.0.9",
                     "http://10.0.0.10:8080/api", "http://u@10.0.0.11:80", "10.0.0.12:99999",
                     "http://010.0.0.1:80"):
        api.post_json("/keyard", {"service_name": "web", "location": location}, status=201)
    api.post_json("/keyard", {"service_name": "web", "location": "http://10.0.0.13:80",
                              "weight": 0, "metadata": {"lyft.json.canary": "x",
                                                        "lyft.tag.az": "zone"}})
    api.post_json("/keyard", {"service_name": "web", "location": "http://10.0.0.14:80",
                              "weight": 1000, "status": "DOWN"})
    api.post_json("/keyard", {"service_name": "web", "location": "http://10.0.0.15:80",
                              "weight": 1000, "metadata": {"lyft.json.canary": "x",
                                                           "lyft.json.az": "3"}})
    answer = sds(api)
    assert_envoy_takes(answer)
    shown = {(h["ip_address"], h["port"]): h for h in answer["hosts"]}
    assert sorted(shown) == [("10.0.0.15", 80), ("10.0.0.6", 8080), ("10.0.0.7", 9000),
                             ("10.0.0.8", 8443)]
    assert shown[("10.0.0.6", 8080)]["tags"] == {"az": "", "canary": False,
                                                 "load_balancing_weight": 10}
    assert shown[("10.0.0.15", 80)]["tags"] == {"az": "", "canary": False,
                                                "load_balancing_weight": 100}


def test_only_up_instances_are_shown_and_an_override_survives_lyft_heartbeats(
    api: webtest.TestApp,
) -> None:
    register(api)
    api.put_json("/keyard/services/web/instances/10.0.0.5/status", {"status": "OUT_OF_SERVICE"})
    assert sds(api)["hosts"] == []
    register(api)
    assert sds(api)["hosts"] == []
    api.delete("/keyard/services/web/instances/10.0.0.5/status")
    assert len(sds(api)["hosts"]) == 1


@pytest.mark.parametrize(("keyard", "lyft"), [(0, 1), (1, 1), (10, 1), (11, 2), (100, 10),
                                              (555, 56), (1000, 100)])
def test_keyard_weights_map_onto_1_to_100(keyard: int, lyft: int) -> None:
    assert hosts.lyft_weight(keyard) == lyft


def test_every_lyft_weight_round_trips() -> None:
    assert all(hosts.lyft_weight(hosts.keyard_weight(w)) == w for w in range(1, 101))


# -- delete, weights, repo, healthcheck ------------------------------------------------------


def test_delete_removes_the_host_and_an_unknown_host_is_400(api: webtest.TestApp) -> None:
    register(api)
    api.post_json("/keyard", {"service_name": "web", "location": "http://10.0.0.5:7000"})
    register(api, ip="10.0.0.6")
    response = api.delete("/v1/registration/web/10.0.0.5")
    assert response.status_int == 200 and response.json == {}
    assert [i["location"] for i in native(api)] == ["http://10.0.0.6:8080"]
    assert_error(api.delete("/v1/registration/web/10.0.0.5", expect_errors=True), 400,
                 "no host 10.0.0.5", "'web'")
    assert_error(api.delete("/v1/registration/web/myhost", expect_errors=True), 400,
                 "ip_address", "IPv4")


def test_weight_updates_for_one_host_and_for_all_keep_the_lease(
    api: webtest.TestApp, clock: FakeClock
) -> None:
    register(api)
    register(api, ip="10.0.0.6")
    clock.advance(20)
    response = api.post("/v1/loadbalancing/web/10.0.0.5", {"load_balancing_weight": "70"})
    assert response.status_int == 204 and response.body == b""
    assert {h["ip_address"]: h["tags"]["load_balancing_weight"] for h in sds(api)["hosts"]} == {
        "10.0.0.5": 70, "10.0.0.6": 10}  # fmt: skip
    assert api.post("/v1/loadbalancing/web", {"load_balancing_weight": "3"}).status_int == 204
    assert [h["tags"]["load_balancing_weight"] for h in sds(api)["hosts"]] == [3, 3]
    assert [i["weight"] for i in native(api)] == [30, 30]
    register(api)  # a heartbeat without the tag keeps the weight (lyft merges tags)
    assert [h["tags"]["load_balancing_weight"] for h in sds(api)["hosts"]] == [3, 3]
    clock.advance(11)  # 31 s after 10.0.0.6's registration: the weight updates held no lease
    assert [h["ip_address"] for h in sds(api)["hosts"]] == ["10.0.0.5"]
    assert api.post("/v1/loadbalancing/nothing", {"load_balancing_weight": "3"}).status_int == 204


@pytest.mark.parametrize("weight", [None, "", "0", "101", "-1", "1.5", "x", "9" * 40])
def test_a_bad_weight_update_is_400_naming_the_field(
    api: webtest.TestApp, weight: str | None
) -> None:
    register(api)
    form = {} if weight is None else {"load_balancing_weight": weight}
    for path in ("/v1/loadbalancing/web/10.0.0.5", "/v1/loadbalancing/web"):
        assert_error(api.post(path, form, expect_errors=True), 400, "load_balancing_weight")
    assert_error(api.post("/v1/loadbalancing/web/nope", {"load_balancing_weight": "5"},
                          expect_errors=True), 400, "ip_address")


def test_repo_lists_the_hosts_of_every_service_of_the_repo(api: webtest.TestApp) -> None:
    register(api, "web")
    register(api, "web-admin", ip="10.0.0.6")
    register(api, "other", ip="10.0.0.7", service_repo_name="other-repo")
    answer = api.get("/v1/registration/repo/web-repo").json
    assert answer["service_repo_name"] == "web-repo" and answer["env"] == "default"
    assert sorted((h["service"], h["ip_address"]) for h in answer["hosts"]) == [
        ("web", "10.0.0.5"), ("web-admin", "10.0.0.6")]  # fmt: skip
    assert api.get("/v1/registration/repo/none").json["hosts"] == []


def test_healthcheck_answers_ok(api: webtest.TestApp) -> None:
    response = api.get("/healthcheck")
    assert response.status_int == 200 and response.text == "OK"


# -- bad input: 4xx in lyft's error shape, never a 500 ---------------------------------------


@pytest.mark.parametrize(
    ("form", "words"),
    [
        ({"ip": "myhost"}, ("ip", "IPv4")),
        ({"ip": "::1"}, ("ip", "IPv4")),
        ({"ip": "10.0.0.256"}, ("ip", "IPv4")),
        ({"port": None}, ("port is required",)),
        ({"port": "0"}, ("port", "1 to 65535")),
        ({"port": "65536"}, ("port",)),
        ({"port": "80a"}, ("port",)),
        ({"tags": "{"}, ("tags", "JSON")),
        ({"tags": "[]"}, ("tags", "object")),
        ({"tags": '"az"'}, ("tags", "object")),
        ({"tags": '{"az": 1}'}, ("tags.az", "string")),
        ({"tags": '{"canary": "yes"}'}, ("tags.canary",)),
        ({"tags": '{"canary": 1}'}, ("tags.canary",)),
        ({"tags": '{"load_balancing_weight": 0}'}, ("tags.load_balancing_weight", "1 to 100")),
        ({"tags": '{"load_balancing_weight": 101}'}, ("tags.load_balancing_weight",)),
        ({"tags": '{"load_balancing_weight": "5"}'}, ("tags.load_balancing_weight",)),
        ({"tags": '{"load_balancing_weight": true}'}, ("tags.load_balancing_weight",)),
        ({"tags": '{"load_balancing_weight": 5.5}'}, ("tags.load_balancing_weight",)),
        ({"tags": '{"": 1}'}, ("tags", "empty name")),
        ({"tags": json.dumps({"x" * 200: 1})}, ("tag name", "limit")),
        ({"tags": json.dumps({"x": "y" * 2000})}, ("tags.x", "1024")),
        ({"tags": json.dumps({f"t{n}": n for n in range(70)})}, ("tags", "limit is 64")),
        ({"revision": "r" * 200}, ("revision", "limit is 128")),
        ({"service_repo_name": "r" * 2000}, ("service_repo_name", "limit")),
    ],
)
def test_a_bad_registration_is_400_naming_the_field(
    api: webtest.TestApp, form: dict[str, Any], words: tuple[str, ...]
) -> None:
    assert_error(register(api, **form), 400, *words)
    assert native(api) == []


def test_a_too_long_service_name_is_400(api: webtest.TestApp) -> None:
    assert_error(register(api, "s" * 200), 400, "service", "limit is 128")
    assert_error(api.get("/v1/registration/" + "s" * 200, expect_errors=True), 400, "service")


def test_unknown_paths_and_methods_answer_in_lyfts_error_shape(api: webtest.TestApp) -> None:
    assert_error(api.get("/v1/registration/a/b/c", expect_errors=True), 404, "lyft discovery")
    assert_error(api.get("/v1/registration/web/10.0.0.5", expect_errors=True), 405, "DELETE")
    assert_error(api.put("/v1/registration/web", expect_errors=True), 405, "GET, POST")
    response = api.post("/v1/registration/web", "x", content_type="text/plain",
                        expect_errors=True)
    assert_error(response, 415, "Content-Type")


def test_a_json_body_is_read_too(api: webtest.TestApp) -> None:
    body = {"ip": "10.0.0.5", "port": 8080, "tags": {"az": "z", "load_balancing_weight": 2}}
    assert api.post_json("/v1/registration/web", body).json == {}
    [host] = sds(api)["hosts"]
    assert host["tags"] == {"az": "z", "canary": False, "load_balancing_weight": 2}
    response = api.post_json("/v1/registration/web", {**body, "ip": 5}, expect_errors=True)
    assert_error(response, 400, "ip must be a string")


def test_random_requests_never_get_a_server_error(api: webtest.TestApp) -> None:
    rng = random.Random(20261203)
    values = ["", " ", "10.0.0.5", "1.2.3.4.5", "8080", "-1", "99999", "{}", "[]", "null",
              '{"az": null}', '{"canary": true}', '{"load_balancing_weight": 50}', "\x00",
              "ü🚀", "%ff", "9" * 500, "true", "{" * 1000 + "}" * 1000]
    names = ["ip", "port", "revision", "tags", "service_repo_name", "auto_ip",
             "load_balancing_weight", "x"]
    paths = ["/v1/registration/web", "/v1/registration/web/10.0.0.5", "/v1/registration/repo/r",
             "/v1/loadbalancing/web", "/v1/loadbalancing/web/10.0.0.5", "/v1/registration/%ff",
             "/v1/registration/web/%ff", "/v1/loadbalancing/%2F/x", "/healthcheck"]
    for _ in range(600):
        form = {rng.choice(names): rng.choice(values) for _ in range(rng.randint(0, 5))}
        if rng.random() < 0.5:
            form.setdefault("ip", "10.0.0.5")
            form.setdefault("port", "8080")
        method = rng.choice(["GET", "POST", "POST", "DELETE", "PUT"])
        body = "&".join(f"{k}={v}" for k, v in form.items()).encode("utf-8", "surrogatepass")
        response = api.request(
            rng.choice(paths), method=method, body=body,
            content_type="application/x-www-form-urlencoded", expect_errors=True,
        )  # fmt: skip
        assert response.status_int < 500, (method, form, response)
        if response.status_int >= 400 and method != "HEAD":
            assert set(response.json) == {"error"}
        sds_answer = response.content_type == "application/json" and "service" in response.json
        if response.status_int == 200 and method == "GET" and sds_answer:
            assert_envoy_takes(response.json)


# -- namespaces -------------------------------------------------------------------------------


def basic(token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"keyard:{token}".encode()).decode()}


def test_namespaces_are_isolated_with_basic_credentials(store: Store) -> None:
    api = webtest.TestApp(create_app({"auth": {"mode": "trusted"}}, store=store))
    form = {"ip": "10.0.0.5", "port": "8080", "tags": json.dumps(TAGS)}
    api.post("/v1/registration/web", form, headers=basic("team-a"))
    api.post("/v1/registration/web", {**form, "port": "9090"}, headers=basic("team-b"))
    a = api.get("/v1/registration/web", headers=basic("team-a")).json
    assert a["env"] == "team-a" and [h["port"] for h in a["hosts"]] == [8080]
    api.post("/v1/loadbalancing/web", {"load_balancing_weight": "9"}, headers=basic("team-b"))
    api.post("/v1/loadbalancing/web/10.0.0.5", {"load_balancing_weight": "8"},
             headers=basic("team-b"))
    api.delete("/v1/registration/web/10.0.0.5", headers=basic("team-b"))
    assert api.delete("/v1/registration/web/10.0.0.5", headers=basic("team-b"),
                      expect_errors=True).status_int == 400
    a = api.get("/v1/registration/web", headers=basic("team-a")).json
    assert [(h["port"], h["tags"]["load_balancing_weight"]) for h in a["hosts"]] == [(8080, 10)]
    b = api.get("/v1/registration/web", headers=basic("team-b")).json
    assert b["hosts"] == []
    assert api.get("/v1/registration/repo/web-repo", headers=basic("team-a")).json["hosts"] == []
    response = api.get("/v1/registration/web", expect_errors=True)
    assert_error(response, 401, "token")


def test_with_jwt_then_none_envoy_without_credentials_reads_default(store: Store) -> None:
    config = {"auth": {"mode": ["jwt", "none"], "jwt_secret": "s" * 48}}
    api = webtest.TestApp(create_app(config, store=store))
    api.post("/v1/registration/web", {"ip": "10.0.0.5", "port": "8080"})
    assert sds(api)["env"] == "default" and len(sds(api)["hosts"]) == 1
    response = api.get("/v1/registration/web", headers={"Authorization": "Bearer a.b.c"},
                       expect_errors=True)
    assert_error(response, 401)


# -- Registry.set_weight ---------------------------------------------------------------------


def test_registry_set_weight_changes_only_the_weight_and_keeps_the_lease(
    store: Store, clock: FakeClock
) -> None:
    registry = Registry(store, clock=clock)
    registered, _ = registry.register(
        Registration("ns", "web", "1.0", "http://10.0.0.5:80", ttl=30, tags=("a",),
                     metadata={"k": "v"}, weight=100)
    )  # fmt: skip
    clock.advance(10)
    updated = registry.set_weight(registered.key, 7)
    assert updated.weight == 7
    assert updated._replace(weight=100) == registered
    assert registry.get(registered.key) == updated
    with pytest.raises(InvalidInput, match="weight"):
        registry.set_weight(registered.key, 1001)
    with pytest.raises(NotFound):
        registry.set_weight(InstanceKey("ns", "web", "nope"), 7)
    clock.advance(21)
    with pytest.raises(NotFound):
        registry.set_weight(registered.key, 7)


# -- a store that is down ----------------------------------------------------------------------


def test_a_store_outage_is_a_503_in_lyfts_error_shape(
    own_redis_server: RedisServer, redis_prefix: str
) -> None:
    store = create_store(
        "redis", {"url": own_redis_server.url, "prefix": redis_prefix, "timeout": 0.5}
    )
    api = webtest.TestApp(create_app({}, store=store))
    try:
        assert register(api).status_int == 200
        own_redis_server.stop()
        for response in (
            api.get("/v1/registration/web", expect_errors=True),
            register(api, status=503),
            api.post("/v1/loadbalancing/web", {"load_balancing_weight": "5"}, expect_errors=True),
        ):
            assert_error(response, 503)
            assert response.headers["Retry-After"] == "1"
    finally:
        store.close()
