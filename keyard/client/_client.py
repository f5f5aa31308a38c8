"""The keyard client: one method per registry operation, over the standard library's HTTP."""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from keyard.client._exceptions import (
    ConnectionFailed,
    InvalidInput,
    KeyardError,
    NotFound,
    RegistryUnavailable,
    UnexpectedResponse,
)
from keyard.client._models import Registration

if TYPE_CHECKING:
    from keyard.client._heartbeat import Heartbeat

#: Where a registry listens when nothing else is said (``keyard serve``'s default bind).
DEFAULT_URL = "http://127.0.0.1:8000"
#: Seconds to wait for the registry to connect and to answer each read.
DEFAULT_TIMEOUT = 5.0


def _parse_time(text: str) -> datetime:
    # fromisoformat() reads a trailing "Z" only from Python 3.11 on.
    return datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)


class KeyardClient:
    """A client of one keyard registry.

    Every method makes one HTTP request and raises keyard's exceptions, never
    urllib's: :class:`~keyard.errors.InvalidInput` (HTTP 400),
    :class:`~keyard.errors.NotFound` (404), :class:`RegistryUnavailable` (503)
    and :class:`ConnectionFailed` (refused, unknown host, timeout). The client
    holds no connection between calls, so one client may serve many threads.

    >>> client = KeyardClient("http://127.0.0.1:8000", timeout=2)
    >>> client.register("app2", "http://127.0.0.1:8002", ttl=10)    # doctest: +SKIP
    >>> client.choose("app2", strategy="random")                    # doctest: +SKIP
    'http://127.0.0.1:8002'
    """

    def __init__(self, base_url: str = DEFAULT_URL, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """``base_url`` is the registry's root (``http://host:port``, maybe with a path
        prefix); the client talks to ``<base_url>/keyard``. ``timeout`` bounds, in
        seconds, the connection and each wait for the answer.

        Raises ValueError for a URL that is not ``http(s)://host...`` or a timeout <= 0.
        """
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"the registry URL must look like http://host:port, got {base_url!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"the registry URL must not have a query or fragment: {base_url!r}")
        try:
            parts.port  # noqa: B018 - raises for a port that is not a number from 0 to 65535
        except ValueError as exc:
            raise ValueError(f"the registry URL has a bad port ({exc}): {base_url!r}") from exc
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.endpoint = f"{self.base_url}/keyard"

    def __repr__(self) -> str:
        return f"KeyardClient({self.base_url!r}, timeout={self.timeout!r})"

    # -- the operations ------------------------------------------------------------------

    def register(
        self,
        service_name: str,
        location: str,
        *,
        version: str | None = None,
        ttl: int | None = None,
    ) -> Registration:
        """Register an instance (POST), or refresh it if it is already registered.

        ``version`` defaults to the registry's ``"1.0"``, ``ttl`` to its default TTL.
        """
        fields = {"service_name": service_name, "version": version, "location": location}
        return self._registration("POST", {**fields, "ttl": ttl})

    def heartbeat(
        self,
        service_name: str,
        location: str,
        *,
        version: str | None = None,
        ttl: int | None = None,
    ) -> Registration:
        """Health-check an instance (PUT): push its expiry one TTL away.

        Without ``ttl`` the instance keeps the TTL it was registered with. An
        instance the registry does not know (it expired, or the registry
        restarted) is registered again: ``created`` is then ``True``.
        """
        fields = {"service_name": service_name, "version": version, "location": location}
        return self._registration("PUT", {**fields, "ttl": ttl})

    def deregister(self, service_name: str, location: str, *, version: str | None = None) -> None:
        """Remove an instance (DELETE). NotFound when no live instance has this key."""
        fields = {"service_name": service_name, "version": version, "location": location}
        body = self._request("DELETE", fields)
        if not (isinstance(body, dict) and isinstance(body.get("deregistered"), dict)):
            raise UnexpectedResponse(f"DELETE {self.endpoint} answered {body!r}")

    def lookup(self, service_name: str, *, version: str | None = None) -> list[str]:
        """Every live location of the service (and version): by version, then location.

        An unknown service gives an empty list, not NotFound.
        """
        result = self._result({"service_name": service_name, "version": version})
        if not (isinstance(result, list) and all(isinstance(item, str) for item in result)):
            raise UnexpectedResponse(f"GET {self.endpoint} answered result {result!r}")
        return result

    def choose(
        self, service_name: str, *, version: str | None = None, strategy: str = "random"
    ) -> str:
        """One live location of the service, picked by the registry's ``strategy``
        (``random`` or ``round_robin``). NotFound when none is live; InvalidInput
        for an unknown strategy.
        """
        fields = {
            "service_name": service_name,
            "version": version,
            "load_balancer_strategy": strategy,
        }
        result = self._result(fields)
        if not isinstance(result, str):
            raise UnexpectedResponse(f"GET {self.endpoint} answered result {result!r}")
        return result

    def keep_alive(
        self,
        service_name: str,
        location: str,
        *,
        version: str | None = None,
        ttl: int | None = None,
        interval: float | None = None,
        jitter: float = 0.2,
        deregister: bool = True,
    ) -> Heartbeat:
        """A :class:`Heartbeat` for this instance, not started yet (use it with ``with``)."""
        from keyard.client._heartbeat import Heartbeat

        return Heartbeat(
            self,
            service_name,
            location,
            version=version,
            ttl=ttl,
            interval=interval,
            jitter=jitter,
            deregister=deregister,
        )

    # -- HTTP ----------------------------------------------------------------------------

    def _registration(self, method: str, fields: Mapping[str, object]) -> Registration:
        body, status = self._exchange(method, fields)
        try:
            return Registration(
                service_name=str(body["service_name"]),
                version=str(body["version"]),
                location=str(body["location"]),
                ttl=int(body["ttl"]),
                expires_at=_parse_time(str(body["expires_at"])),
                created=status == 201,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UnexpectedResponse(f"{method} {self.endpoint} answered {body!r}") from exc

    def _result(self, fields: Mapping[str, object]) -> Any:
        body = self._request("GET", fields)
        if not (isinstance(body, dict) and "result" in body):
            raise UnexpectedResponse(f"GET {self.endpoint} answered {body!r}")
        return body["result"]

    def _request(self, method: str, fields: Mapping[str, object]) -> Any:
        return self._exchange(method, fields)[0]

    def _exchange(self, method: str, fields: Mapping[str, object]) -> tuple[Any, int]:
        """Send the fields (query string for GET, else a JSON body); the JSON answer and status."""
        present = {name: value for name, value in fields.items() if value is not None}
        headers = {"Accept": "application/json"}
        if method == "GET":
            url, data = f"{self.endpoint}?{urlencode(present)}", None
        else:
            url, data = self.endpoint, json.dumps(present).encode("utf-8")
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                raise self._error(method, exc.code, exc.reason, _read_quietly(exc)) from None
        except OSError as exc:  # URLError, refused, reset, timeout
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, (TimeoutError, socket.timeout)):
                reason = f"no answer within {self.timeout:g} s"
            raise ConnectionFailed(
                f"cannot reach the registry at {self.base_url}: {reason}"
            ) from exc
        except http.client.HTTPException as exc:
            raise UnexpectedResponse(
                f"{self.base_url} does not speak HTTP as keyard does: {exc!r}"
            ) from exc
        try:
            return json.loads(raw), status
        except ValueError as exc:
            raise UnexpectedResponse(
                f"{method} {self.endpoint} answered HTTP {status} without JSON: {raw[:200]!r}"
            ) from exc

    def _error(self, method: str, status: int, reason: str, raw: bytes) -> KeyardError:
        """The exception for an error answer; its message is the server's description."""
        message = f"{method} {self.endpoint} answered HTTP {status} {reason}"
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if isinstance(body, dict) and (body.get("description") or body.get("title")):
            message = str(body.get("description") or body.get("title"))
        elif 400 <= status < 500:
            # keyard answers every 4xx in JSON: this server is something else (a wrong
            # URL or port), not a registry saying "no such instance" or "bad field".
            return UnexpectedResponse(f"{message} without keyard's JSON error; is it a registry?")
        if status == 404:
            return NotFound(message)
        if 400 <= status < 500:
            return InvalidInput(message)
        if 500 <= status < 600:
            return RegistryUnavailable(message)
        return UnexpectedResponse(message)


def _read_quietly(response: urllib.error.HTTPError) -> bytes:
    try:
        return response.read()
    except (OSError, http.client.HTTPException):
        return b""
