"""The ``keyard`` command line: CliRunner against a live registry, and real subprocesses."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from keyard.app import create_app
from keyard.cli import main
from keyard.client import ConnectionFailed, InstanceSpec, KeyardClient
from tests.conftest import free_port, wait_until
from tests.gunicorn_server import REPO_ROOT
from tests.wsgi_thread import ThreadServer, serve_in_thread

ENV_NAMES = [
    "KEYARD_URL",
    "KEYARD_TIMEOUT",
    "KEYARD_SERVICE_NAME",
    "KEYARD_SERVICE_VERSION",
    "KEYARD_SERVICE_LOCATION",
    "KEYARD_TTL",
    "KEYARD_REFRESH_EVERY",
    "KEYARD_CONFIG",
    "KEYARD_INSTANCE_ID",
    "KEYARD_STATUS",
    "KEYARD_TAGS",
    "KEYARD_METADATA",
    "KEYARD_WEIGHT",
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def registry() -> Iterator[ThreadServer]:
    with serve_in_thread(create_app({"store_type": "simple"})) as server:
        yield server


@pytest.fixture
def client(registry: ThreadServer) -> KeyardClient:
    return KeyardClient(registry.url, timeout=2)


def keyard(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def assert_one_line_error(result: Result, code: int, message: str) -> None:
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    assert result.stderr == f"Error: {message}\n"


# -- success: exit code 0 ------------------------------------------------------------------


def test_register_lookup_unregister(registry: ThreadServer, client: KeyardClient) -> None:
    url = ["--url", registry.url]
    result = keyard("register", "--service-name", "app2", "--location", "http://h:2", *url)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("registered app2 1.0 at http://h:2 (ttl 30 s, expires 20")
    assert client.lookup("app2") == ["http://h:2"]

    again = keyard("register", "--service-name", "app2", "--location", "http://h:2", *url)
    assert again.stdout.startswith("refreshed app2 1.0 at http://h:2 (ttl 30 s")

    keyard("register", "--service-name", "app2", "--location", "http://h:1", "--ttl", "9", *url)
    result = keyard("lookup", "--service-name", "app2", *url)
    assert (result.exit_code, result.stdout) == (0, "http://h:1\nhttp://h:2\n")

    result = keyard("unregister", "--service-name", "app2", "--location", "http://h:1", *url)
    assert (result.exit_code, result.stdout) == (0, "deregistered app2 at http://h:1\n")
    assert client.lookup("app2") == ["http://h:2"]


def test_lookup_formats_and_strategy(registry: ThreadServer, client: KeyardClient) -> None:
    client.register("web", "a", version="1.0")
    client.register("web", "b", version="2.0")
    url = ["--url", registry.url]

    as_json = keyard("lookup", "--service-name", "web", "--format", "json", *url)
    assert json.loads(as_json.stdout) == ["a", "b"]
    version = keyard("lookup", "--service-name", "web", "--version", "2.0", *url)
    assert version.stdout == "b\n"
    one = keyard("lookup", "--service-name", "web", "--strategy", "random", "--format=json", *url)
    assert json.loads(one.stdout) in {"a", "b"}
    table = keyard("lookup", "--service-name", "web", "--strategy", "round_robin", *url)
    assert table.stdout in {"a\n", "b\n"}
    nobody = keyard("lookup", "--service-name", "nobody", *url)
    assert (nobody.exit_code, nobody.stdout) == (0, "")


def test_every_option_comes_from_the_environment(
    registry: ThreadServer, client: KeyardClient
) -> None:
    env = {
        "KEYARD_URL": registry.url,
        "KEYARD_TIMEOUT": "3",
        "KEYARD_SERVICE_NAME": "app2",
        "KEYARD_SERVICE_VERSION": "2.5",
        "KEYARD_SERVICE_LOCATION": "http://h:2",
        "KEYARD_TTL": "7",
    }
    result = keyard("register", env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("registered app2 2.5 at http://h:2 (ttl 7 s")

    assert keyard("lookup", env=env).stdout == "http://h:2\n"
    assert keyard("unregister", env=env).exit_code == 0
    assert client.lookup("app2") == []


def test_an_option_wins_over_the_environment(registry: ThreadServer) -> None:
    env = {"KEYARD_URL": "http://127.0.0.1:1", "KEYARD_SERVICE_NAME": "other"}
    result = keyard("lookup", "--url", registry.url, "--service-name", "web", env=env)
    assert (result.exit_code, result.stdout) == (0, "")


def test_register_with_tags_metadata_weight_status_and_an_id(
    registry: ThreadServer, client: KeyardClient
) -> None:
    result = keyard(
        "register", "--url", registry.url, "--service-name", "web", "--location", "http://h:1",
        "--instance-id", "web-1", "--tag", "blue", "--tag", "canary", "--meta", "zone=eu-1",
        "--meta", "note=a=b", "--weight", "50", "--status", "starting",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("registered web 1.0 at http://h:1 (ttl 30 s, expires 20")
    assert result.stdout.endswith(
        "; instance web-1, status STARTING, weight 50, tags blue,canary, "
        "metadata zone=eu-1,note=a=b\n"
    )
    record = client.instance("web", "web-1")
    assert (record.status, record.tags, dict(record.metadata), record.weight) == (
        "STARTING", ("blue", "canary"), {"zone": "eu-1", "note": "a=b"}, 50,
    )  # fmt: skip

    again = keyard("register", "--url", registry.url, "--service-name", "web",
                   "--location", "http://h:1", "--instance-id", "web-1")  # fmt: skip
    assert again.stdout.startswith("refreshed web 1.0")
    assert "tags blue,canary" in again.stdout  # left out: kept


def test_the_spec_options_come_from_the_environment(
    registry: ThreadServer, client: KeyardClient
) -> None:
    env = {
        "KEYARD_URL": registry.url,
        "KEYARD_SERVICE_NAME": "web",
        "KEYARD_SERVICE_LOCATION": "x",
        "KEYARD_INSTANCE_ID": "env-1",
        "KEYARD_STATUS": "down",
        "KEYARD_TAGS": "a b",
        "KEYARD_METADATA": "zone=eu rack=7",
        "KEYARD_WEIGHT": "9",
    }
    assert keyard("register", env=env).exit_code == 0
    record = client.instance("web", "env-1")
    assert (record.status, record.tags, dict(record.metadata), record.weight) == (
        "DOWN", ("a", "b"), {"zone": "eu", "rack": "7"}, 9,
    )  # fmt: skip


def test_services_lists_a_table_or_json(registry: ThreadServer, client: KeyardClient) -> None:
    url = ["--url", registry.url]
    assert keyard("services", *url).stdout == ""
    client.register("web", "a")
    client.register("web", "b", spec=InstanceSpec(status="DOWN"))
    client.register("api", "c")

    assert keyard("services", *url).stdout == (
        "SERVICE  INSTANCES  UP\n"
        "api      1          1\n"
        "web      2          1\n"
    )
    as_json = keyard("services", "--format", "json", *url)
    assert json.loads(as_json.stdout) == [
        {"service_name": "api", "instances": 1, "up": 1},
        {"service_name": "web", "instances": 2, "up": 1},
    ]


def test_instances_lists_full_records_with_filters(
    registry: ThreadServer, client: KeyardClient
) -> None:
    url = ["--url", registry.url]
    client.register("web", "http://h:1", ttl=60, spec=InstanceSpec(
        instance_id="w1", tags=["blue", "eu"], metadata={"zone": "eu-1"}, weight=50))
    client.register("web", "http://h:2", spec=InstanceSpec(instance_id="w2", tags=["eu"]))
    client.register("web", "http://h:3", version="2.0", spec=InstanceSpec(
        instance_id="w3", status="STARTING"))  # fmt: skip
    client.set_status("web", "w2", "OUT_OF_SERVICE")

    table = keyard("instances", "web", *url)
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "INSTANCE", "VERSION", "LOCATION", "STATUS", "WEIGHT", "TAGS", "METADATA", "EXPIRES"
    ]  # fmt: skip
    assert lines[1].split()[:7] == ["w1", "1.0", "http://h:1", "UP", "50", "blue,eu", "zone=eu-1"]
    assert lines[2].split()[:8] == [
        "w2", "1.0", "http://h:2", "OUT_OF_SERVICE", "(maintenance)", "100", "eu", "-"
    ]  # fmt: skip
    assert lines[3].split()[:4] == ["w3", "2.0", "http://h:3", "STARTING"]
    assert len(lines) == 4
    assert lines[0].index("LOCATION") == lines[1].index("http://h:1")  # aligned columns

    def ids(*args: str) -> list[str]:
        result = keyard("instances", "web", "--format", "json", *args, *url)
        assert result.exit_code == 0, result.output
        return [record["instance_id"] for record in json.loads(result.stdout)]

    assert ids() == ["w1", "w2", "w3"]
    assert ids("--version", "2.0") == ["w3"]
    assert ids("--tag", "eu") == ["w1", "w2"]
    assert ids("--tag", "eu", "--tag", "blue") == ["w1"]
    assert ids("--status", "up") == ["w1"]
    assert ids("--status", "UP,OUT_OF_SERVICE") == ["w1", "w2"]
    assert ids("--status", "any") == ["w1", "w2", "w3"]

    records = json.loads(keyard("instances", "web", "--format", "json", *url).stdout)
    assert records[0] == {
        **records[0],
        "namespace": "default", "service_name": "web", "version": "1.0", "instance_id": "w1",
        "location": "http://h:1", "status": "UP", "tags": ["blue", "eu"],
        "metadata": {"zone": "eu-1"}, "weight": 50, "ttl": 60,
    }  # fmt: skip
    assert "status_override" not in records[0]
    assert records[1]["status_override"] == "OUT_OF_SERVICE"
    assert records[0]["expires_at"].endswith("Z")
    assert keyard("instances", "nobody", *url).stdout == ""


def test_maintenance_on_and_off(registry: ThreadServer, client: KeyardClient) -> None:
    url = ["--url", registry.url]
    client.register("web", "http://h:1", spec=InstanceSpec(instance_id="w1"))
    client.register("web", "http://h:2", spec=InstanceSpec(instance_id="w2"))

    on = keyard("maintenance", "on", "web", "w1", *url)
    assert (on.exit_code, on.stdout) == (
        0,
        "web w1 at http://h:1: OUT_OF_SERVICE (maintenance); lookups skip it until "
        "'keyard maintenance off web w1'\n",
    )
    assert client.lookup("web") == ["http://h:2"]
    off = keyard("maintenance", "off", "web", "w1", *url)
    assert (off.exit_code, off.stdout) == (0, "web w1 at http://h:1: maintenance off, status UP\n")
    assert client.lookup("web") == ["http://h:1", "http://h:2"]

    unknown = keyard("maintenance", "on", "web", "nope", *url)
    assert_one_line_error(unknown, 1, "no live instance 'nope' of service 'web'")


def test_unregister_by_instance_id_leaves_the_others_at_that_location(
    registry: ThreadServer, client: KeyardClient
) -> None:
    client.register("web", "shared", spec=InstanceSpec(instance_id="one"))
    client.register("web", "shared", spec=InstanceSpec(instance_id="two"))
    result = keyard("unregister", "--url", registry.url, "--service-name", "web",
                    "--instance-id", "one")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == "deregistered web 1.0 at shared (instance one)\n"
    assert [i.instance_id for i in client.instances("web")] == ["two"]


def test_refresh_every_not_shorter_than_the_registrys_default_ttl_is_a_usage_error(
    registry: ThreadServer, client: KeyardClient
) -> None:
    result = keyard("register", "--url", registry.url, "--service-name", "web",
                    "--location", "x", "--refresh-every", "40")  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.endswith(
        "Error: --refresh-every: interval (40 s) must be shorter than the ttl the registry "
        "answered (30 s), or the instance expires between health checks; give a shorter "
        "--refresh-every or a longer --ttl\n"
    )
    assert "Traceback" not in result.output
    assert client.instances("web") == []  # registered to learn the TTL, then deregistered


# -- the registry answered an error, or cannot be reached: exit code 1 ---------------------


def test_an_unknown_instance_exits_1_with_the_registrys_message(registry: ThreadServer) -> None:
    result = keyard("unregister", "--url", registry.url, "--service-name", "web", "--location", "x")
    assert_one_line_error(
        result, 1, "no live instance of service 'web' version '1.0' at location 'x'"
    )


def test_no_live_instance_for_a_strategy_exits_1(registry: ThreadServer) -> None:
    result = keyard(
        "lookup", "--url", registry.url, "--service-name", "web", "--strategy", "random"
    )
    assert_one_line_error(result, 1, "no live instance of service 'web'")


def test_invalid_input_exits_1_with_the_registrys_message(registry: ThreadServer) -> None:
    result = keyard(
        "lookup", "--url", registry.url, "--service-name", "web", "--strategy", "fastest"
    )
    assert_one_line_error(
        result,
        1,
        "load_balancer_strategy 'fastest' is not known; valid: random, round_robin, weighted",
    )


def test_an_unreachable_registry_exits_1() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = keyard("register", "--url", url, "--service-name", "web", "--location", "x")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: cannot reach the registry at {url}: ")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.output


# -- usage errors: exit code 2 -------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["register", "--location", "x"], "Missing option '--service-name'"),
        (["register", "--service-name", "web"], "Missing option '--location'"),
        (["register", "--service-name", "w", "--location", "x", "--ttl", "0"], "'--ttl'"),
        (["lookup", "--service-name", "w", "--format", "xml"], "'--format'"),
        (["lookup", "--service-name", "w", "--url", "localhost:8000"], "registry URL"),
        (["lookup", "--service-name", "w", "--timeout", "0"], "'--timeout'"),
        (
            ["register", "--service-name", "w", "--location", "x", "--ttl", "5",
             "--refresh-every", "5"],
            "must be shorter than the ttl",
        ),
        (["register", "--service-name", "", "--location", "x"],
         "'--service-name' (env var: 'KEYARD_SERVICE_NAME'): service_name must not be empty"),
        (["register", "--service-name", "  ", "--location", "x"], "must not be empty"),
        (["register", "--service-name", "w", "--location", ""], "location must not be empty"),
        (["register", "--service-name", "w", "--location", "x", "--version", ""],
         "version must not be empty"),
        (["register", "--service-name", "w" * 129, "--location", "x"],
         "service_name is 129 characters long; the limit is 128"),
        (["lookup", "--service-name", ""], "service_name must not be empty"),
        (["unregister", "--service-name", "", "--location", "x"], "must not be empty"),
        (["register", "--service-name", "w", "--location", "x", "--weight", "1001"],
         "'--weight'"),
        (["register", "--service-name", "w", "--location", "x", "--weight", "heavy"],
         "'heavy' is not a valid integer"),
        (["register", "--service-name", "w", "--location", "x", "--status", "asleep"],
         "status 'ASLEEP' is not known; valid: UP, DOWN, STARTING, OUT_OF_SERVICE"),
        (["register", "--service-name", "w", "--location", "x", "--meta", "zone"],
         "expected KEY=VALUE, got 'zone'"),
        (["register", "--service-name", "w", "--location", "x", "--meta", "=v"],
         "metadata keys must not be empty"),
        (["register", "--service-name", "w", "--location", "x", "--meta", "k=1", "--meta",
          "k=2"], "metadata key 'k' is given more than once"),
        (["register", "--service-name", "w", "--location", "x", "--tag", "a", "--tag", "a"],
         "tag 'a' is given more than once"),
        (["register", "--service-name", "w", "--location", "x", "--tag", " "],
         "tags must not contain an empty tag"),
        (["register", "--service-name", "w", "--location", "x", "--instance-id", ""],
         "instance_id must not be empty"),
        (["unregister", "--service-name", "w"], "give either --location or --instance-id"),
        (["unregister", "--service-name", "w", "--location", "x", "--instance-id", "i"],
         "give either --location or --instance-id"),
        (["unregister", "--service-name", "w", "--instance-id", "i", "--version", "2"],
         "--version goes with --location"),
        (["instances"], "Missing argument 'NAME'"),
        (["instances", ""], "Invalid value for 'NAME': service_name must not be empty"),
        (["instances", "w", "--status", "UP,RESTING"], "status 'RESTING' is not known"),
        (["instances", "w", "--format", "xml"], "'--format'"),
        (["services", "--format", "yaml"], "'--format'"),
        (["maintenance", "sideways", "w", "i"], "No such command 'sideways'"),
        (["maintenance", "on", "w"], "Missing argument 'INSTANCE_ID'"),
        (["maintenance", "off", "w", ""], "instance_id must not be empty"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["serve", "--bind", "127.0.0.1:99999"], "'--bind'"),
        (["serve", "--bind", "127.0.0.1:abc"], "'--bind'"),
        (["serve", "--bind", ""], "'--bind'"),
        (["serve", "--bind", "8000"], "'--bind'"),
        (["serve", "--bind", "::1:8000"], "'--bind'"),
    ],
)  # fmt: skip
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = keyard(*args, env={"KEYARD_URL": f"http://127.0.0.1:{free_port()}"})
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_serve_with_a_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "config.json"
    bad.write_text('{"store_type": "nope"}')
    result = keyard("serve", "--config", str(bad))
    assert_one_line_error(
        result,
        2,
        f"config file {str(bad)!r}: "
        "store_type 'nope' is not a known store; available: etcd, redis, simple, sqlite",
    )

    result = keyard("serve", env={"KEYARD_CONFIG": str(tmp_path / "missing.json")})
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: config file ")
    assert "cannot be read" in result.stderr and result.stderr.count("\n") == 1


# -- real processes ------------------------------------------------------------------------


def run_keyard(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """``python -m keyard.cli ARGS`` in the background, from the repository root."""
    return subprocess.Popen(
        [sys.executable, "-m", "keyard.cli", *args],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a server's workers never signal the test's process group
    )


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_register_refresh_every_deregisters_on_a_signal(
    registry: ThreadServer, client: KeyardClient, stop_signal: int
) -> None:
    process = run_keyard(
        "register", "--service-name", "app2", "--location", "http://h:2",
        "--ttl", "1", "--refresh-every", "0.2",
        env={"KEYARD_URL": registry.url},
    )  # fmt: skip
    try:
        wait_until(lambda: client.lookup("app2") == ["http://h:2"], 10, "the registration")
        if stop_signal == signal.SIGTERM:
            time.sleep(1.3)  # past the 1 s TTL: only the health checks keep it
            assert client.lookup("app2") == ["http://h:2"]
        process.send_signal(stop_signal)
        stdout, stderr = process.communicate(timeout=5)
    finally:
        process.kill()
        process.communicate()
    assert process.returncode == 0, stderr
    assert client.lookup("app2") == []
    assert stdout.startswith("registered app2 1.0 at http://h:2 (ttl 1 s")
    assert "health check every 0.2 s until SIGINT or SIGTERM\n" in stdout
    assert stdout.endswith("deregistered app2 at http://h:2\n")
    assert stderr == ""


def test_register_refresh_every_rides_out_a_registry_restart(registry: ThreadServer) -> None:
    process = run_keyard(
        "register", "--service-name", "app2", "--location", "x", "--refresh-every", "0.2",
        env={"KEYARD_URL": registry.url},
    )  # fmt: skip
    try:
        client = KeyardClient(registry.url, timeout=1)
        wait_until(lambda: client.lookup("app2") == ["x"], 10, "the registration")
        registry.stop()
        time.sleep(0.5)  # a couple of failed health checks
        # Back, and empty:
        with serve_in_thread(create_app({"store_type": "simple"}), registry.port):
            wait_until(lambda: client.lookup("app2") == ["x"], 3, "registering again")
        # The registry is gone again when the command is told to stop.
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=10)
    finally:
        process.kill()
        process.communicate()
    assert process.returncode == 1
    assert "keyard: health check of app2 at x failed (1 in a row): cannot reach" in stderr
    assert stderr.splitlines()[-1].startswith(
        f"Error: could not deregister app2 at x: cannot reach the registry at {registry.url}"
    )
    assert "Traceback" not in stderr


def test_register_refresh_every_exits_1_when_the_registry_is_down_at_start() -> None:
    process = run_keyard(
        "register", "--service-name", "app2", "--location", "x", "--refresh-every", "1",
        env={"KEYARD_URL": f"http://127.0.0.1:{free_port()}"},
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=10)
    finally:
        process.kill()
        process.communicate()
    assert process.returncode == 1
    assert stderr.startswith("Error: cannot reach the registry at http://127.0.0.1:")
    assert stderr.count("\n") == 1


def test_python_dash_m_keyard_runs_the_command_line(registry: ThreadServer) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "KEYARD_URL": registry.url}
    version = subprocess.run(
        [sys.executable, "-m", "keyard", "--version"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert (version.returncode, version.stdout) == (0, "keyard, version 0.2.0\n")
    services = subprocess.run(
        [sys.executable, "-m", "keyard", "services", "--format", "json"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert (services.returncode, services.stdout) == (0, "[]\n")
    usage = subprocess.run(
        [sys.executable, "-m", "keyard", "lookup"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert usage.returncode == 2
    assert usage.stderr.startswith("Usage: keyard lookup [OPTIONS]")


#: Requests gunicorn refuses before keyard's app sees them, and the status it answers.
GUNICORN_REFUSES = {
    b"GET /keyard?service_name=" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n": 414,
    b"GET /keyard?service_name=a HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n": 431,
    "GET /keyard?service_name=é HTTP/1.1\r\nHost: x\r\n\r\n".encode(): 400,
    b"POST /keyard HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n": 400,
}


#: A chunked POST whose chunks gunicorn hands to keyard's app, which fails to read them.
MALFORMED_CHUNKED_POST = (
    b"POST /keyard HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\nConnection: close\r\n\r\n"
)


def raw_http(port: int, request: bytes) -> bytes:
    """Send ``request`` as is and read the answer until the server closes (bounded)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        for _ in range(100):
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def chunked_post(port: int, body: bytes) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        connection.request("POST", "/keyard", body=iter([body]), headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


def registry_answers(client: KeyardClient) -> bool:
    try:
        return client.lookup("web") == []
    except ConnectionFailed:
        return False


def test_serve_server_gunicorn_runs_keyard_under_gunicorn_until_sigterm(tmp_path: Path) -> None:
    # The default server, granian, is tested as thoroughly in test_serve.py.
    config = tmp_path / "keyard.json"
    config.write_text('{"store_type": "simple", "default_ttl": 7}')
    port = free_port()
    process = run_keyard(
        "serve", "--server", "gunicorn", "--config", str(config), "--bind", f"127.0.0.1:{port}",
        env={},
    )  # fmt: skip
    try:
        client = KeyardClient(f"http://127.0.0.1:{port}", timeout=1)
        wait_until(lambda: registry_answers(client), 15, "keyard serve answering")
        assert client.register("web", "a").ttl == 7  # the config file's default_ttl
        assert client.lookup("web") == ["a"]
        for request, status in GUNICORN_REFUSES.items():
            answer = raw_http(port, request)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(f"HTTP/1.1 {status} ".encode()), answer[:300]
            assert b"content-type: application/json" in head.lower(), answer[:300]
            assert set(json.loads(body)) == {"title", "description"}
        assert chunked_post(port, b"service_name=web&location=b") == 201
        for bad_chunks in (b"zz\r\n", b"3\r\nabcXX\r\n0\r\n\r\n"):
            answer = raw_http(port, MALFORMED_CHUNKED_POST + bad_chunks)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400 "), answer[:300]
            assert json.loads(body)["title"] == "Malformed body"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    finally:
        process.kill()
        process.communicate()
    assert process.returncode == 0, stderr
    assert "Using worker: keyard.gunicorn_worker.JsonErrorThreadWorker" in stderr
    assert "Traceback" not in stderr, stderr
    assert f"keyard ready: store simple (config file {str(config)!r})" in stderr
