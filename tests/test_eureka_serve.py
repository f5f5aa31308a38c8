"""py-eureka-client 0.13.3 against a real ``keyard serve`` (default sqlite store, 2 workers).

One server for the module under each of ``keyard serve``'s servers (granian, gunicorn), in
auth mode ``trusted``: each test takes a namespace of
its own, which the client sends as the password of the server URL's basic
credentials (``http://keyard:NAMESPACE@127.0.0.1:PORT/eureka/``).
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from py_eureka_client import eureka_basic, eureka_client
from py_eureka_client.eureka_basic import DataCenterInfo, Instance, LeaseInfo, PortWrapper
from py_eureka_client.http_client import HTTPError

from tests import keyard_serve
from tests.conftest import free_port, wait_until

pytestmark = [
    pytest.mark.slow,
    # py-eureka-client logs with Logger.warn (its 404 heartbeat, below).
    pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning"),
    # Its init() calls the stop() of the client it replaces without awaiting it (ours is
    # stopped already, by the test before).
    pytest.mark.filterwarnings("ignore:coroutine 'EurekaClient.stop' was never awaited"),
]


@pytest.fixture(scope="module", params=keyard_serve.SERVERS)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[keyard_serve.Served]:
    workdir: Path = tmp_path_factory.mktemp("eureka-serve")
    keyard_serve.write_config(workdir, "{}")  # the default store: sqlite in ./keyard-data
    env = {"KEYARD_AUTH_MODE": "trusted"}
    with keyard_serve.start(
        request.param, workdir, free_port(), ["--workers", "2"], env
    ) as running:
        wait_until(lambda: len(running.worker_pids()) == 2, 20, "two workers")
        yield running


@pytest.fixture
def namespace() -> str:
    return f"ns-{uuid.uuid4().hex[:12]}"


def eureka_url(served: keyard_serve.Served, namespace: str, root: str = "/eureka/") -> str:
    return f"http://keyard:{namespace}@127.0.0.1:{served.port}{root}"


def native(served: keyard_serve.Served, namespace: str, path: str, **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {namespace}", "Content-Type": "application/json"}
    request = urllib.request.Request(served.url + path, headers=headers, **kw)
    with urllib.request.urlopen(request, timeout=5) as answer:
        return json.loads(answer.read() or b"null")


def native_instances(served: keyard_serve.Served, namespace: str, service: str) -> list[Any]:
    return native(served, namespace, f"/keyard/services/{service}")["instances"]


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = f"hello from {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hello_server() -> Iterator[int]:
    """A tiny HTTP service on a loopback port, answering every GET with its path."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_the_high_level_client_registers_finds_calls_and_deregisters_on_stop(
    served: keyard_serve.Served, namespace: str, hello_server: int
) -> None:
    eureka_client.init(
        eureka_server=eureka_url(served, namespace),
        app_name="hello-app",
        instance_host="127.0.0.1",
        instance_ip="127.0.0.1",
        instance_port=hello_server,
        renewal_interval_in_secs=30,  # no heartbeat thread runs within the test
        duration_in_secs=20,
        metadata={"team": "pay"},
    )
    try:
        (record,) = native_instances(served, namespace, "hello-app")
        assert record["location"] == f"http://127.0.0.1:{hello_server}"
        assert record["instance_id"] == f"127.0.0.1:hello-app:{hello_server}"
        assert record["ttl"] == 20
        assert record["metadata"]["team"] == "pay"
        assert eureka_client.do_service("HELLO-APP", "/greet", timeout=5) == "hello from /greet"
        found = asyncio.run(eureka_basic.get_applications(eureka_url(served, namespace)))
        assert found.get_application("hello-app").up_instances[0].port.port == hello_server
        # Removed behind its back, the client hears 404 at its heartbeat and registers again.
        instance_id = record["instance_id"]
        native(served, namespace, f"/keyard/services/hello-app/instances/{instance_id}",
               method="DELETE")  # fmt: skip
        client = eureka_client.get_client()
        assert native_instances(served, namespace, "hello-app") == []
        eureka_client.get_event_loop().run_until_complete(client.send_heartbeat())
        assert [i["instance_id"] for i in native_instances(served, namespace, "hello-app")] == [
            instance_id
        ]
    finally:
        eureka_client.stop()
    assert native_instances(served, namespace, "hello-app") == []


def _instance(port: int, app: str = "LOWLEVEL", instance_id: str = "low:1") -> Instance:
    return Instance(
        instanceId=instance_id,
        app=app,
        hostName="127.0.0.1",
        ipAddr="127.0.0.1",
        status="UP",
        overriddenstatus="UNKNOWN",
        port=PortWrapper(port=port, enabled=True),
        securePort=PortWrapper(port=8443, enabled=False),
        dataCenterInfo=DataCenterInfo(),
        leaseInfo=LeaseInfo(durationInSecs=30),
        vipAddress="lowlevel",
        secureVipAddress="lowlevel-secure",
        metadata={"zone": "a"},
        lastDirtyTimestamp=1700000000000,
    )


