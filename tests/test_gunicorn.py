"""The real service: keyard.wsgi:app under gunicorn on a free loopback port, over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port, port_is_open, wait_until

ROOT = Path(__file__).resolve().parent.parent


def call(method: str, url: str, data: dict | None = None) -> tuple[int, object]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.slow
def test_keyard_serves_over_http_under_gunicorn(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "config.json").write_text(json.dumps({"store_type": "simple", "default_ttl": 20}))
    env = {**os.environ, "KEYARD_CONFIG": str(tmp_path / "config.json"), "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "keyard.wsgi:app",
            "-b",
            f"127.0.0.1:{port}",
            "--worker-class",
            "gthread",
            "--threads",
            "4",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: port_is_open(port), timeout=30, what="gunicorn listening")
        url = f"http://127.0.0.1:{port}/keyard"
        location = "http://127.0.0.1:9000/a?b=c"
        status, body = call("POST", url, {"service_name": "web", "location": location})
        assert status == 201 and body["ttl"] == 20
        assert call("PUT", url, {"service_name": "web", "location": location})[0] == 200
        assert call("GET", f"{url}?service_name=web") == (200, {"result": [location]})
        assert call("GET", f"{url}?service_name=web&load_balancer_strategy=random") == (
            200,
            {"result": location},
        )
        status, body = call("POST", url, {"service_name": "web"})
        assert status == 400 and body["description"] == "location is required"
        query = urllib.parse.urlencode({"service_name": "web", "location": location})
        assert call("DELETE", f"{url}?{query}")[0] == 200
        assert call("GET", f"{url}?service_name=web") == (200, {"result": []})
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0].decode(errors="replace")
    assert "Traceback" not in output, output
