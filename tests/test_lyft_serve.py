"""lyft's discovery API against the real ``keyard serve`` (sqlite, 2 workers), as a lyft
client registers and as Envoy's v1 SDS reads."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests import keyard_serve
from tests.conftest import free_port
from tests.test_lyft import TAGS, assert_envoy_takes

pytestmark = pytest.mark.slow


def call(
    method: str,
    url: str,
    form: dict[str, str] | None = None,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """Status and decoded answer (JSON, else text) of one request: a form, or a JSON body."""
    data, sent = None, dict(headers or {})
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
    elif body is not None:
        data, sent["Content-Type"] = json.dumps(body).encode(), "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            status, raw, kind = answer.status, answer.read(), answer.headers.get_content_type()
    except urllib.error.HTTPError as error:
        status, raw, kind = error.code, error.read(), error.headers.get_content_type()
    if kind == "application/json":
        return status, json.loads(raw)
    return status, raw.decode()


def sqlite_config(workdir: Path, **extra: object) -> None:
    config = {"store_type": "sqlite", "sqlite": {"path": str(workdir / "registry.db")}, **extra}
    keyard_serve.write_config(workdir, json.dumps(config))


@pytest.mark.parametrize("server", keyard_serve.SERVERS)
def test_a_lyft_client_and_envoy_against_keyard_serve(server: str, tmp_path: Path) -> None:
    sqlite_config(tmp_path)
    with keyard_serve.start(server, tmp_path, free_port(), ["--workers", "2"]) as served:
        url = served.url
        form = {"ip": "10.0.0.5", "port": "8080", "revision": "abc", "service_repo_name": "repo",
                "tags": json.dumps({**TAGS, "canary": True, "load_balancing_weight": 40})}
        assert call("POST", f"{url}/v1/registration/web", form) == (200, {})
        for _ in range(4):  # heartbeats, to either worker
            assert call("POST", f"{url}/v1/registration/web", form) == (200, {})
        assert call("POST", f"{url}/v1/registration/web",
                    {"port": "9000", "auto_ip": "true"}) == (200, {})  # the peer: 127.0.0.1
        native = {"service_name": "web", "location": "http://10.0.0.6:7000", "weight": 1000}
        assert call("POST", f"{url}/keyard", body=native)[0] == 201
        call("POST", f"{url}/keyard", body={"service_name": "web", "location": "http://h:1"})

        status, answer = call("GET", f"{url}/v1/registration/web")
        assert status == 200
        assert_envoy_takes(answer)
        shown = {(h["ip_address"], h["port"]): h["tags"] for h in answer["hosts"]}
        assert shown == {
            ("10.0.0.5", 8080): {**TAGS, "canary": True, "load_balancing_weight": 40},
            ("10.0.0.6", 7000): {"az": "", "canary": False, "load_balancing_weight": 100},
            ("127.0.0.1", 9000): {"az": "", "canary": False, "load_balancing_weight": 10},
        }
        status, listed = call("GET", f"{url}/keyard/services/web")
        lyft = [i for i in listed["instances"] if i["instance_id"] == "10.0.0.5"]
        assert [(i["location"], i["version"], i["weight"]) for i in lyft] == [
            ("http://10.0.0.5:8080", "abc", 400)]  # fmt: skip
        assert call("GET", f"{url}/v1/registration/repo/repo")[1]["hosts"][0]["port"] == 8080

        assert call("POST", f"{url}/v1/loadbalancing/web/10.0.0.5",
                    {"load_balancing_weight": "5"}) == (204, "")
        assert call("POST", f"{url}/v1/loadbalancing/web", {"load_balancing_weight": "x"}) == (
            400, {"error": "load_balancing_weight must be a whole number from 1 to 100, got 'x'"})
        assert call("DELETE", f"{url}/v1/registration/web/10.0.0.5") == (200, {})
        status, error = call("DELETE", f"{url}/v1/registration/web/10.0.0.5")
        assert status == 400 and "10.0.0.5" in error["error"]
        ips = [h["ip_address"] for h in call("GET", f"{url}/v1/registration/web")[1]["hosts"]]
        assert ips == ["10.0.0.6", "127.0.0.1"]
        assert call("GET", f"{url}/healthcheck") == (200, "OK")


def test_namespaces_from_basic_credentials_against_keyard_serve(tmp_path: Path) -> None:
    sqlite_config(tmp_path, auth={"mode": "trusted"})
    with keyard_serve.start("granian", tmp_path, free_port(), ["--workers", "2"]) as served:
        def as_(token: str) -> dict[str, str]:
            credentials = base64.b64encode(f"keyard:{token}".encode()).decode()
            return {"Authorization": f"Basic {credentials}"}

        sds = f"{served.url}/v1/registration/web"
        form = {"ip": "10.0.0.5", "port": "8080"}
        assert call("POST", sds, form, headers=as_("team-a")) == (200, {})
        assert call("GET", sds, headers=as_("team-b"))[1]["hosts"] == []
        assert call("DELETE", f"{sds}/10.0.0.5", headers=as_("team-b"))[0] == 400
        assert len(call("GET", sds, headers=as_("team-a"))[1]["hosts"]) == 1
        status, error = call("GET", sds)
        assert status == 401 and set(error) == {"error"}
