"""Eureka's API (/eureka, /eureka/v2) through webtest, on the memory store and a fake clock."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ElementTree
from typing import Any

import pytest
import webtest

from keyard.app import create_app
from keyard.errors import NotFound
from keyard.model import InstanceKey, Registration
from keyard.registry import Registry
from keyard.stores import create_store
from keyard.stores.memory import MemoryStore
from tests.conftest import FakeClock
from tests.redis_server import RedisServer

ROOTS = ("/eureka", "/eureka/v2")
JSON_ACCEPT = {"Accept": "application/json"}
ID = "10.0.0.7:payments:8080"


@pytest.fixture
def api(clock: FakeClock) -> webtest.TestApp:
    return webtest.TestApp(create_app({}, store=MemoryStore(), clock=clock))


def instance(
    app: str = "PAYMENTS", instance_id: str = ID, ip: str = "10.0.0.7", **fields: Any
) -> dict[str, Any]:
    """An InstanceInfo as py-eureka-client sends it (Jackson's JSON dialect)."""
    info: dict[str, Any] = {
        "instanceId": instance_id,
        "hostName": "host-7",
        "app": app,
        "ipAddr": ip,
        "status": "UP",
        "overriddenstatus": "UNKNOWN",
        "port": {"$": 8080, "@enabled": "true"},
        "securePort": {"$": 8443, "@enabled": "false"},
        "countryId": 1,
        "dataCenterInfo": {
            "@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo",
            "name": "MyOwn",
        },
        "leaseInfo": {"renewalIntervalInSecs": 30, "durationInSecs": 90},
        "metadata": {"management.port": "8080"},
        "homePageUrl": "http://host-7:8080/",
        "statusPageUrl": "http://host-7:8080/info",
        "healthCheckUrl": "http://host-7:8080/health",
        "vipAddress": app.lower(),
        "secureVipAddress": app.lower(),
        "lastUpdatedTimestamp": "1700000000000",
        "lastDirtyTimestamp": "1700000000000",
        "isCoordinatingDiscoveryServer": "false",
    }
    info.update(fields)
    return info


def register(
    api: webtest.TestApp, info: dict[str, Any] | None = None, root: str = "/eureka", **kw: Any
) -> webtest.TestResponse:
    info = info or instance()
    return api.post_json(f"{root}/apps/{info['app']}", {"instance": info}, **kw)


def xml_apps(api: webtest.TestApp, path: str = "/eureka/apps", **kw: Any) -> ElementTree.Element:
    response = api.get(path, **kw)
    assert response.content_type == "application/xml"
    return ElementTree.fromstring(response.body)


def json_apps(api: webtest.TestApp, path: str = "/eureka/apps") -> dict[str, Any]:
    response = api.get(path, headers=JSON_ACCEPT)
    assert response.content_type == "application/json"
    return response.json["applications"]


def native(api: webtest.TestApp, service: str = "payments", **kw: Any) -> list[dict[str, Any]]:
    return api.get(f"/keyard/services/{service}", **kw).json["instances"]


def assert_error(response: webtest.TestResponse, status: int, *words: str) -> None:
    assert response.status_int == status
    assert response.content_type == "application/json"
    for word in words:
        assert word in response.json["description"], response.json


# -- registering and reading ------------------------------------------------------------


@pytest.mark.parametrize("root", ROOTS)
def test_a_registration_answers_204_without_a_body_and_shows_in_xstreams_xml(
    api: webtest.TestApp, root: str
) -> None:
    response = register(api, root=root, status=204)
    assert response.body == b""
    apps = xml_apps(api, f"{root}/apps")
    assert apps.tag == "applications"
    assert apps.findtext("apps__hashcode") == "UP_1_"
    assert apps.findtext("versions__delta", "").isdigit()
    (application,) = apps.findall("application")
    assert application.findtext("name") == "PAYMENTS"
    (found,) = application.findall("instance")
    assert [child.tag for child in found][:12] == [
        "instanceId", "hostName", "app", "ipAddr", "status", "overriddenstatus",
        "port", "securePort", "countryId", "dataCenterInfo", "leaseInfo", "metadata",
    ]  # fmt: skip
    assert found.findtext("instanceId") == ID
    assert found.findtext("hostName") == "host-7"
    assert found.findtext("ipAddr") == "10.0.0.7"
    assert found.findtext("status") == "UP"
    assert found.findtext("overriddenstatus") == "UNKNOWN"
    port = found.find("port")
    assert port is not None and port.text == "8080" and port.get("enabled") == "true"
    secure = found.find("securePort")
    assert secure is not None and secure.text == "8443" and secure.get("enabled") == "false"
    center = found.find("dataCenterInfo")
    assert center is not None
    assert center.get("class") == "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo"
    assert center.findtext("name") == "MyOwn"
    assert found.findtext("leaseInfo/durationInSecs") == "90"
    assert found.findtext("leaseInfo/renewalIntervalInSecs") == "30"
    metadata = found.find("metadata")
    assert metadata is not None
    assert {child.tag: child.text for child in metadata} == {"management.port": "8080"}
    assert found.findtext("homePageUrl") == "http://host-7:8080/"
    assert found.findtext("healthCheckUrl") == "http://host-7:8080/health"
    assert found.findtext("vipAddress") == "payments"
    assert found.findtext("lastDirtyTimestamp") == "1700000000000"
    assert found.findtext("actionType") == "ADDED"
    assert found.findtext("countryId") == "1"


def test_both_roots_serve_one_registry(api: webtest.TestApp) -> None:
    register(api, root="/eureka/v2", status=204)
    assert api.get("/eureka/apps/PAYMENTS").body == api.get("/eureka/v2/apps/PAYMENTS").body


def test_head_answers_as_get_without_a_body(api: webtest.TestApp) -> None:
    register(api, status=204)
    for path in ("/eureka/apps", f"/eureka/apps/PAYMENTS/{ID}", "/eureka/vips/payments"):
        response = api.head(path, status=200)
        assert response.body == b"" and response.content_type == "application/xml"
    api.head("/eureka/apps/NOPE", status=404)


def test_json_only_when_accept_mentions_json(api: webtest.TestApp) -> None:
    register(api, status=204)
    for accept in (None, "*/*", "application/xml", "text/html"):
        headers = {"Accept": accept} if accept else {}
        assert api.get("/eureka/apps", headers=headers).content_type == "application/xml"
    for accept in ("application/json", "application/json;q=0.9, */*", "Application/JSON"):
        assert api.get("/eureka/apps", headers={"Accept": accept}).content_type == (
            "application/json"
        )


def test_json_answers_are_in_jacksons_shape(api: webtest.TestApp) -> None:
    register(api, status=204)
    apps = json_apps(api)
    assert apps["apps__hashcode"] == "UP_1_"
    assert isinstance(apps["versions__delta"], str)
    (application,) = apps["application"]
    assert application["name"] == "PAYMENTS"
    (info,) = application["instance"]
    assert info["port"] == {"$": 8080, "@enabled": "true"}
    assert info["securePort"] == {"$": 8443, "@enabled": "false"}
    assert info["dataCenterInfo"]["@class"].endswith("DefaultDataCenterInfo")
    assert info["metadata"] == {"management.port": "8080"}
    assert info["lastDirtyTimestamp"] == "1700000000000"
    assert info["countryId"] == 1
    one = api.get(f"/eureka/apps/PAYMENTS/{ID}", headers=JSON_ACCEPT).json
    assert one["instance"]["instanceId"] == ID
    app = api.get("/eureka/apps/PAYMENTS", headers=JSON_ACCEPT).json
    assert app["application"]["name"] == "PAYMENTS"


def test_an_empty_metadata_is_javas_empty_map_marker(api: webtest.TestApp) -> None:
    register(api, instance(metadata={"@class": "java.util.Collections$EmptyMap"}), status=204)
    info = api.get(f"/eureka/apps/PAYMENTS/{ID}", headers=JSON_ACCEPT).json["instance"]
    assert info["metadata"] == {"@class": "java.util.Collections$EmptyMap"}
    found = ElementTree.fromstring(api.get(f"/eureka/apps/PAYMENTS/{ID}").body)
    metadata = found.find("metadata")
    assert metadata is not None and list(metadata) == []
    assert metadata.get("class") == "java.util.Collections$EmptyMap"
    assert native(api)[0]["metadata"].get("@class") is None


def test_the_plain_json_dialect_and_no_wrapper_are_accepted(api: webtest.TestApp) -> None:
    info = instance(port=9000, securePort=443, countryId="1")
    info["leaseInfo"] = {"durationInSecs": "45"}
    api.post_json("/eureka/apps/PAYMENTS", info, status=204)
    (record,) = native(api)
    assert record["location"] == "http://10.0.0.7:9000"
    assert record["ttl"] == 45


def test_an_xml_registration_is_read_as_xstream_writes_it(api: webtest.TestApp) -> None:
    body = (
        "<instance><instanceId>x1</instanceId><hostName>h</hostName><app>BILLING</app>"
        "<ipAddr>10.0.0.9</ipAddr><status>STARTING</status>"
        '<port enabled="false">80</port><securePort enabled="true">8443</securePort>'
        '<dataCenterInfo class="com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo">'
        "<name>MyOwn</name></dataCenterInfo><leaseInfo><durationInSecs>30</durationInSecs>"
        "</leaseInfo><metadata><version>2</version><zone>a</zone></metadata>"
        "<vipAddress>billing,pay</vipAddress></instance>"
    )
    api.post("/eureka/v2/apps/billing", body, content_type="application/xml", status=204)
    (record,) = native(api, "billing")
    assert record["location"] == "https://10.0.0.9:8443"
    assert record["status"] == "STARTING"
    assert record["version"] == "2"
    assert record["ttl"] == 30
    assert record["tags"] == ["vip:billing", "vip:pay"]
    info = api.get("/eureka/apps/BILLING/x1", headers=JSON_ACCEPT).json["instance"]
    assert info["port"] == {"$": 80, "@enabled": "false"}
    assert info["securePort"] == {"$": 8443, "@enabled": "true"}
    assert info["vipAddress"] == "billing,pay"
    assert info["metadata"] == {"version": "2", "zone": "a"}


SPRING_BODY = {  # as Spring Cloud Netflix's RestTemplate transport sends it
    "instance": {
        "instanceId": "pay-7:payments:8080", "app": "PAYMENTS", "appGroupName": None,
        "ipAddr": "10.0.0.7", "sid": "na", "homePageUrl": "http://pay-7:8080/",
        "statusPageUrl": "http://pay-7:8080/actuator/info",
        "healthCheckUrl": "http://pay-7:8080/actuator/health",
        "secureHealthCheckUrl": None, "vipAddress": "payments", "secureVipAddress": "payments",
        "countryId": 1,
        "dataCenterInfo": {"@class": "com.netflix.appinfo.AmazonInfo", "name": "Amazon",
                           "metadata": {"availability-zone": "eu-west-1a", "instance-id": "i-1"}},
        "hostName": "pay-7", "status": "STARTING", "overriddenStatus": "UNKNOWN",
        "leaseInfo": {"renewalIntervalInSecs": 5, "durationInSecs": 15,
                      "registrationTimestamp": 0, "lastRenewalTimestamp": 0,
                      "evictionTimestamp": 0, "serviceUpTimestamp": 0},
        "isCoordinatingDiscoveryServer": False,
        "metadata": {"@class": "java.util.LinkedHashMap", "management.port": "8080"},
        "lastUpdatedTimestamp": 1700000000000, "lastDirtyTimestamp": 1700000000123,
        "actionType": None, "asgName": None,
        "port": {"$": "8080", "@enabled": True}, "securePort": {"$": 443, "@enabled": False},
    }
}  # fmt: skip


def test_springs_json_dialect_is_read_and_its_fields_echoed(api: webtest.TestApp) -> None:
    api.post_json("/eureka/apps/PAYMENTS", SPRING_BODY, status=204)
    (record,) = native(api)
    assert (record["location"], record["status"], record["ttl"]) == (
        "http://10.0.0.7:8080", "STARTING", 15,
    )  # fmt: skip
    info = api.get("/eureka/apps/PAYMENTS/pay-7:payments:8080", headers=JSON_ACCEPT).json
    info = info["instance"]
    assert info["dataCenterInfo"] == SPRING_BODY["instance"]["dataCenterInfo"]
    assert info["metadata"] == {"management.port": "8080"}
    assert info["lastDirtyTimestamp"] == "1700000000123"
    assert info["leaseInfo"]["renewalIntervalInSecs"] == 5
    assert info["statusPageUrl"] == "http://pay-7:8080/actuator/info"
    assert "appGroupName" not in info and "asgName" not in info
    found = ElementTree.fromstring(api.get("/eureka/apps/PAYMENTS/pay-7:payments:8080").body)
    center = found.find("dataCenterInfo")
    assert center is not None and center.get("class") == "com.netflix.appinfo.AmazonInfo"
    assert center.findtext("metadata/availability-zone") == "eu-west-1a"


def test_an_xml_registration_with_a_declaration_is_read(api: webtest.TestApp) -> None:
    body = (
        b'<?xml version="1.0" encoding="UTF-8"?><instance><instanceId>j1</instanceId>'
        b"<hostName>h</hostName><app>JAVA</app><ipAddr>10.0.0.2</ipAddr>"
        b'<port enabled="true">8080</port><dataCenterInfo class="x"><name>MyOwn</name>'
        b'</dataCenterInfo><metadata class="java.util.Collections$EmptyMap"/></instance>'
    )
    api.post("/eureka/v2/apps/JAVA", body, content_type="application/xml", status=204)
    assert native(api, "java")[0]["location"] == "http://10.0.0.2:8080"
    assert native(api, "java")[0]["ttl"] == 90


def test_app_names_are_case_insensitive_and_answered_upper_case(api: webtest.TestApp) -> None:
    register(api, instance(app="payments"), status=204)
    assert native(api)[0]["service_name"] == "payments"
    for name in ("payments", "Payments", "PAYMENTS"):
        found = ElementTree.fromstring(api.get(f"/eureka/apps/{name}").body)
        assert found.findtext("name") == "PAYMENTS"
        assert found.findtext("instance/app") == "PAYMENTS"
    api.put(f"/eureka/apps/Payments/{ID}", status=200)


def test_ids_with_colons_work_raw_and_percent_encoded(api: webtest.TestApp) -> None:
    register(api, status=204)
    encoded = ID.replace(":", "%3A")
    for path_id in (ID, encoded):
        assert api.put(f"/eureka/apps/PAYMENTS/{path_id}", status=200).body == b""
        found = ElementTree.fromstring(api.get(f"/eureka/apps/PAYMENTS/{path_id}").body)
        assert found.findtext("instanceId") == ID
        api.get(f"/eureka/instances/{path_id}", status=200)


def test_a_trailing_slash_is_optional(api: webtest.TestApp) -> None:
    api.post_json("/eureka/apps/PAYMENTS/", {"instance": instance()}, status=204)
    assert xml_apps(api, "/eureka/apps/").findtext("apps__hashcode") == "UP_1_"
    api.put(f"/eureka/v2/apps/PAYMENTS/{ID}/", status=200)
    api.get("/eureka/v2/apps/delta/", status=200)


def test_reads_of_unknown_apps_and_instances_are_404s(api: webtest.TestApp) -> None:
    assert_error(api.get("/eureka/apps/NOPE", status=404), 404, "NOPE")
    assert_error(api.get("/eureka/apps/NOPE/x", status=404), 404, "'x'")
    assert_error(api.get("/eureka/instances/x", status=404), 404, "'x'")
    apps = xml_apps(api)
    assert apps.findall("application") == [] and apps.findtext("apps__hashcode") == ""


def test_instances_vips_and_secure_vips(api: webtest.TestApp) -> None:
    register(api, instance(vipAddress="pay,Payments-Vip", secureVipAddress="pay-s"), status=204)
    register(api, instance(app="BILLING", instance_id="b1", vipAddress="bill"), status=204)
    found = ElementTree.fromstring(api.get("/eureka/instances/b1").body)
    assert found.findtext("app") == "BILLING"
    for path, ids in (
        ("/eureka/vips/payments-vip", [ID]),
        ("/eureka/vips/PAY", [ID]),
        ("/eureka/vips/bill", ["b1"]),
        ("/eureka/svips/pay-s", [ID]),
        ("/eureka/svips/pay", []),
        ("/eureka/v2/vips/none", []),
    ):
        apps = xml_apps(api, path)
        assert [i.findtext("instanceId") for i in apps.iter("instance")] == ids, path


# -- heartbeats, leases, cancel ---------------------------------------------------------


def test_a_heartbeat_is_200_and_an_unknown_instance_a_404_with_empty_bodies(
    api: webtest.TestApp,
) -> None:
    register(api, status=204)
    query = "status=UP&lastDirtyTimestamp=1700000000000"
    response = api.put(f"/eureka/apps/PAYMENTS/{ID}?{query}", status=200)
    assert response.body == b""
    for path in ("/eureka/apps/PAYMENTS/other", "/eureka/apps/BILLING/" + ID):
        response = api.put(f"{path}?{query}", status=404)
        assert response.body == b""
    # A client whose instance is newer than the one registered is asked to register again.
    newer = api.put(f"/eureka/apps/PAYMENTS/{ID}?status=UP&lastDirtyTimestamp=1700000000001",
                    status=404)  # fmt: skip
    assert newer.body == b""
    for bad in ("lastDirtyTimestamp=soon", "status=SLEEPY", "overriddenstatus=x"):
        response = api.put(f"/eureka/apps/PAYMENTS/{ID}?{bad}", status=400)
        assert response.body == b""


def test_a_heartbeat_extends_the_lease_and_changes_nothing_else(
    api: webtest.TestApp, clock: FakeClock
) -> None:
    register(api, status=204)
    before = native(api)[0]
    index = api.get("/keyard/services").json["index"]
    for _ in range(3):
        clock.advance(80)
        api.put(f"/eureka/apps/PAYMENTS/{ID}", status=200)
    after = native(api)[0]
    assert after["expires_at"] > before["expires_at"]
    assert {k: v for k, v in after.items() if "_at" not in k} == {
        k: v for k, v in before.items() if "_at" not in k
    }
    assert api.get("/keyard/services").json["index"] == index
    clock.advance(91)
    assert native(api) == []
    api.put(f"/eureka/apps/PAYMENTS/{ID}", status=404)


def test_the_lease_duration_is_clamped_into_the_ttl_bounds(clock: FakeClock) -> None:
    api = webtest.TestApp(
        create_app({"min_ttl": 10, "max_ttl": 60}, store=MemoryStore(), clock=clock)
    )
    for duration, ttl in ((90, 60), (5, 10), (0, 60), (-3, 60), (30, 30)):
        info = instance(leaseInfo={"durationInSecs": duration})
        register(api, info, status=204)
        assert native(api)[0]["ttl"] == ttl, duration
    register(api, instance(leaseInfo={}), status=204)
    assert native(api)[0]["ttl"] == 60


def test_cancel_removes_the_instance_then_is_a_404(api: webtest.TestApp) -> None:
    register(api, status=204)
    assert api.delete(f"/eureka/v2/apps/payments/{ID}", status=200).body == b""
    assert native(api) == []
    assert_error(api.delete(f"/eureka/apps/PAYMENTS/{ID}", status=404), 404, ID)


# -- overrides and metadata -------------------------------------------------------------


def test_an_out_of_service_override_survives_heartbeats_and_registrations(
    api: webtest.TestApp,
) -> None:
    register(api, status=204)
    query = "value=OUT_OF_SERVICE&lastDirtyTimestamp=1700000000000"
    assert api.put(f"/eureka/apps/PAYMENTS/{ID}/status?{query}", status=200).body == b""
    api.put(f"/eureka/apps/PAYMENTS/{ID}?status=UP&lastDirtyTimestamp=1700000000000", status=200)
    register(api, instance(lastDirtyTimestamp="1700000000005"), status=204)
    found = ElementTree.fromstring(api.get(f"/eureka/apps/PAYMENTS/{ID}").body)
    assert found.findtext("status") == "OUT_OF_SERVICE"
    assert found.findtext("overriddenstatus") == "OUT_OF_SERVICE"
    assert found.findtext("lastDirtyTimestamp") == "1700000000005"
    assert native(api)[0]["status_override"] == "OUT_OF_SERVICE"
    assert xml_apps(api).findtext("apps__hashcode") == "OUT_OF_SERVICE_1_"
    api.delete(f"/eureka/apps/PAYMENTS/{ID}/status?lastDirtyTimestamp=1", status=200)
    found = ElementTree.fromstring(api.get(f"/eureka/apps/PAYMENTS/{ID}").body)
    assert found.findtext("status") == "UP"
    assert found.findtext("overriddenstatus") == "UNKNOWN"


def test_a_registration_older_than_the_registered_instance_only_renews_it(
    api: webtest.TestApp, clock: FakeClock
) -> None:
    register(api, instance(lastDirtyTimestamp="1700000000005", metadata={"v": "new"}), status=204)
    clock.advance(60)
    stale = instance(lastDirtyTimestamp="1700000000001", metadata={"v": "old"}, status="DOWN")
    register(api, stale, status=204)
    (record,) = native(api)
    assert record["metadata"]["v"] == "new" and record["status"] == "UP"
    assert record["last_heartbeat_at"] != record["registered_at"]  # the lease was renewed
    register(api, instance(lastDirtyTimestamp="1700000000005", metadata={"v": "same"}),
             status=204)  # fmt: skip
    assert native(api)[0]["metadata"]["v"] == "same"  # an equal timestamp is taken


def test_a_registrations_overriddenstatus_sets_an_override_only_when_none_is_set(
    api: webtest.TestApp,
) -> None:
    register(api, instance(overriddenstatus="OUT_OF_SERVICE"), status=204)
    assert native(api)[0]["status_override"] == "OUT_OF_SERVICE"
    api.put(f"/eureka/apps/PAYMENTS/{ID}/status?value=DOWN", status=200)
    register(api, instance(overriddenstatus="OUT_OF_SERVICE"), status=204)
    assert native(api)[0]["status_override"] == "DOWN"


def test_bad_or_missing_status_values_are_400s(api: webtest.TestApp) -> None:
    register(api, status=204)
    path = f"/eureka/apps/PAYMENTS/{ID}/status"
    assert_error(api.put(f"{path}?value=SLEEPY", status=400), 400, "SLEEPY", "UP")
    assert_error(api.put(path, status=400), 400, "value is required")
    assert_error(api.put(f"{path}?value=UNKNOWN", status=400), 400, "DELETE")
    assert_error(api.put(f"{path}?value=UP&lastDirtyTimestamp=x", status=400), 400, "millis")
    assert_error(api.delete(f"{path}?value=x", status=400), 400, "value")
    assert_error(api.put("/eureka/apps/PAYMENTS/nope/status?value=UP", status=404), 404, "nope")


def test_metadata_updates_merge_and_hide_the_reserved_keys(api: webtest.TestApp) -> None:
    register(api, status=204)
    path = f"/eureka/apps/PAYMENTS/{ID}/metadata"
    assert api.put(f"{path}?zone=a&team=pay", status=200).body == b""
    api.put(f"{path}?zone=b", status=200)
    info = api.get(f"/eureka/apps/PAYMENTS/{ID}", headers=JSON_ACCEPT).json["instance"]
    assert info["metadata"] == {"management.port": "8080", "zone": "b", "team": "pay"}
    assert info["hostName"] == "host-7"  # the reserved keys are kept
    assert native(api)[0]["metadata"]["eureka.hostName"] == "host-7"
    assert_error(api.put(f"{path}?eureka.hostName=x", status=400), 400, "reserved")
    many = "&".join(f"k{n}=v" for n in range(64))
    assert_error(api.put(f"{path}?{many}", status=400), 400, "limit is 64")
    assert_error(api.put(f"{path}?k={'v' * 1025}", status=400), 400, "1024")
    assert_error(api.put("/eureka/apps/PAYMENTS/nope/metadata?a=b", status=404), 404)


# -- hashcode and delta -----------------------------------------------------------------


def test_the_hashcode_counts_every_status_of_the_whole_namespace(api: webtest.TestApp) -> None:
    for n in range(3):
        register(api, instance(instance_id=f"p{n}"), status=204)
    register(api, instance(app="BILLING", instance_id="b1", status="DOWN"), status=204)
    api.post_json("/keyard", {"service_name": "search", "location": "http://10.0.0.1:1",
                              "status": "STARTING"})  # fmt: skip
    for path in ("/eureka/apps", "/eureka/apps/delta"):
        assert xml_apps(api, path).findtext("apps__hashcode") == "DOWN_1_STARTING_1_UP_3_"
    assert json_apps(api)["apps__hashcode"] == "DOWN_1_STARTING_1_UP_3_"


def test_the_delta_lists_recent_changes_with_their_action(
    api: webtest.TestApp, clock: FakeClock
) -> None:
    register(api, instance(instance_id="added"), status=204)
    register(api, instance(instance_id="modified"), status=204)
    register(api, instance(instance_id="deleted"), status=204)
    clock.advance(1)
    api.put("/eureka/apps/PAYMENTS/modified/status?value=OUT_OF_SERVICE", status=200)
    api.delete("/eureka/apps/PAYMENTS/deleted", status=200)
    delta = xml_apps(api, "/eureka/apps/delta")
    actions = {i.findtext("instanceId"): i.findtext("actionType") for i in delta.iter("instance")}
    assert actions == {"added": "ADDED", "modified": "MODIFIED", "deleted": "DELETED"}
    assert delta.findtext("apps__hashcode") == "OUT_OF_SERVICE_1_UP_1_"
    index = api.get("/keyard/services").json["index"]
    assert delta.findtext("versions__delta") == str(index)
    assert json_apps(api, "/eureka/v2/apps/delta")["versions__delta"] == str(index)


def test_a_heartbeat_moves_neither_the_delta_nor_its_version(
    api: webtest.TestApp, clock: FakeClock
) -> None:
    register(api, status=204)
    before = api.get("/eureka/apps/delta").body
    api.put(f"/eureka/apps/PAYMENTS/{ID}", status=200)
    after = ElementTree.fromstring(api.get("/eureka/apps/delta").body)
    assert after.findtext("versions__delta") == ElementTree.fromstring(before).findtext(
        "versions__delta"
    )


class _NoLogStore(MemoryStore):
    """A store that keeps no change log (as a third-party store may not)."""

    watchable = False


def test_without_a_change_log_the_delta_is_every_instance_added(clock: FakeClock) -> None:
    api = webtest.TestApp(create_app({}, store=_NoLogStore(), clock=clock))
    register(api, status=204)
    register(api, instance(instance_id="other"), status=204)
    api.delete("/eureka/apps/PAYMENTS/other", status=200)
    delta = xml_apps(api, "/eureka/apps/delta")
    assert [i.findtext("actionType") for i in delta.iter("instance")] == ["ADDED"]
    assert delta.findtext("versions__delta") == "1"
    assert delta.findtext("apps__hashcode") == "UP_1_"


# -- the native API and Eureka see one registry -----------------------------------------


def test_a_native_instance_shows_in_eureka_with_its_location_parsed(
    api: webtest.TestApp,
) -> None:
    api.post_json("/keyard", {"service_name": "Search", "location": "http://10.0.0.3:9200",
                              "instance_id": "s1", "metadata": {"zone": "a"}})  # fmt: skip
    api.post_json("/keyard", {"service_name": "search", "location": "https://search.internal",
                              "instance_id": "s2", "tags": ["vip:search"]})  # fmt: skip
    found = api.get("/eureka/apps/SEARCH", headers=JSON_ACCEPT).json["application"]
    infos = {i["instanceId"]: i for i in found["instance"]}
    assert infos["s1"]["app"] == "SEARCH"
    assert infos["s1"]["hostName"] == infos["s1"]["ipAddr"] == "10.0.0.3"
    assert infos["s1"]["port"] == {"$": 9200, "@enabled": "true"}
    assert infos["s1"]["securePort"]["@enabled"] == "false"
    assert infos["s1"]["metadata"] == {"zone": "a"}
    assert infos["s2"]["hostName"] == "search.internal"
    assert infos["s2"]["securePort"] == {"$": 443, "@enabled": "true"}
    assert infos["s2"]["port"]["@enabled"] == "false"
    assert infos["s2"]["vipAddress"] == "search"
    assert infos["s1"]["leaseInfo"]["durationInSecs"] == 30
    # An override through Eureka is one through the native API, and a cancel removes it.
    api.put("/eureka/apps/search/s1/status?value=DOWN", status=200)
    assert api.get("/keyard/services/Search").json["instances"][0]["status"] == "DOWN"
    api.delete("/eureka/apps/SEARCH/s1", status=200)
    assert api.get("/keyard/services/Search").json["instances"] == []


def test_whatever_another_api_keeps_in_reserved_keys_eureka_clients_still_parse(
    api: webtest.TestApp,
) -> None:
    from py_eureka_client.eureka_basic import _build_applications

    junk = {
        "eureka.port": "x y", "eureka.securePort": "99999999 true", "eureka.dataCenterInfo": "{}",
        "eureka.lastDirtyTimestamp": "\u00b2", "eureka.countryId": "abc",
        "eureka.renewalIntervalInSecs": "\u00b2", "a b": "not an XML name", "@x": "y",
        "ok": "\x01ctrl <&>",
    }  # fmt: skip
    api.post_json("/keyard", {"service_name": "odd", "location": "not a url",
                              "instance_id": "o1", "metadata": junk})  # fmt: skip
    apps = _build_applications(ElementTree.fromstring(api.get("/eureka/apps").body))
    (found,) = apps.get_application("ODD").instances
    assert found.instanceId == "o1" and found.hostName == "not a url"
    assert found.dataCenterInfo.name == "MyOwn"
    assert found.metadata == {"ok": "\ufffdctrl <&>"}
    assert found.lastDirtyTimestamp > 0 and found.countryId == 1
    info = api.get("/eureka/apps/ODD/o1", headers=JSON_ACCEPT).json["instance"]
    assert info["metadata"] == {"a b": "not an XML name", "ok": "\x01ctrl <&>"}


def test_a_eureka_instance_shows_in_the_native_api(api: webtest.TestApp) -> None:
    register(api, instance(metadata={"version": "2.1", "zone": "a"}), status=204)
    (record,) = native(api)
    assert record["instance_id"] == ID
    assert record["location"] == "http://10.0.0.7:8080"
    assert record["version"] == "2.1"
    assert record["tags"] == ["vip:payments", "svip:payments"]
    assert record["metadata"]["zone"] == "a"
    assert record["metadata"]["eureka.lastDirtyTimestamp"] == "1700000000000"
    assert api.get("/keyard?service_name=payments&version=2.1").json["result"] == [
        "http://10.0.0.7:8080"
    ]


def test_one_instance_of_each_api_is_seen_through_every_other(api: webtest.TestApp) -> None:
    register(api, instance(app="REVIEWS", instance_id="e1", ip="10.0.0.7"), status=204)
    api.post("/v1/registration/reviews", {"ip": "10.0.0.5", "port": "8080",
                                          "service_repo_name": "reviews-repo"})  # fmt: skip
    api.post_json("/api/v1/instances", {"service_name": "reviews", "ttl": 30,
                                        "endpoint": {"type": "http", "value": "10.0.0.6:8080"}})
    found = xml_apps(api, "/eureka/apps/REVIEWS")
    addresses = sorted(
        (i.findtext("ipAddr"), i.findtext("port")) for i in found.iter("instance")
    )
    assert addresses == [("10.0.0.5", "8080"), ("10.0.0.6", "8080"), ("10.0.0.7", "8080")]
    hosts = api.get("/v1/registration/reviews").json["hosts"]
    assert ("10.0.0.7", 8080) in [(h["ip_address"], h["port"]) for h in hosts]
    endpoints = [i["endpoint"] for i in api.get("/api/v1/instances").json["instances"]]
    assert {"type": "http", "value": "10.0.0.7:8080"} in endpoints


def test_an_ipv6_address_is_bracketed_in_the_location(api: webtest.TestApp) -> None:
    register(api, instance(ip="fd00::7"), status=204)
    assert native(api)[0]["location"] == "http://[fd00::7]:8080"
    info = api.get(f"/eureka/apps/PAYMENTS/{ID}", headers=JSON_ACCEPT).json["instance"]
    assert info["ipAddr"] == "fd00::7"


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"instanceId": "", "hostName": ""}, ["instanceId"]),
        ({"hostName": None}, ["hostname"]),
        ({"ipAddr": ""}, ["ip address"]),
        ({"app": None}, ["appName"]),
        ({"app": "BILLING"}, ["Mismatched appName", "PAYMENTS", "BILLING"]),
        ({"dataCenterInfo": None}, ["dataCenterInfo"]),
        ({"dataCenterInfo": {"@class": "x"}}, ["dataCenterInfo Name"]),
        ({"port": {"$": 70000, "@enabled": "true"}}, ["port", "65535"]),
        ({"port": {"$": "eighty"}}, ["port"]),
        ({"port": {"$": 80, "@enabled": "maybe"}}, ["enabled"]),
        ({"status": "SLEEPY"}, ["status", "SLEEPY"]),
        ({"overriddenstatus": "NAPPING"}, ["overriddenstatus"]),
        ({"leaseInfo": {"durationInSecs": "long"}}, ["durationInSecs"]),
        ({"leaseInfo": "x"}, ["leaseInfo"]),
        ({"metadata": {"a": {"b": "c"}}}, ["metadata value"]),
        ({"metadata": ["a"]}, ["metadata"]),
        ({"metadata": {"eureka.hostName": "x"}}, ["reserved"]),
        ({"metadata": {f"k{n}": "v" for n in range(60)}}, ["limit is 64"]),
        ({"metadata": {"k": "v" * 1025}}, ["1024"]),
        ({"homePageUrl": "h" * 1025}, ["1024"]),
        ({"instanceId": "i" * 129}, ["instance_id", "128"]),
        ({"hostName": {"nested": "x"}}, ["hostName"]),
        ({"lastDirtyTimestamp": "soon"}, ["lastDirtyTimestamp", "soon"]),
        ({"countryId": "x"}, ["countryId"]),
    ],
)
def test_a_bad_registration_is_a_400_naming_the_field(
    api: webtest.TestApp, change: dict[str, Any], words: list[str]
) -> None:
    info = {**instance(), **change}
    response = api.post_json("/eureka/apps/PAYMENTS", {"instance": info}, status=400)
    assert_error(response, 400, *words)
    assert native(api) == []


