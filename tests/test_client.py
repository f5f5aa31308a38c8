"""The client library against the real app, served from a thread on a loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from typing import Any

import pytest

from keyard.app import create_app
from keyard.client import (
    ConnectionFailed,
    Instance,
    InstanceSpec,
    InvalidInput,
    KeyardClient,
    KeyardError,
    NotFound,
    RegistryUnavailable,
    ServiceSummary,
    UnexpectedResponse,
)
from keyard.errors import StoreUnavailable
from keyard.stores.base import Store
from tests import gunicorn_server
from tests.conftest import free_port, wait_until
from tests.wsgi_thread import ThreadServer, serve_in_thread


@pytest.fixture
def registry() -> Iterator[ThreadServer]:
    with serve_in_thread(create_app({"store_type": "simple", "max_ttl": 3600})) as server:
        yield server


@pytest.fixture
def client(registry: ThreadServer) -> KeyardClient:
    return KeyardClient(registry.url, timeout=2)


class DownStore(Store):
    """A store whose backend is always down."""

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Store:
        return cls()

    def _down(self, *args: object) -> Any:
        raise StoreUnavailable("the store at db:5432 did not answer within 1 s")

    put = get = deregister = set_override = lookup = services = _down


def test_register_returns_the_instance_and_whether_it_is_new(client: KeyardClient) -> None:
    before = datetime.now(timezone.utc)
    first = client.register("app2", "http://10.0.0.1:8002", ttl=20)
    again = client.register("app2", "http://10.0.0.1:8002", ttl=20)

    assert (first.service_name, first.version, first.location, first.ttl) == (
        "app2",
        "1.0",
        "http://10.0.0.1:8002",
        20,
    )
    assert first.created is True
    assert again.created is False
    assert 19 <= (first.expires_at - before).total_seconds() <= 21
    assert first.expires_at.tzinfo is not None


def test_register_sends_version_and_uses_the_registry_default_ttl(client: KeyardClient) -> None:
    registration = client.register("app2", "loc", version="2.1")
    assert (registration.version, registration.ttl) == ("2.1", 30)
    assert client.lookup("app2", version="2.1") == ["loc"]
    assert client.lookup("app2", version="1.0") == []


def test_heartbeat_keeps_the_registered_ttl_and_reregisters_an_unknown_instance(
    client: KeyardClient,
) -> None:
    client.register("app2", "known", ttl=100)
    refreshed = client.heartbeat("app2", "known")
    unknown = client.heartbeat("app2", "unknown", ttl=50)

    assert (refreshed.ttl, refreshed.created) == (100, False)
    assert (unknown.ttl, unknown.created) == (50, True)
    assert client.lookup("app2") == ["known", "unknown"]


def test_lookup_lists_live_locations_by_version_then_location(client: KeyardClient) -> None:
    for version, location in [("2.0", "a"), ("1.0", "c"), ("1.0", "b")]:
        client.register("web", location, version=version)
    client.register("webapp", "z")

    assert client.lookup("web") == ["b", "c", "a"]
    assert client.lookup("web", version="2.0") == ["a"]
    assert client.lookup("nobody") == []


def test_fields_round_trip_whatever_their_characters(client: KeyardClient) -> None:
    name, location = "my service/ü", "http://h:1/p?q=1&r=2#frag %2F"
    client.register(name, location, version="1.0 beta")
    assert client.lookup(name, version="1.0 beta") == [location]
    assert client.choose(name, version="1.0 beta") == location
    client.deregister(name, location, version="1.0 beta")
    assert client.lookup(name) == []


def test_choose_picks_one_live_location_with_the_strategy(client: KeyardClient) -> None:
    client.register("web", "a")
    client.register("web", "b")

    assert client.choose("web") in {"a", "b"}
    picks = [client.choose("web", strategy="round_robin") for _ in range(4)]
    assert sorted(picks) == ["a", "a", "b", "b"]
    assert picks[0] != picks[1]


def test_deregister_removes_the_instance(client: KeyardClient) -> None:
    client.register("web", "a")
    client.register("web", "b")
    assert client.deregister("web", "a") is None
    assert client.lookup("web") == ["b"]


# -- errors: keyard's exceptions, with the server's description as the message ------------


def test_a_400_raises_invalid_input_with_the_servers_description(client: KeyardClient) -> None:
    with pytest.raises(InvalidInput) as caught:
        client.register("web", "a", ttl=0)
    assert str(caught.value) == "ttl must be between 1 and 3600 seconds, got 0"

    with pytest.raises(InvalidInput, match="load_balancer_strategy 'fastest' is not known"):
        client.choose("web", strategy="fastest")
    with pytest.raises(InvalidInput, match="service_name must not be empty"):
        client.lookup("")


def test_a_404_raises_not_found(client: KeyardClient) -> None:
    with pytest.raises(NotFound) as caught:
        client.deregister("web", "nowhere")
    assert str(caught.value) == (
        "no live instance of service 'web' version '1.0' at location 'nowhere'"
    )
    with pytest.raises(NotFound, match="no live instance of service 'web'$"):
        client.choose("web")


def test_a_wrong_path_prefix_says_where_keyard_is(registry: ThreadServer) -> None:
    with pytest.raises(NotFound, match="keyard serves /keyard"):
        KeyardClient(registry.url + "/api").lookup("web")


def test_a_503_raises_registry_unavailable() -> None:
    with serve_in_thread(create_app({}, store=DownStore())) as server:
        client = KeyardClient(server.url)
        for call in (lambda: client.register("web", "a"), lambda: client.lookup("web")):
            with pytest.raises(RegistryUnavailable) as caught:
                call()
            assert type(caught.value) is RegistryUnavailable
            assert str(caught.value) == "the store at db:5432 did not answer within 1 s"


def test_a_refused_connection_raises_connection_failed() -> None:
    client = KeyardClient(f"http://127.0.0.1:{free_port()}", timeout=1)
    with pytest.raises(ConnectionFailed, match="cannot reach the registry at http://127.0.0.1:"):
        client.lookup("web")
    assert issubclass(ConnectionFailed, RegistryUnavailable)
    assert issubclass(RegistryUnavailable, KeyardError)


def test_a_registry_that_does_not_answer_raises_connection_failed_after_the_timeout() -> None:
    with socket.socket() as listener:  # accepts connections (backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        client = KeyardClient(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=0.3)
        started = time.monotonic()
        with pytest.raises(ConnectionFailed, match=r"no answer within 0\.3 s"):
            client.lookup("web")
        assert time.monotonic() - started < 2


def _plain_app(status: str, body: bytes) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response(status, [("Content-Type", "text/html")])
        return [body]

    return app


def test_a_server_that_is_not_keyard_raises_unexpected_response() -> None:
    app = _plain_app("200 OK", b"<html>hello</html>")
    with serve_in_thread(app) as server, pytest.raises(UnexpectedResponse, match="without JSON"):
        KeyardClient(server.url).lookup("web")


@pytest.mark.parametrize("status", ["501 Not Implemented", "500 Internal Server Error",
                                    "502 Bad Gateway", "503 Service Unavailable"])
def test_a_5xx_without_keyards_json_raises_unexpected_response_naming_the_status(
    status: str,
) -> None:
    with serve_in_thread(_plain_app(status, b"<html>oops</html>")) as server:
        client = KeyardClient(server.url)
        with pytest.raises(UnexpectedResponse, match=f"answered HTTP {status} without") as caught:
            client.register("web", "a")
        assert caught.value.status == int(status.split()[0])
        assert not isinstance(caught.value, RegistryUnavailable)


def test_a_4xx_without_json_is_not_mistaken_for_a_registry_answer() -> None:
    with serve_in_thread(_plain_app("404 Not Found", b"<html>no</html>")) as server:
        client = KeyardClient(server.url)
        with pytest.raises(UnexpectedResponse, match="answered HTTP 404 Not Found"):
            client.deregister("web", "a")
        with pytest.raises(UnexpectedResponse, match="is it a registry"):
            client.choose("web")


@pytest.mark.parametrize(
    "url",
    [
        "127.0.0.1:8000",
        "ftp://host",
        "http://",
        "http://h/?q=1",
        "http://127.0.0.1:abc",
        "http://127.0.0.1:99999",
    ],
)
def test_a_url_that_is_not_http_is_refused_at_once(url: str) -> None:
    with pytest.raises(ValueError, match="registry URL"):
        KeyardClient(url)


def test_a_trailing_slash_in_the_url_is_ignored(registry: ThreadServer) -> None:
    client = KeyardClient(registry.url + "/")
    assert client.endpoint == registry.url + "/keyard"
    assert client.lookup("web") == []


# -- the widened instance: InstanceSpec in, full records out ------------------------------


def test_register_with_a_spec_answers_the_full_record(client: KeyardClient) -> None:
    before = datetime.now(timezone.utc)
    spec = InstanceSpec(
        instance_id="web-1", status="STARTING", tags=["blue", "canary"],
        metadata={"zone": "eu-1"}, weight=50,
    )  # fmt: skip
    registration = client.register("web", "http://h:1", version="2.0", ttl=20, spec=spec)

    assert registration.created is True
    record = registration.record
    assert isinstance(record, Instance)
    assert (record.service_name, record.version, record.instance_id, record.location) == (
        "web", "2.0", "web-1", "http://h:1",
    )  # fmt: skip
    assert (record.status, record.status_override, record.weight, record.ttl) == (
        "STARTING", None, 50, 20,
    )  # fmt: skip
    assert record.tags == ("blue", "canary")
    assert dict(record.metadata) == {"zone": "eu-1"}
    assert record.namespace == "default"
    for moment in (record.registered_at, record.last_heartbeat_at, record.expires_at):
        assert moment.tzinfo is not None
    assert 19 <= (record.expires_at - before).total_seconds() <= 21
    assert record.expires_at == registration.expires_at


def test_register_without_a_spec_sends_keyard_0_2s_fields_only(client: KeyardClient) -> None:
    registration = client.register("web", "a")
    assert registration.record is None  # the registry answered its short view
    assert InstanceSpec().fields() == {}
    assert client.register("web", "a", spec=InstanceSpec()).record is None


def test_a_spec_takes_any_sequence_of_tags_and_any_mapping() -> None:
    spec = InstanceSpec(tags=["a", "b"], metadata={"k": "v"})
    assert spec.tags == ("a", "b")
    assert spec.fields() == {"tags": ["a", "b"], "metadata": {"k": "v"}}
    with pytest.raises(TypeError, match="not the string"):
        InstanceSpec(tags="a,b")


def test_a_heartbeat_keeps_the_fields_it_does_not_send(client: KeyardClient) -> None:
    spec = InstanceSpec(instance_id="w1", tags=["blue"], metadata={"zone": "eu-1"}, weight=7)
    client.register("web", "a", spec=spec)
    client.heartbeat("web", "a", spec=InstanceSpec(instance_id="w1", status="DOWN"))

    record = client.instance("web", "w1")
    assert (record.status, record.tags, dict(record.metadata), record.weight) == (
        "DOWN", ("blue",), {"zone": "eu-1"}, 7,
    )  # fmt: skip
    cleared = client.heartbeat("web", "a", spec=InstanceSpec(instance_id="w1", tags=[]))
    assert cleared.record is not None and cleared.record.tags == ()


def test_instances_lists_every_status_and_filters_by_version_tag_and_status(
    client: KeyardClient,
) -> None:
    client.register("web", "a", spec=InstanceSpec(instance_id="a", tags=["blue", "eu"]))
    client.register("web", "b", version="2.0", spec=InstanceSpec(instance_id="b", tags=["eu"]))
    client.register("web", "c", spec=InstanceSpec(instance_id="c", status="DOWN"))

    def ids(found: list[Instance]) -> list[str]:
        return [instance.instance_id for instance in found]

    assert ids(client.instances("web")) == ["a", "c", "b"]  # by version, then location
    assert ids(client.instances("web", version="2.0")) == ["b"]
    assert ids(client.instances("web", tag="eu")) == ["a", "b"]
    assert ids(client.instances("web", tag=["eu", "blue"])) == ["a"]
    assert ids(client.instances("web", status="DOWN")) == ["c"]
    assert ids(client.instances("web", status=["UP", "DOWN"])) == ["a", "c", "b"]
    assert ids(client.instances("web", status="any")) == ["a", "c", "b"]
    assert client.instances("nobody") == []
    assert client.lookup("web") == ["a", "b"]  # lookups answer UP instances only
    with pytest.raises(InvalidInput, match="status 'SLEEPING' is not known"):
        client.instances("web", status="sleeping")


def test_services_summarises_every_service(client: KeyardClient) -> None:
    assert client.services() == []
    client.register("web", "a")
    client.register("web", "b", spec=InstanceSpec(status="DOWN"))
    client.register("api", "c")
    assert client.services() == [ServiceSummary("api", 1, 1), ServiceSummary("web", 2, 1)]


def test_instance_answers_one_record_or_not_found(client: KeyardClient) -> None:
    registration = client.register("web", "a", spec=InstanceSpec(weight=3))
    assert registration.record is not None
    derived = registration.record.instance_id
    assert client.instance("web", derived).location == "a"
    with pytest.raises(NotFound, match="no live instance 'nope' of service 'web'"):
        client.instance("web", "nope")


def test_maintenance_takes_an_instance_out_of_lookups_until_cleared(
    client: KeyardClient,
) -> None:
    client.register("web", "a", spec=InstanceSpec(instance_id="a"))
    client.register("web", "b", spec=InstanceSpec(instance_id="b"))

    record = client.set_status("web", "a", "OUT_OF_SERVICE")
    assert (record.status, record.status_override, record.in_maintenance) == (
        "OUT_OF_SERVICE", "OUT_OF_SERVICE", True,
    )  # fmt: skip
    assert client.lookup("web") == ["b"]
    assert [client.choose("web") for _ in range(5)] == ["b"] * 5
    client.heartbeat("web", "a", spec=InstanceSpec(instance_id="a", status="UP"))
    assert client.instance("web", "a").status == "OUT_OF_SERVICE"  # survives health checks

    record = client.clear_status("web", "a")
    assert (record.status, record.status_override) == ("UP", None)
    assert client.lookup("web") == ["a", "b"]
    with pytest.raises(InvalidInput, match="status 'RESTING' is not known"):
        client.set_status("web", "a", "RESTING")
    with pytest.raises(NotFound):
        client.set_status("web", "gone", "OUT_OF_SERVICE")


def test_deregister_instance_removes_only_that_instance(client: KeyardClient) -> None:
    client.register("web", "shared", spec=InstanceSpec(instance_id="one"))
    client.register("web", "shared", spec=InstanceSpec(instance_id="two"))
    removed = client.deregister_instance("web", "one")
    assert (removed.instance_id, removed.location) == ("one", "shared")
    assert [i.instance_id for i in client.instances("web")] == ["two"]
    with pytest.raises(NotFound):
        client.deregister_instance("web", "one")


def test_names_in_the_path_round_trip_whatever_their_characters(client: KeyardClient) -> None:
    for name, instance_id in [("my service ü", "id 1?#&"), ("web", "."), ("web", "..")]:
        client.register(name, "loc", spec=InstanceSpec(instance_id=instance_id))
        assert client.instance(name, instance_id).instance_id == instance_id
        assert client.set_status(name, instance_id, "DOWN").status == "DOWN"
        assert client.deregister_instance(name, instance_id).service_name == name


@pytest.mark.slow
def test_a_slash_in_a_name_round_trips_under_gunicorn() -> None:
    env = {"KEYARD_STORE_TYPE": "simple"}
    with gunicorn_server.start("keyard.wsgi:app", free_port(), env=env) as server:
        client = KeyardClient(server.url, timeout=5)
        client.register("team/web", "loc", spec=InstanceSpec(instance_id="eu/1"))
        assert client.instance("team/web", "eu/1").instance_id == "eu/1"
        assert [i.instance_id for i in client.instances("team/web")] == ["eu/1"]
        assert client.clear_status("team/web", "eu/1").service_name == "team/web"
        assert client.deregister_instance("team/web", "eu/1").instance_id == "eu/1"


def test_an_empty_name_is_refused_before_any_request() -> None:
    client = KeyardClient(f"http://127.0.0.1:{free_port()}")  # nothing listens
    for call in (
        lambda: client.instances(""),
        lambda: client.instance("web", " "),
        lambda: client.set_status("", "a", "DOWN"),
        lambda: client.deregister_instance("web", ""),
    ):
        with pytest.raises(InvalidInput, match="must not be empty"):
            call()


def test_a_spec_out_of_bounds_raises_invalid_input(client: KeyardClient) -> None:
    with pytest.raises(InvalidInput, match="weight must be between 0 and 1000, got 5000"):
        client.register("web", "a", spec=InstanceSpec(weight=5000))
    with pytest.raises(InvalidInput, match="status 'ASLEEP' is not known"):
        client.register("web", "a", spec=InstanceSpec(status="asleep"))
    with pytest.raises(InvalidInput, match="given more than once"):
        client.register("web", "a", spec=InstanceSpec(tags=["x", "x"]))


def test_keep_alive_sends_the_spec_and_deregisters_only_its_own_instance(
    client: KeyardClient,
) -> None:
    client.register("web", "shared", spec=InstanceSpec(instance_id="other"))
    spec = InstanceSpec(instance_id="mine", tags=["canary"])
    with client.keep_alive("web", "shared", ttl=3, spec=spec, interval=0.1) as heartbeat:
        wait_until(lambda: heartbeat.beats >= 3, 5, "three health checks")
        assert client.instance("web", "mine").tags == ("canary",)
    assert [i.instance_id for i in client.instances("web")] == ["other"]


def test_keep_alive_without_an_id_deregisters_the_derived_one(client: KeyardClient) -> None:
    client.register("web", "shared", spec=InstanceSpec(instance_id="other"))
    with client.keep_alive("web", "shared", spec=InstanceSpec(weight=1)):
        assert len(client.instances("web")) == 2
    assert [i.instance_id for i in client.instances("web")] == ["other"]


# -- answers that keyard would not give: UnexpectedResponse -------------------------------


def _json_app(status: str, body: bytes, headers: list[tuple[str, str]] | None = None) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response(status, [("Content-Type", "application/json"), *(headers or [])])
        return [body]

    return app


@pytest.mark.parametrize(
    "status", ["400 Bad Request", "404 Not Found", "500 Internal Server Error"]
)
def test_a_json_error_that_is_not_keyards_raises_unexpected_response(status: str) -> None:
    with (
        serve_in_thread(_json_app(status, b'{"error": "nope"}')) as server,
        pytest.raises(UnexpectedResponse, match="without keyard's JSON error"),
    ):
        KeyardClient(server.url).lookup("web")


def test_a_redirect_is_reported_not_followed() -> None:
    seen: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["REQUEST_METHOD"])
        start_response("301 Moved Permanently", [("Location", "https://elsewhere/keyard")])
        return [b""]

    with serve_in_thread(app) as server:
        client = KeyardClient(server.url)
        with pytest.raises(UnexpectedResponse, match="to https://elsewhere/keyard: keyard does "
                           "not redirect") as caught:
            client.register("web", "a")
        assert caught.value.status == 301
        with pytest.raises(UnexpectedResponse, match="HTTP 301"):
            client.lookup("web")
    assert seen == ["POST", "GET"]  # not followed (urllib would turn the POST into a GET)


@pytest.mark.parametrize(
    ("call", "body"),
    [
        (lambda c: c.services(), b'{"services": [{"service_name": "web"}]}'),
        (lambda c: c.services(), b'{"services": {"web": 1}}'),
        (lambda c: c.instances("web"), b'{"instances": [{"instance_id": 1}]}'),
        (lambda c: c.instance("web", "a"), b'["not", "a", "record"]'),
        (lambda c: c.register("web", "a", spec=InstanceSpec(weight=1)),
         b'{"service_name": "web", "version": "1.0", "location": "a", "ttl": 30, '
         b'"expires_at": "yesterday"}'),
    ],
)  # fmt: skip
def test_a_success_that_is_not_keyards_record_raises_unexpected_response(
    call: Any, body: bytes
) -> None:
    with (
        serve_in_thread(_json_app("200 OK", body)) as server,
        pytest.raises(UnexpectedResponse, match="answered"),
    ):
        call(KeyardClient(server.url))


def test_an_answer_that_is_not_http_raises_unexpected_response() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        def answer_garbage() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.recv(65536)
                connection.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

        thread = threading.Thread(target=answer_garbage, daemon=True)
        thread.start()
        with pytest.raises(UnexpectedResponse, match="does not speak HTTP as keyard does"):
            KeyardClient(f"http://127.0.0.1:{port}", timeout=2).lookup("web")
        thread.join(2)
