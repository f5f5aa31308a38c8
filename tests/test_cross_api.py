"""One registry behind every API, against the real ``keyard serve`` (sqlite, two workers):
an instance registered through each of keyard's own API, Eureka, lyft's discovery and
Amalgam8 is seen through every one of them, with its address and status; and removed
through one, it is gone from all."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from xml.etree import ElementTree

import pytest

from tests import keyard_serve
from tests.conftest import free_port

pytestmark = pytest.mark.slow

TOKEN = "team-a"
#: The four instances of ``reviews``, one registered through each API: its address.
ADDRESSES = {
    "native": ("10.0.0.1", 8081),
    "eureka": ("10.0.0.2", 8082),
    "lyft": ("10.0.0.3", 8083),
    "amalgam8": ("10.0.0.4", 8084),
}


def request(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    content_type: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """One request with the team's credentials: a bearer token, or basic credentials for
    the clients that take them in their server URL (Eureka, lyft)."""
    sent = {"Authorization": f"Bearer {TOKEN}", **(headers or {})}
    if content_type:
        sent["Content-Type"] = content_type
    req = urllib.request.Request(url, data=body, method=method, headers=sent)
    try:
        with urllib.request.urlopen(req, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def basic() -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"keyard:{TOKEN}".encode()).decode()}


def register_each(url: str) -> None:
    ip, port = ADDRESSES["native"]
    status, _ = request(f"{url}/keyard", "POST", urllib.parse.urlencode({
        "service_name": "reviews", "version": "1.0", "location": f"http://{ip}:{port}",
    }).encode(), "application/x-www-form-urlencoded")  # fmt: skip
    assert status in (200, 201)
    ip, port = ADDRESSES["eureka"]
    info = {
        "instanceId": f"{ip}:reviews:{port}", "hostName": ip, "app": "REVIEWS", "ipAddr": ip,
        "status": "UP", "port": {"$": port, "@enabled": "true"},
        "securePort": {"$": 443, "@enabled": "false"}, "vipAddress": "reviews",
        "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo",
                           "name": "MyOwn"},
        "leaseInfo": {"durationInSecs": 90},
    }  # fmt: skip
    status, answer = request(f"{url}/eureka/apps/REVIEWS", "POST",
                             json.dumps({"instance": info}).encode(), "application/json",
                             basic())  # fmt: skip
    assert (status, answer) == (204, b"")
    ip, port = ADDRESSES["lyft"]
    status, _ = request(f"{url}/v1/registration/reviews", "POST", urllib.parse.urlencode({
        "ip": ip, "port": port, "tags": json.dumps({"az": "a", "canary": False}),
    }).encode(), "application/x-www-form-urlencoded", basic())  # fmt: skip
    assert status == 200
    ip, port = ADDRESSES["amalgam8"]
    status, _ = request(f"{url}/api/v1/instances", "POST", json.dumps({
        "service_name": "reviews", "endpoint": {"type": "http", "value": f"{ip}:{port}"},
        "ttl": 30,
    }).encode(), "application/json")  # fmt: skip
    assert status == 201


def seen_by_each(url: str) -> dict[str, set[tuple[str, int]]]:
    """The addresses of ``reviews`` that each API answers."""
    seen: dict[str, set[tuple[str, int]]] = {}
    status, body = request(f"{url}/keyard/services/reviews")
    assert status == 200, body
    seen["native"] = {
        (parts.hostname or "", parts.port or 0)
        for parts in (urllib.parse.urlsplit(i["location"]) for i in json.loads(body)["instances"])
    }
    status, body = request(f"{url}/eureka/apps/REVIEWS", headers=basic())
    assert status in (200, 404), body
    seen["eureka"] = {
        (i.findtext("ipAddr") or "", int(i.findtext("port") or 0))
        for i in (ElementTree.fromstring(body).iter("instance") if status == 200 else ())
    }
    status, body = request(f"{url}/v1/registration/reviews", headers=basic())
    assert status == 200, body
    seen["lyft"] = {(h["ip_address"], h["port"]) for h in json.loads(body)["hosts"]}
    status, body = request(f"{url}/api/v1/instances?service_name=reviews")
    assert status == 200, body
    seen["amalgam8"] = set()
    for found in json.loads(body)["instances"]:
        host, _, port = found["endpoint"]["value"].rpartition("://")[2].partition(":")
        seen["amalgam8"].add((host, int(port)))
    return seen


def test_an_instance_registered_through_each_api_is_seen_through_every_other(
    tmp_path: Path,
) -> None:
    config = {"store_type": "sqlite", "sqlite": {"path": str(tmp_path / "registry.db")},
              "auth": {"mode": "trusted"}}  # fmt: skip
    keyard_serve.write_config(tmp_path, json.dumps(config))
    with keyard_serve.start("granian", tmp_path, free_port(), ["--workers", "2"]) as served:
        register_each(served.url)
        everyone = set(ADDRESSES.values())
        for _ in range(3):  # fresh connections: both workers answer
            assert seen_by_each(served.url) == dict.fromkeys(ADDRESSES, everyone)
        # Removed through Eureka (the lyft host), through lyft (Amalgam8's instance):
        lyft_ip, lyft_port = ADDRESSES["lyft"]
        status, body = request(f"{served.url}/eureka/apps/REVIEWS/{lyft_ip}", "DELETE",
                               headers=basic())  # fmt: skip
        assert status == 200, body
        amalgam8_ip, _ = ADDRESSES["amalgam8"]
        status, body = request(f"{served.url}/v1/registration/reviews/{amalgam8_ip}", "DELETE",
                               headers=basic())  # fmt: skip
        assert status == 200, body
        left = everyone - {ADDRESSES["lyft"], ADDRESSES["amalgam8"]}
        assert seen_by_each(served.url) == dict.fromkeys(ADDRESSES, left)
        # A request in another namespace sees none of them, through any API.
        status, body = request(f"{served.url}/api/v1/instances?service_name=reviews",
                               headers={"Authorization": "Bearer team-b"})  # fmt: skip
        assert (status, json.loads(body)["instances"]) == (200, [])
