"""The native API's new fields and the services tree, through webtest on the memory store."""

from __future__ import annotations

import urllib.parse

import pytest
import webtest

from keyard.app import create_app
from keyard.model import derived_instance_id
from keyard.stores.memory import MemoryStore
from tests.conftest import FakeClock

A, B, C = "http://10.0.0.7:9000", "http://10.0.0.8:9000", "http://10.0.0.9:9000"


@pytest.fixture
def api(clock: FakeClock) -> webtest.TestApp:
    clock.now = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    return webtest.TestApp(create_app({}, store=MemoryStore(), clock=clock))


def get(api: webtest.TestApp, path: str, status: int = 200) -> webtest.TestResponse:
    """GET a path as a client sends it (percent-encoded), as gunicorn hands it over."""
    return api.get(path, status=status, extra_environ={"RAW_URI": path})


def error(response: webtest.TestResponse, *words: str) -> None:
    assert response.content_type == "application/json"
    assert set(response.json) == {"title", "description"}
    for word in words:
        assert word in response.json["description"], response.json


def test_post_with_new_fields_answers_the_full_record(api: webtest.TestApp) -> None:
    body = api.post_json(
        "/keyard",
        {"service_name": "payments", "version": "2", "location": A, "instance_id": "p-1",
         "tags": ["canary", "az-a"], "metadata": {"revision": "9f1c"}, "weight": 50},
        status=201,
    ).json
    assert body == {
        "namespace": "default", "service_name": "payments", "version": "2",
        "instance_id": "p-1", "location": A, "status": "UP", "tags": ["canary", "az-a"],
        "metadata": {"revision": "9f1c"}, "weight": 50, "ttl": 30,
        "registered_at": "2027-01-15T08:00:00.000Z",
        "last_heartbeat_at": "2027-01-15T08:00:00.000Z",
        "expires_at": "2027-01-15T08:00:30.000Z",
    }


def test_post_without_new_fields_answers_as_keyard_0_2_did(api: webtest.TestApp) -> None:
    response = api.post("/keyard", {"service_name": "payments", "version": "2", "location": A})
    assert response.body == (
        b'{"service_name": "payments", "version": "2", "location": "http://10.0.0.7:9000", '
        b'"ttl": 30, "expires_at": "2027-01-15T08:00:30.000Z"}'
    )


def test_a_form_carries_tags_metadata_and_weight(api: webtest.TestApp) -> None:
    body = api.post(
        "/keyard",
        "service_name=web&location=x&tags=canary,az-a&metadata.revision=9f1c&metadata.team=pay"
        "&weight=5&status=starting",
        content_type="application/x-www-form-urlencoded",
    ).json
    assert (body["tags"], body["metadata"], body["weight"], body["status"]) == (
        ["canary", "az-a"], {"revision": "9f1c", "team": "pay"}, 5, "STARTING")


def test_empty_form_values_clear_tags_and_metadata(api: webtest.TestApp) -> None:
    api.post("/keyard", "service_name=web&location=x&tags=a&metadata.k=v",
             content_type="application/x-www-form-urlencoded")
    body = api.put("/keyard", "service_name=web&location=x&tags=&metadata=",
                   content_type="application/x-www-form-urlencoded").json
    assert (body["tags"], body["metadata"]) == ([], {})


