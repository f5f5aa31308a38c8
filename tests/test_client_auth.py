"""The client and the CLI with a token: sent with every request, never shown.

Against the real app in a thread (auth mode trusted: the namespace is the token).
"""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from keyard.app import create_app
from keyard.cli import main
from keyard.client import (
    CapacityExceeded,
    Forbidden,
    InvalidInput,
    KeyardClient,
    Unauthorized,
)
from tests.wsgi_thread import ThreadServer, serve_in_thread

TOKEN = "team-a-7f3a9c"


@pytest.fixture
def registry() -> Iterator[ThreadServer]:
    config = {"store_type": "simple", "auth": {"mode": "trusted"}, "namespace_capacity": 2}
    with serve_in_thread(create_app(config)) as server:
        yield server


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KEYARD_URL", "KEYARD_TOKEN", "KEYARD_CAFILE", "KEYARD_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)


def test_the_client_sends_its_token_with_every_call(registry: ThreadServer) -> None:
    client = KeyardClient(registry.url, token=TOKEN, timeout=2)
    client.register("web", "http://a", ttl=30)
    client.heartbeat("web", "http://a")
    assert client.lookup("web") == ["http://a"]
    assert client.choose("web") == "http://a"
    (record,) = client.instances("web")
    assert record.namespace == TOKEN
    assert [s.service_name for s in client.services()] == ["web"]
    client.set_status("web", record.instance_id, "OUT_OF_SERVICE")
    client.clear_status("web", record.instance_id)
    snapshot = next(iter(client.watch("web", wait=1)))
    assert [i.location for i in snapshot.instances] == ["http://a"]
    with client.keep_alive("web", "http://b", ttl=30):
        assert KeyardClient(registry.url, token=TOKEN).lookup("web") == ["http://a", "http://b"]
    assert client.lookup("web") == ["http://a"]
    assert KeyardClient(registry.url, token="team-b").lookup("web") == []
    client.deregister("web", "http://a")
    assert client.lookup("web") == []


def test_401_and_403_raise_unauthorized_forbidden_and_capacity_exceeded(
    registry: ThreadServer,
) -> None:
    with pytest.raises(Unauthorized, match="a bearer token is required"):
        KeyardClient(registry.url).lookup("web")
    client = KeyardClient(registry.url, token=TOKEN)
    client.register("web", "http://a")
    client.register("web", "http://b")
    with pytest.raises(CapacityExceeded, match="capacity \\(namespace_capacity\\) is 2") as caught:
        client.register("web", "http://c")
    assert isinstance(caught.value, Forbidden)
    assert not isinstance(caught.value, InvalidInput)
    client.register("web", "http://a")  # a live instance is never refused


def test_a_token_is_never_shown_and_must_be_one_header_line() -> None:
    client = KeyardClient("http://127.0.0.1:1", token=TOKEN)
    assert TOKEN not in repr(client) and "token=..." in repr(client)
    for bad in ("", "  ", "a\r\nX-Evil: 1", "a\nb", "a\0b"):
        with pytest.raises(ValueError, match="token must"):
            KeyardClient("http://127.0.0.1:1", token=bad)


def test_an_unreadable_ca_file_is_an_error_at_once() -> None:
    with pytest.raises(OSError):
        KeyardClient("https://127.0.0.1:1", cafile="/nonexistent/ca.pem")


def keyard(*args: str, env: dict[str, str] | None = None) -> click.testing.Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_every_registry_command_of_the_cli_takes_the_token(registry: ThreadServer) -> None:
    url = ["--url", registry.url]
    env = {"KEYARD_TOKEN": TOKEN}
    steps = [
        ["register", "--service-name", "web", "--location", "http://a", "--instance-id", "a"],
        ["lookup", "--service-name", "web"],
        ["services"],
        ["instances", "web"],
        ["maintenance", "on", "web", "a"],
        ["maintenance", "off", "web", "a"],
        ["unregister", "--service-name", "web", "--instance-id", "a"],
    ]
    for step in steps:
        result = keyard(*step, *url, env=env)
        assert result.exit_code == 0, (step, result.output)
        assert TOKEN not in result.output, (step, result.output)
        refused = keyard(*step, *url)
        assert refused.exit_code == 1, (step, refused.output)
        assert "a bearer token is required" in refused.output
    by_option = keyard("lookup", "--service-name", "web", *url, "--token", TOKEN)
    assert by_option.exit_code == 0, by_option.output


def test_the_cli_help_names_the_token_and_ca_file_options() -> None:
    for command in (["register"], ["lookup"], ["services"], ["instances"], ["watch"],
                    ["unregister"], ["maintenance", "on"], ["maintenance", "off"]):
        text = keyard(*command, "--help").output
        assert "--token" in text and "KEYARD_TOKEN" in text, command
        assert "--cafile" in text and "KEYARD_CAFILE" in text, command


def test_a_bad_token_or_ca_file_is_a_usage_error() -> None:
    result = keyard("lookup", "--service-name", "web", "--token", "a\nb")
    assert result.exit_code == 2 and "--token" in result.output
    result = keyard("lookup", "--service-name", "web", "--cafile", "/nonexistent/ca.pem")
    assert result.exit_code == 2 and "--cafile" in result.output