@pytest.mark.parametrize("root", ["/eureka/", "/eureka/v2/"])
def test_the_low_level_functions_work_on_both_roots(
    served: keyard_serve.Served, namespace: str, root: str
) -> None:
    url = eureka_url(served, namespace, root)

    async def scenario() -> None:
        await eureka_basic.register(url, _instance(9001))
        await eureka_basic.send_heartbeat(url, "LOWLEVEL", "low:1", 1700000000000)
        apps = await eureka_basic.get_applications(url)
        assert apps.appsHashcode == "UP_1_"
        (instance,) = apps.get_application("LOWLEVEL").instances
        assert (instance.instanceId, instance.port.port, instance.port.enabled) == (
            "low:1", 9001, True,
        )  # fmt: skip
        assert instance.metadata == {"zone": "a"}
        assert instance.lastDirtyTimestamp == 1700000000000
        assert instance.leaseInfo.durationInSecs == 30
        one = await eureka_basic.get_app_instance(url, "lowlevel", "low:1")
        assert one.app == "LOWLEVEL" and one.status == "UP"
        application = await eureka_basic.get_application(url, "LowLevel")
        assert [i.instanceId for i in application.instances] == ["low:1"]
        vip = await eureka_basic.get_vip(url, "lowlevel")
        assert [a.name for a in vip.applications] == ["LOWLEVEL"]
        secure = await eureka_basic.get_secure_vip(url, "LOWLEVEL-SECURE")
        assert [a.name for a in secure.applications] == ["LOWLEVEL"]

        await eureka_basic.status_update(url, "LOWLEVEL", "low:1", 1700000000000)
        await eureka_basic.send_heartbeat(url, "LOWLEVEL", "low:1", 1700000000000)
        delta = await eureka_basic.get_delta(url)
        assert delta.appsHashcode == "OUT_OF_SERVICE_1_"
        (changed,) = delta.get_application("LOWLEVEL").instances
        assert changed.status == "OUT_OF_SERVICE" and changed.actionType == "MODIFIED"
        assert int(delta.versionsDelta) == native(served, namespace, "/keyard/services")["index"]
        await eureka_basic.delete_status_override(url, "LOWLEVEL", "low:1", "1700000000000")
        assert (await eureka_basic.get_applications(url)).appsHashcode == "UP_1_"

        await eureka_basic.cancel(url, "LOWLEVEL", "low:1")
        with pytest.raises(HTTPError) as gone:
            await eureka_basic.send_heartbeat(url, "LOWLEVEL", "low:1", 1700000000000)
        assert gone.value.code == 404
        delta = await eureka_basic.get_delta(url)
        assert [i.actionType for i in delta.get_application("LOWLEVEL").instances] == ["DELETED"]
        assert delta.appsHashcode == ""

    asyncio.run(scenario())
    assert native_instances(served, namespace, "lowlevel") == []


def test_every_worker_answers_the_same_registry(
    served: keyard_serve.Served, namespace: str
) -> None:
    url = eureka_url(served, namespace)
    asyncio.run(eureka_basic.register(url, _instance(9002, "SAME", "same:1")))
    bodies = set()
    request = urllib.request.Request(
        f"{served.url}/eureka/apps", headers={"Authorization": f"Bearer {namespace}"}
    )
    for _ in range(12):  # new connections: the workers take turns
        with urllib.request.urlopen(request, timeout=5) as answer:
            bodies.add(answer.read())
    assert len(bodies) == 1
    assert b"<instanceId>same:1</instanceId>" in bodies.pop()


def test_a_native_instance_is_found_by_the_eureka_client_and_namespaces_stay_apart(
    served: keyard_serve.Served, namespace: str
) -> None:
    body = json.dumps(
        {"service_name": "natives", "location": "http://10.0.0.5:7000", "instance_id": "n1"}
    ).encode()
    native(served, namespace, "/keyard", data=body, method="POST")
    mine = asyncio.run(eureka_basic.get_applications(eureka_url(served, namespace)))
    (found,) = mine.get_application("NATIVES").instances
    assert (found.instanceId, found.ipAddr, found.port.port) == ("n1", "10.0.0.5", 7000)
    other = asyncio.run(eureka_basic.get_applications(eureka_url(served, namespace + "-b")))
    assert other.applications == [] and other.appsHashcode == ""
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{served.url}/eureka/apps", timeout=5)
    assert refused.value.code == 401
    assert json.loads(refused.value.read())["title"] == "Unauthorized"
