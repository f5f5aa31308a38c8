"""Amalgam8's API against the real ``keyard serve`` process: the sqlite store, two
workers, the calls Amalgam8's Go client makes as it makes them, and expiry in real time."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests import keyard_serve
from tests.conftest import free_port, wait_until

pytestmark = pytest.mark.slow

A, B = "team-a", "team-b"


def serve_config(workdir: Path) -> None:
    config = {
        "store_type": "sqlite",
        "sqlite": {"path": str(workdir / "registry.db")},
        "auth": {"mode": "trusted"},
        "min_ttl": 1,
    }
    keyard_serve.write_config(workdir, json.dumps(config))


def call(
    method: str, url: str, namespace: str = A, body: object = None
) -> tuple[int, dict[str, str], Any]:
    """One request as the Go client sends it: JSON with its type, or ``Content-Length: 0``
    on a write without a body; the status, headers and decoded JSON body (None if empty)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {namespace}"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    elif method != "GET":
        headers["Content-Length"] = "0"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            status, answer_headers, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, answer_headers, raw = error.code, error.headers, error.read()
    lowered = {name.lower(): value for name, value in answer_headers.items()}
    return status, lowered, json.loads(raw) if raw else None


def registration(ttl: int = 30, **fields: Any) -> dict[str, Any]:
    return {
        "service_name": "reviews",
        "endpoint": {"type": "http", "value": "10.0.0.1:9080"},
        "ttl": ttl,
        "tags": ["v1"],
        "metadata": {"version": "v1", "zone": {"name": "eu"}},
        "last_heartbeat": "0001-01-01T00:00:00Z",
        **fields,
    }


@pytest.mark.parametrize("server", keyard_serve.SERVERS)
def test_the_go_clients_calls_across_two_workers(server: str, tmp_path: Path) -> None:
    serve_config(tmp_path)
    with keyard_serve.start(server, tmp_path, free_port(), ["--workers", "2"]) as served:
        api = served.url + "/api/v1"
        status, headers, answer = call("POST", f"{api}/instances", body=registration())
        assert status == 201, answer
        amalgam8_id = answer["id"]
        assert headers["location"] == answer["links"]["self"]
        assert answer["links"]["self"].endswith(f"/api/v1/instances/{amalgam8_id}")
        # Every call several times, so that both workers answer them.
        for _ in range(6):
            assert call("POST", f"{api}/instances", body=registration())[2]["id"] == amalgam8_id
            status, _, empty = call("PUT", f"{api}/instances/{amalgam8_id}/heartbeat")
            assert (status, empty) == (200, None)
            status, _, listed = call("GET", f"{api}/instances")
            assert status == 200
            (shown,) = listed["instances"]
            assert shown["endpoint"] == {"type": "http", "value": "10.0.0.1:9080"}
            assert shown["metadata"] == {"version": "v1", "zone": {"name": "eu"}}
            assert call("GET", f"{api}/services")[2] == {"services": ["reviews"]}
        # Seen through the native API, and a native instance seen through Amalgam8's.
        status, _, record = call("GET", f"{served.url}/keyard/services/reviews")
        (instance,) = record["instances"]
        assert (instance["instance_id"], instance["location"]) == (
            amalgam8_id, "http://10.0.0.1:9080")  # fmt: skip
        assert instance["version"] == "v1" and instance["tags"] == ["v1"]
        native = {"service_name": "reviews", "location": "http://10.0.0.2:9080", "version": "v2"}
        assert call("POST", f"{served.url}/keyard", body=native)[0] == 201
        status, _, listed = call("GET", f"{api}/instances?service_name=reviews&fields=status")
        assert sorted(i["endpoint"]["value"] for i in listed["instances"]) == [
            "10.0.0.1:9080", "10.0.0.2:9080"]  # fmt: skip
        # Another namespace sees and changes nothing of it.
        assert call("GET", f"{api}/instances", B)[2] == {"instances": []}
        assert call("PUT", f"{api}/instances/{amalgam8_id}/heartbeat", B)[0] == 410
        assert call("DELETE", f"{api}/instances/{amalgam8_id}", B)[0] == 410
        # A raw %2F in a service name round-trips; errors are Amalgam8's.
        slashed = registration(service_name="a/b")
        assert call("POST", f"{api}/instances", body=slashed)[0] == 201
        assert call("GET", f"{api}/services/a%2Fb")[2]["service_name"] == "a/b"
        not_found = (
            "Resource not found: nothing is served at '/api/v1/nothing'; "
            "Amalgam8's API is at /api/v1"
        )
        assert call("GET", f"{api}/nothing")[:3:2] == (404, {"Error": not_found})
        status, _, error = call("GET", f"{api}/instances/{amalgam8_id}")
        assert status == 405 and "Error" in error
        status, _, error = call("GET", f"{api}/instances", namespace="")
        assert status == 401 and "Error" in error
        # Deregistered: gone for every worker.
        status, _, empty = call("DELETE", f"{api}/instances/{amalgam8_id}")
        assert (status, empty) == (200, None)
        for _ in range(4):
            assert call("PUT", f"{api}/instances/{amalgam8_id}/heartbeat")[0] == 410
        assert served.stop() == 0, served.output()


def test_an_expired_instance_is_gone_410_and_unlisted(tmp_path: Path) -> None:
    serve_config(tmp_path)
    with keyard_serve.start("granian", tmp_path, free_port(), ["--workers", "2"]) as served:
        api = served.url + "/api/v1"
        status, _, answer = call("POST", f"{api}/instances", body=registration(ttl=1))
        assert (status, answer["ttl"]) == (201, 1)
        amalgam8_id = answer["id"]
        assert len(call("GET", f"{api}/instances")[2]["instances"]) == 1
        started = time.monotonic()
        wait_until(
            lambda: call("GET", f"{api}/instances")[2] == {"instances": []}, 5,
            "the instance expired",
        )  # fmt: skip
        assert time.monotonic() - started >= 0.5
        assert call("PUT", f"{api}/instances/{amalgam8_id}/heartbeat")[0] == 410
        assert call("GET", f"{served.url}/keyard/services/reviews")[2]["instances"] == []
        # The sidecar registers again on 410, and gets the same id.
        assert call("POST", f"{api}/instances", body=registration())[2]["id"] == amalgam8_id
        assert served.stop() == 0, served.output()
