"""The client library against the real app, served from a thread on a loopback port."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from typing import Any

import pytest

from keyard.app import create_app
from keyard.client import (
    ConnectionFailed,
    InvalidInput,
    KeyardClient,
    KeyardError,
    NotFound,
    RegistryUnavailable,
    UnexpectedResponse,
)
from keyard.errors import StoreUnavailable
from keyard.stores.base import Store
from tests.conftest import free_port
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