def test_a_heartbeat_without_the_fields_keeps_them(api: webtest.TestApp) -> None:
    api.post_json("/keyard", {"service_name": "web", "location": "x", "tags": ["t"], "weight": 3})
    api.put("/keyard", {"service_name": "web", "location": "x"})
    (record,) = get(api, "/keyard/services/web").json["instances"]
    assert (record["tags"], record["weight"]) == (["t"], 3)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"version": 2}, ["version must be a string, got int 2", "quote it"]),
        ({"ttl": "abc"}, ["ttl must be a whole number of seconds between 1 and 86400"]),
        ({"ttl": 30.5}, ["ttl must be a whole number", "30.5"]),
        ({"weight": "heavy"}, ["weight must be a whole number between 0 and 1000"]),
        ({"weight": 1001}, ["weight must be between 0 and 1000, got 1001"]),
        ({"weight": True}, ["weight must be a whole number"]),
        ({"tags": "a,a"}, ["tag 'a' is given more than once"]),
        ({"tags": [1]}, ["tags must be a list of strings"]),
        ({"tags": {"a": 1}}, ["tags must be a list of strings"]),
        ({"metadata": {"k": 1}}, ["metadata value of 'k' must be a string"]),
        ({"metadata": ["k"]}, ["metadata must be a JSON object of strings"]),
        ({"status": "sleeping"}, ["status 'SLEEPING' is not known", "OUT_OF_SERVICE"]),
        ({"instance_id": ""}, ["instance_id must not be empty"]),
        ({"instance_id": "x" * 129}, ["instance_id is 129 characters long; the limit is 128"]),
        ({"metadata": {"a": "b"}, "metadata.c": "d"}, ["not both"]),
        ({"colour": "red"}, ["unknown field(s) 'colour'"]),
    ],
)
def test_bad_new_fields_are_400_naming_the_field_and_the_bound(
    api: webtest.TestApp, body: dict[str, object], words: list[str]
) -> None:
    response = api.post_json(
        "/keyard", {"service_name": "web", "location": "x", **body}, status=400
    )
    error(response, *words)


@pytest.mark.parametrize("ttl", [30, 30.0, "30"])
def test_a_whole_number_is_a_json_number_or_its_digits(api: webtest.TestApp, ttl: object) -> None:
    body = api.post_json("/keyard", {"service_name": "web", "location": "x", "ttl": ttl}).json
    assert body["ttl"] == 30


def test_json_sent_as_a_form_says_to_send_the_json_content_type(api: webtest.TestApp) -> None:
    response = api.post(
        "/keyard", '{"service_name":"x","location":"y"}',
        content_type="application/x-www-form-urlencoded", status=415,
    )
    error(response, "looks like JSON", "Content-Type: application/json")


def test_lookups_answer_up_instances_unless_status_says_otherwise(api: webtest.TestApp) -> None:
    api.post("/keyard", {"service_name": "web", "location": A})
    api.post("/keyard", {"service_name": "web", "location": B, "status": "DOWN"})
    api.post("/keyard", {"service_name": "web", "location": C, "status": "STARTING"})

    def result(query: str) -> object:
        return api.get(f"/keyard?service_name=web{query}").json["result"]

    assert result("") == [A]
    assert result("&status=DOWN") == [B]
    assert result("&status=down,STARTING") == [B, C]
    assert result("&status=any") == [A, B, C]
    assert result("&status=DOWN&load_balancer_strategy=random") == B
    error(api.get("/keyard?service_name=web&status=BROKEN", status=400), "status 'BROKEN'", "any")


def test_tag_keeps_instances_with_every_listed_tag(api: webtest.TestApp) -> None:
    api.post_json("/keyard", {"service_name": "web", "location": A, "tags": ["canary", "az-a"]})
    api.post_json("/keyard", {"service_name": "web", "location": B, "tags": ["az-a"]})
    assert api.get("/keyard?service_name=web&tag=az-a").json["result"] == [A, B]
    assert api.get("/keyard?service_name=web&tag=canary,az-a").json["result"] == [A]
    assert api.get("/keyard?service_name=web&tag=az-b").json["result"] == []
    chosen = api.get("/keyard?service_name=web&tag=canary&load_balancer_strategy=round_robin")
    assert chosen.json["result"] == A
    none = api.get("/keyard?service_name=web&tag=az-b&load_balancer_strategy=random", status=404)
    error(none, "no live instance of service 'web' with tag(s) az-b")