@pytest.mark.parametrize(
    ("body", "content_type", "status", "word"),
    [
        (b"", "application/json", 400, "empty"),
        (b"{not json", "application/json", 400, "JSON"),
        (b"[1]", "application/json", 400, "object"),
        (b"<instance>", "application/xml", 400, "XML"),
        (b"<app>x</app>", "application/xml", 400, "<instance>"),
        (b"instance=x", "application/x-www-form-urlencoded", 415, "application/json"),
        (b"{}", "text/plain", 415, "Content-Type"),
    ],
)
def test_a_malformed_body_is_a_4xx(
    api: webtest.TestApp, body: bytes, content_type: str, status: int, word: str
) -> None:
    response = api.post("/eureka/apps/PAYMENTS", body, content_type=content_type, status=status)
    assert_error(response, status, word)


def test_xml_entities_and_dtds_are_refused_never_expanded(api: webtest.TestApp) -> None:
    laughs = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
        b"<instance><hostName>&lol2;</hostName></instance>"
    )
    external = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        b"<instance><hostName>&e;</hostName></instance>"
    )
    for body in (laughs, external):
        response = api.post("/eureka/apps/X", body, content_type="application/xml", status=400)
        assert_error(response, 400, "DTD")


def test_a_body_over_the_limit_is_a_413(api: webtest.TestApp) -> None:
    body = json.dumps({"instance": instance(homePageUrl="x" * 70_000)})
    response = api.post("/eureka/apps/PAYMENTS", body, content_type="application/json",
                        status=413)  # fmt: skip
    assert response.content_type == "application/json"


