"""The real service: keyard.wsgi:app under gunicorn on a free loopback port, over HTTP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from keyard.server import WORKER_CLASS
from tests import gunicorn_server
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


def _send_and_read(port: int, raw: bytes, wait: float = 30.0) -> tuple[bytes, float]:
    """Send ``raw`` and read until the server closes; what it sent back, and after how long."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(raw)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received, time.monotonic() - started


@pytest.mark.slow
def test_a_client_that_stalls_mid_request_is_given_up_on_and_never_holds_a_thread(
    tmp_path: Path,
) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"store_type": "simple"}))
    env = {"KEYARD_CONFIG": str(tmp_path / "config.json"), "KEYARD_CLIENT_TIMEOUT": "1"}
    args = ["--worker-class", WORKER_CLASS, "--threads", "1"]
    with gunicorn_server.start("keyard.wsgi:app", free_port(), env, args) as server:
        short_body = (
            b"POST /keyard HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"service_name": '
        )
        answer, seconds = _send_and_read(server.port, short_body)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), answer
        # ...and the connection closed (read to its end above, and said so): the rest
        # of the body must never be taken for a request.
        assert b"\r\nConnection: close\r\n" in head, answer
        assert json.loads(body) == {
            "title": "Request timeout",
            "description": "the request body stopped arriving before its end (its "
            "Content-Length or last chunk); send the whole body without pausing",
        }
        assert 0.9 < seconds < 5, seconds
        # Stalled within its headers: the connection is closed, the thread freed.
        answer, seconds = _send_and_read(server.port, b"GET /keyard?service_name=x HTTP/1.1\r\n")
        assert answer == b"" and 0.9 < seconds < 5, (answer, seconds)
        # The one thread is free again.
        status, found = call("GET", f"{server.url}/keyard?service_name=web")
        assert (status, found) == (200, {"result": []})
        output = server.output()
    assert "Traceback" not in output, output
    assert "sent nothing for 1 s mid-request" in output, output


@pytest.mark.parametrize("text", ["abc", "0", "-1", "nan", "7200"])
def test_a_client_timeout_that_is_not_a_number_of_seconds_is_named_in_a_warning(
    text: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from keyard.gunicorn_worker import CLIENT_TIMEOUT, client_timeout

    monkeypatch.setenv("KEYARD_CLIENT_TIMEOUT", text)
    assert client_timeout() == CLIENT_TIMEOUT
    assert f"KEYARD_CLIENT_TIMEOUT={text!r}" in caplog.text
    monkeypatch.setenv("KEYARD_CLIENT_TIMEOUT", "2.5")
    assert client_timeout() == 2.5


@pytest.mark.slow
@pytest.mark.parametrize("preload", [False, True])
def test_an_invalid_config_under_plain_gunicorn_is_one_message_and_a_failed_exit(
    preload: bool, tmp_path: Path
) -> None:
    (tmp_path / "config.json").write_text('{"store_type": "nope"}')
    code, output = gunicorn_server.run_to_exit(
        "keyard.wsgi:app",
        free_port(),
        {"KEYARD_CONFIG": str(tmp_path / "config.json")},
        ["--preload"] if preload else [],
    )
    message = "store_type 'nope' is not a known store; available: etcd, redis, simple, sqlite"
    assert code != 0, output
    assert output.count(message) == 1, output
    assert f"Error: config file {str(tmp_path / 'config.json')!r}" in output, output
    assert "Traceback" not in output, output
    assert len(output.splitlines()) <= 10, output