def test_weighted_never_picks_weight_zero_and_404s_when_all_are_zero(
    api: webtest.TestApp,
) -> None:
    api.post_json("/keyard", {"service_name": "web", "location": A, "weight": 0})
    strategy = "/keyard?service_name=web&load_balancer_strategy=weighted"
    error(api.get(strategy, status=404), "weight 0")
    api.post_json("/keyard", {"service_name": "web", "location": B, "weight": 1})
    assert {api.get(strategy).json["result"] for _ in range(20)} == {B}


def test_an_unknown_strategy_lists_weighted(api: webtest.TestApp) -> None:
    response = api.get("/keyard?service_name=web&load_balancer_strategy=fastest", status=400)
    error(response, "valid: random, round_robin, weighted")


# -- the services tree --------------------------------------------------------------


def test_services_lists_each_service_with_its_counts_sorted(api: webtest.TestApp) -> None:
    assert get(api, "/keyard/services").json == {"services": [], "index": 1}
    api.post("/keyard", {"service_name": "web", "location": A})
    api.post("/keyard", {"service_name": "web", "location": B, "status": "DOWN"})
    api.post("/keyard", {"service_name": "api", "location": C})
    assert get(api, "/keyard/services").json == {
        "services": [
            {"service_name": "api", "instances": 1, "up": 1},
            {"service_name": "web", "instances": 2, "up": 1},
        ],
        "index": 4,
    }


def test_a_service_lists_full_records_of_every_status_with_filters(api: webtest.TestApp) -> None:
    api.post_json("/keyard", {"service_name": "web", "version": "2", "location": B,
                              "tags": ["t"]})
    api.post_json("/keyard", {"service_name": "web", "version": "1", "location": C,
                              "status": "DOWN"})
    api.post_json("/keyard", {"service_name": "web", "version": "2", "location": A})
    body = get(api, "/keyard/services/web").json
    assert body["service_name"] == "web"
    assert [(i["version"], i["location"]) for i in body["instances"]] == [
        ("1", C), ("2", A), ("2", B)]
    assert body["instances"][0]["status"] == "DOWN"

    def where(query: str) -> list[str]:
        return [i["location"] for i in get(api, f"/keyard/services/web?{query}").json["instances"]]

    assert where("version=2") == [A, B]
    assert where("tag=t") == [B]
    assert where("status=UP") == [A, B]
    assert where("status=DOWN&version=1") == [C]
    assert get(api, "/keyard/services/nobody").json == {
        "service_name": "nobody", "instances": [], "index": 1}
    error(get(api, "/keyard/services/web?colour=red", status=400), "unknown field(s) 'colour'")


def test_one_instance_is_got_and_deleted_by_its_id(api: webtest.TestApp) -> None:
    api.post("/keyard", {"service_name": "web", "location": A})
    instance_id = derived_instance_id("1.0", A)
    record = get(api, f"/keyard/services/web/instances/{instance_id}").json
    assert (record["instance_id"], record["location"]) == (instance_id, A)
    deleted = api.delete(f"/keyard/services/web/instances/{instance_id}").json
    assert deleted["deregistered"]["location"] == A
    error(get(api, f"/keyard/services/web/instances/{instance_id}", status=404), instance_id)
    error(api.delete(f"/keyard/services/web/instances/{instance_id}", status=404), instance_id)


def test_maintenance_sets_and_removes_an_override_that_heartbeats_keep(
    api: webtest.TestApp, clock: FakeClock
) -> None:
    api.post_json("/keyard", {"service_name": "web", "location": A, "instance_id": "i-1"})
    status = "/keyard/services/web/instances/i-1/status"
    body = api.put_json(status, {"status": "OUT_OF_SERVICE"}).json
    assert (body["status"], body["status_override"]) == ("OUT_OF_SERVICE", "OUT_OF_SERVICE")
    assert body["expires_at"] == "2027-01-15T08:00:30.000Z"  # the lease is unchanged
    assert api.get("/keyard?service_name=web").json["result"] == []
    clock.advance(10)
    api.put_json("/keyard", {"service_name": "web", "location": A, "instance_id": "i-1",
                             "status": "UP"})
    record = get(api, "/keyard/services/web/instances/i-1").json
    assert record["status"] == "OUT_OF_SERVICE"
    assert record["expires_at"] == "2027-01-15T08:00:40.000Z"
    cleared = api.delete(status).json
    assert cleared["status"] == "UP" and "status_override" not in cleared
    assert api.get("/keyard?service_name=web").json["result"] == [A]