def test_unknown_paths_and_methods_get_a_json_error(api: webtest.TestApp) -> None:
    assert_error(api.get("/eureka/nothing", status=404), 404, "/eureka/v2")
    assert_error(api.get("/eureka/apps/A/B/C/D", status=404), 404)
    assert_error(api.patch("/eureka/apps", status=405), 405, "GET")


def test_a_store_that_is_down_is_a_503_and_a_heartbeats_has_no_body(
    own_redis_server: RedisServer, redis_prefix: str
) -> None:
    store = create_store("redis", {"url": own_redis_server.url, "prefix": redis_prefix,
                                   "timeout": 0.5})  # fmt: skip
    api = webtest.TestApp(create_app({}, store=store))
    try:
        register(api, status=204)
        own_redis_server.stop()
        assert_error(api.get("/eureka/apps", status=503), 503)
        assert_error(register(api, status=503), 503)
        assert api.put(f"/eureka/apps/PAYMENTS/{ID}", status=503).body == b""
    finally:
        store.close()


# -- namespaces -------------------------------------------------------------------------


def basic(token: str) -> dict[str, str]:
    encoded = base64.b64encode(f"keyard:{token}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


def test_namespaces_never_see_nor_change_each_others_instances(clock: FakeClock) -> None:
    api = webtest.TestApp(
        create_app({"auth": {"mode": "trusted"}}, store=MemoryStore(), clock=clock)
    )
    a, b = basic("team-a"), basic("team-b")
    register(api, headers=a, status=204)
    register(api, instance(instance_id="b1", status="DOWN"), headers=b, status=204)
    assert xml_apps(api, headers=a).findtext("apps__hashcode") == "UP_1_"
    assert xml_apps(api, headers=b).findtext("apps__hashcode") == "DOWN_1_"
    for path in ("/eureka/apps", "/eureka/apps/delta", "/eureka/vips/payments"):
        ids = [i.findtext("instanceId") for i in xml_apps(api, path, headers=b).iter("instance")]
        assert ids == ["b1"], path
    api.get(f"/eureka/apps/PAYMENTS/{ID}", headers=b, status=404)
    api.get(f"/eureka/instances/{ID}", headers=b, status=404)
    api.put(f"/eureka/apps/PAYMENTS/{ID}", headers=b, status=404)
    api.put(f"/eureka/apps/PAYMENTS/{ID}/status?value=DOWN", headers=b, status=404)
    api.delete(f"/eureka/apps/PAYMENTS/{ID}/status", headers=b, status=404)
    api.put(f"/eureka/apps/PAYMENTS/{ID}/metadata?a=b", headers=b, status=404)
    api.delete(f"/eureka/apps/PAYMENTS/{ID}", headers=b, status=404)
    (record,) = native(api, headers=a)
    assert record["status"] == "UP" and "a" not in record["metadata"]
    # No credentials: a 401 in this tree's error body, a heartbeat's too.
    for method, path in (("GET", "/eureka/apps"), ("PUT", f"/eureka/apps/PAYMENTS/{ID}")):
        response = api.request(path, method=method, expect_errors=True)
        assert response.status_int == 401
        assert response.json["title"] == "Unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


# -- no input gives a 500 ---------------------------------------------------------------

ODD = ["", " ", "x", "%", "%ff", "%3A", "UP", "UNKNOWN", "-1", "9" * 30, "%C3%A9", "a%2Fb", "delta"]


def test_random_requests_never_get_a_server_error(clock: FakeClock) -> None:
    import random

    rng = random.Random(20261203)
    api = webtest.TestApp(create_app({}, store=MemoryStore(), clock=clock))
    register(api, status=204)
    shapes = [
        "apps", "apps/{a}", "apps/{a}/{b}", "apps/{a}/{b}/status", "apps/{a}/{b}/metadata",
        "instances/{a}", "vips/{a}", "svips/{a}", "apps/delta", "{a}", "apps/{a}/{b}/{c}",
    ]  # fmt: skip
    keys = ["status", "value", "lastDirtyTimestamp", "overriddenstatus", "regions", "x", ""]
    fields = list(instance())
    for _ in range(600):
        def odd() -> str:
            return rng.choice([*ODD, "PAYMENTS", ID])

        shape = rng.choice(shapes).format(a=odd(), b=odd(), c=odd())
        path = f"{rng.choice(ROOTS)}/{shape}"
        query = "&".join(f"{rng.choice(keys)}={odd()}" for _ in range(rng.randint(0, 3)))
        method = rng.choice(["GET", "POST", "PUT", "DELETE", "HEAD"])
        headers = {"Accept": rng.choice(["application/json", "*/*", "text/xml"])}
        body, content_type = b"", ""
        if method in ("POST", "PUT") and rng.random() < 0.7:
            info: dict[str, Any] = instance()
            for _ in range(rng.randint(0, 4)):
                info[rng.choice(fields)] = rng.choice(
                    [None, 0, -1, 1.5, 10**30, True, [], {}, {"$": "x"}, odd(), {"a": [1]}]
                )
            text = json.dumps({"instance": info})
            if rng.random() < 0.3:
                text = text[: rng.randint(0, len(text))]
            body = text.encode()
            content_type = rng.choice(["application/json", "application/xml", "text/plain"])
            if content_type == "application/xml":
                body = b"<instance><app>" + odd().encode() + b"</app><port>x</port></instance>"
        response = api.request(
            (path + ("?" + query if query else "")).encode("utf-8").decode("latin-1"),
            method=method,
            body=body,
            headers={**headers, **({"Content-Type": content_type} if content_type else {})},
            expect_errors=True,
        )
        assert response.status_int < 500, (method, path, query, body[:200], response.body)


# -- the registry methods this API needs ------------------------------------------------


def test_registry_merge_metadata_adds_replaces_and_checks_bounds(clock: FakeClock) -> None:
    from keyard.errors import InvalidInput

    registry = Registry(MemoryStore(), clock=clock)
    registration = Registration("default", "web", "1", "http://x:1", "w1", metadata={"a": "1"})
    instance_, _ = registry.register(registration)
    merged = registry.merge_metadata(instance_.key, {"a": "2", "b": "3"})
    assert dict(merged.metadata) == {"a": "2", "b": "3"}
    assert dict(registry.get(instance_.key).metadata) == {"a": "2", "b": "3"}
    with pytest.raises(InvalidInput):
        registry.merge_metadata(instance_.key, {f"k{n}": "v" for n in range(63)})
    with pytest.raises(NotFound):
        registry.merge_metadata(InstanceKey("default", "web", "nope"), {})