def test_maintenance_answers_404_for_an_unknown_instance_and_400_for_a_bad_status(
    api: webtest.TestApp,
) -> None:
    error(api.put_json("/keyard/services/web/instances/x/status", {"status": "DOWN"}, status=404),
          "'x'")
    api.post_json("/keyard", {"service_name": "web", "location": A, "instance_id": "x"})
    error(api.put_json("/keyard/services/web/instances/x/status", {"status": "NAP"}, status=400),
          "status 'NAP' is not known")
    error(api.put_json("/keyard/services/web/instances/x/status", {}, status=400),
          "status is required")
    form = api.put("/keyard/services/web/instances/x/status", {"status": "down"})
    assert form.json["status"] == "DOWN"


@pytest.mark.parametrize("name", ["a/b", "ünï 服务", "100%", "..", "x?y#z", "colon:{brace}"])
def test_any_name_round_trips_through_the_path_percent_encoded(
    api: webtest.TestApp, name: str
) -> None:
    api.post_json("/keyard", {"service_name": name, "location": A, "instance_id": name})
    quoted = urllib.parse.quote(name, safe="")
    record = get(api, f"/keyard/services/{quoted}/instances/{quoted}").json
    assert (record["service_name"], record["instance_id"]) == (name, name)
    body = get(api, f"/keyard/services/{quoted}").json
    assert body["service_name"] == name and len(body["instances"]) == 1
    put = api.put_json(f"/keyard/services/{quoted}/instances/{quoted}/status",
                       {"status": "DOWN"}, extra_environ={
                           "RAW_URI": f"/keyard/services/{quoted}/instances/{quoted}/status"})
    assert put.json["status"] == "DOWN"


def test_a_path_segment_that_is_not_utf8_is_400(api: webtest.TestApp) -> None:
    error(get(api, "/keyard/services/%ff", status=400), "service_name", "UTF-8")


def test_trailing_slashes_are_the_same_resource(api: webtest.TestApp) -> None:
    api.post("/keyard", {"service_name": "web", "location": A})
    assert get(api, "/keyard//?service_name=web").json == {"result": [A]}
    assert get(api, "/keyard/services/").json["services"][0]["service_name"] == "web"


def test_delete_by_instance_id_on_keyard(api: webtest.TestApp) -> None:
    api.post_json("/keyard", {"service_name": "web", "location": A, "instance_id": "i-1"})
    body = api.delete("/keyard?service_name=web&instance_id=i-1").json
    assert body == {"deregistered": {"service_name": "web", "version": "1.0", "location": A,
                                     "instance_id": "i-1"}}


def test_delete_by_location_finds_an_instance_with_its_own_id(api: webtest.TestApp) -> None:
    api.post_json("/keyard", {"service_name": "web", "location": A, "instance_id": "i-1"})
    api.delete(f"/keyard?service_name=web&location={urllib.parse.quote(A)}")
    assert get(api, "/keyard/services/web").json["instances"] == []


def test_unknown_paths_under_keyard_are_404_naming_the_path(api: webtest.TestApp) -> None:
    error(get(api, "/keyard/nothing", status=404), "/keyard/nothing")
    error(get(api, "/keyard/services/web/instances", status=404), "/keyard/services/web/instances")


def test_methods_a_route_does_not_serve_are_405_listing_the_ones_it_does(
    api: webtest.TestApp,
) -> None:
    error(api.post("/keyard/services", status=405), "POST", "GET")
    error(api.post("/keyard/services/web/instances/x/status", status=405), "PUT", "DELETE")
