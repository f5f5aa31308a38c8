"""The keyard client: one method per registry operation, over the standard library's HTTP."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlencode, urlsplit

from keyard.client._exceptions import (
    CapacityExceeded,
    ConnectionFailed,
    Forbidden,
    InvalidInput,
    KeyardError,
    NotFound,
    RegistryUnavailable,
    Unauthorized,
    UnexpectedResponse,
)
from keyard.client._models import (
    OUT_OF_SERVICE,
    Instance,
    InstanceSpec,
    Registration,
    ServiceSummary,
    instance_from_json,
    joined,
    registration_from_json,
    summary_from_json,
)
from keyard.client._watch import Snapshot, Watch

if TYPE_CHECKING:
    from keyard.client._heartbeat import Heartbeat

#: Where a registry listens when nothing else is said (``keyard serve``'s default bind).
DEFAULT_URL = "http://127.0.0.1:8000"
#: Seconds to wait for the registry to connect and to answer each read.
DEFAULT_TIMEOUT = 5.0

T = TypeVar("T")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """keyard never redirects: a 3xx is an answer to report, not one to follow.

    (urllib would follow a 301 to a POST with a GET without its body: a register
    turned into a lookup.)
    """

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises the 3xx as an HTTPError


class KeyardClient:
    """A client of one keyard registry.

    Every method makes one HTTP request and raises keyard's exceptions, never
    urllib's: :class:`~keyard.errors.InvalidInput` (HTTP 400),
    :class:`~keyard.errors.Unauthorized` (401: the token is missing or refused),
    :class:`~keyard.errors.Forbidden` (403; :class:`~keyard.errors.CapacityExceeded`
    when the namespace is full), :class:`~keyard.errors.NotFound` (404),
    :class:`RegistryUnavailable` (503),
    :class:`ConnectionFailed` (refused, unknown host, timeout) and
    :class:`UnexpectedResponse` (an answer keyard would not give). The client
    holds no connection between calls, so one client may serve many threads.

    The fields an instance registers beyond its name, location, version and TTL
    (its id, status, tags, metadata, weight) are one :class:`InstanceSpec`,
    taken by :meth:`register`, :meth:`heartbeat` and :meth:`keep_alive`.

    >>> client = KeyardClient("http://127.0.0.1:8000", timeout=2)
    >>> client.register("app2", "http://127.0.0.1:8002", ttl=10)    # doctest: +SKIP
    >>> client.choose("app2", strategy="random")                    # doctest: +SKIP
    'http://127.0.0.1:8002'
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        token: str | None = None,
        cafile: str | None = None,
    ) -> None:
        """``base_url`` is the registry's root (``http://host:port``, maybe with a path
        prefix); the client talks to ``<base_url>/keyard``. ``timeout`` bounds, in
        seconds, the connection and each wait for the answer. ``token`` is sent as
        ``Authorization: Bearer TOKEN`` (its UTF-8 bytes) with every request: the
        namespace (auth mode trusted) or a JWT (mode jwt); it is never shown, not in
        the repr either. ``cafile`` names the PEM file of the certificate authorities
        that an ``https://`` registry's certificate is verified against (default: the
        system's).

        Raises ValueError for a URL that is not ``http(s)://host...``, a timeout <= 0,
        an empty token or one with a line break; OSError for a ``cafile`` that cannot
        be read or holds no certificate.
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
        self.cafile = cafile
        self._authorization: str | None = None
        if token is not None:
            if not isinstance(token, str) or not token.strip():
                raise ValueError("token must be a non-empty string")
            if any(char in token for char in "\r\n\0"):
                raise ValueError("token must not contain a line break or a NUL character")
            # http.client sends a header's text as latin-1: these are the token's UTF-8 bytes.
            self._authorization = f"Bearer {token.strip()}".encode().decode("latin-1")
        handlers: list[Any] = [_NoRedirects]
        if cafile is not None:
            context = ssl.create_default_context(cafile=cafile)
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self._opener = urllib.request.build_opener(*handlers)

    def __repr__(self) -> str:
        shown = ", token=..." if self._authorization is not None else ""
        shown += f", cafile={self.cafile!r}" if self.cafile is not None else ""
        return f"KeyardClient({self.base_url!r}, timeout={self.timeout!r}{shown})"

    # -- registering -------------------------------------------------------------------

    def register(
        self,
        service_name: str,
        location: str,
        *,
        version: str | None = None,
        ttl: int | None = None,
        spec: InstanceSpec | None = None,
    ) -> Registration:
        """Register an instance (POST), or refresh it if it is already registered.

        ``version`` defaults to the registry's ``"1.0"``, ``ttl`` to its default TTL.
        ``spec`` adds the instance's id, status, tags, metadata or weight; the
        answer's ``record`` is then the full record. Fields ``spec`` leaves out
        keep what the registry stored.
        """
        return self._registration("POST", service_name, location, version, ttl, spec)

    def heartbeat(
        self,
        service_name: str,
        location: str,
        *,
        version: str | None = None,
        ttl: int | None = None,
        spec: InstanceSpec | None = None,
    ) -> Registration:
        """Health-check an instance (PUT): push its expiry one TTL away.

        Without ``ttl`` the instance keeps the TTL it was registered with. An
        instance the registry does not know (it expired, or the registry
        restarted) is registered again: ``created`` is then ``True``. ``spec``
        as for :meth:`register` (with an ``instance_id``, that instance is meant).
        """
        return self._registration("PUT", service_name, location, version, ttl, spec)

    def deregister(self, service_name: str, location: str, *, version: str | None = None) -> None:
        """Remove the instances at this location (DELETE). NotFound when there is none.

        Every live instance of the service at ``version`` (default ``"1.0"``) and
        ``location`` goes, whatever its id; :meth:`deregister_instance` removes one.
        """
        fields = {"service_name": service_name, "version": version, "location": location}
        body = self._call("DELETE", (), fields)
        if not (isinstance(body, dict) and isinstance(body.get("deregistered"), dict)):
            raise UnexpectedResponse(f"DELETE {self.endpoint} answered {body!r}")

    def deregister_instance(self, service_name: str, instance_id: str) -> Instance:
        """Remove one instance by its id; returns its last record. NotFound when not live."""
        path = _instance_path(service_name, instance_id)
        body = self._call("DELETE", path)
        return self._parse("DELETE", path, body, lambda b: instance_from_json(b["deregistered"]))

    def keep_alive(
        self,
        service_name: str,
        location: str,
        *,
        version: str | None = None,
        ttl: int | None = None,
        spec: InstanceSpec | None = None,
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
            spec=spec,
            interval=interval,
            jitter=jitter,
            deregister=deregister,
        )

    # -- finding -------------------------------------------------------------------------

    def lookup(self, service_name: str, *, version: str | None = None) -> list[str]:
        """Every live ``UP`` location of the service (and version): by version, then location.

        An unknown service gives an empty list, not NotFound.
        """
        result = self._result({"service_name": service_name, "version": version})
        if not (isinstance(result, list) and all(isinstance(item, str) for item in result)):
            raise UnexpectedResponse(f"GET {self.endpoint} answered result {result!r}")
        return result

    def choose(
        self, service_name: str, *, version: str | None = None, strategy: str = "random"
    ) -> str:
        """One live ``UP`` location of the service, picked by the registry's ``strategy``
        (``random``, ``round_robin`` or ``weighted``). NotFound when none is live;
        InvalidInput for an unknown strategy.
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

    def services(self) -> list[ServiceSummary]:
        """Every service with a live instance, by name: how many instances, how many UP."""
        path = ("services",)
        body = self._call("GET", path)
        return self._parse("GET", path, body, lambda b: _each(b["services"], summary_from_json))

    def instances(
        self,
        service_name: str,
        *,
        version: str | None = None,
        tag: str | Iterable[str] | None = None,
        status: str | Iterable[str] | None = None,
    ) -> list[Instance]:
        """The live instances of the service as full records, by version, location, id.

        Every status unless ``status`` narrows it (one status, several, or
        ``"any"``); ``tag``: only instances with every one of these tags. An
        unknown service gives an empty list.
        """
        path = ("services", _segment(service_name, "service_name"))
        fields = {"version": version, "tag": joined(tag), "status": joined(status)}
        body = self._call("GET", path, fields)
        return self._parse("GET", path, body, lambda b: _each(b["instances"], instance_from_json))

    def watch(
        self,
        service_name: str,
        version: str | None = None,
        tag: str | Iterable[str] | None = None,
        status: str | Iterable[str] | None = None,
        wait: float = 60,
    ) -> Watch:
        """Watch the service's instances (filtered as :meth:`instances`): an iterator of
        :class:`Snapshot` s, the first the current state, each next one a change.

        Each request is a blocking query that the registry holds for up to ``wait``
        seconds (1 to 600); the watch retries 503s and refused connections with a
        doubling pause (logged on ``keyard.client``) and stops on ``break`` or
        :meth:`Watch.close`. InvalidInput for a bad filter or wait.
        """
        path = ("services", _segment(service_name, "service_name"))
        fields = {"version": version, "tag": joined(tag), "status": joined(status)}

        def fetch(index: int | None, wait: float) -> Snapshot:
            body = self._blocking(path, fields, index, wait)
            return self._parse("GET", path, body, lambda b: Snapshot(
                index=_index(b), instances=tuple(_each(b["instances"], instance_from_json))))

        return Watch(fetch, _wait(wait), f"service {service_name!r}")

    def watch_services(self, wait: float = 60) -> Watch:
        """Watch the catalog (:meth:`services`) as :meth:`watch` watches a service."""
        path = ("services",)

        def fetch(index: int | None, wait: float) -> Snapshot:
            body = self._blocking(path, {}, index, wait)
            return self._parse("GET", path, body, lambda b: Snapshot(
                index=_index(b), services=tuple(_each(b["services"], summary_from_json))))

        return Watch(fetch, _wait(wait), "the services")

    def _blocking(
        self, path: Sequence[str], fields: Mapping[str, object], index: int | None, wait: float
    ) -> Any:
        """One blocking query (a plain read when ``index`` is None), its answer's body.

        The request may take ``wait`` and the registry's random extra (up to wait/16)
        before its answer: the client's timeout is added to that.
        """
        if index is None:
            return self._exchange("GET", path, fields)[0]
        given = {**fields, "index": index, "wait": f"{wait:g}s"}
        return self._exchange("GET", path, given, timeout=self.timeout + wait * 17 / 16)[0]

    def instance(self, service_name: str, instance_id: str) -> Instance:
        """One live instance's record. NotFound when no live instance has this id."""
        path = _instance_path(service_name, instance_id)
        return self._parse("GET", path, self._call("GET", path), instance_from_json)

    # -- an operator's status override (maintenance) -------------------------------------

    def set_status(
        self, service_name: str, instance_id: str, status: str = OUT_OF_SERVICE
    ) -> Instance:
        """Impose ``status`` on the instance until :meth:`clear_status` (maintenance).

        It wins over what the instance reports, and survives its health checks;
        lookups (``UP`` only) stop answering it. Returns the record.
        """
        path = (*_instance_path(service_name, instance_id), "status")
        body = self._call("PUT", path, {"status": status})
        return self._parse("PUT", path, body, instance_from_json)

    def clear_status(self, service_name: str, instance_id: str) -> Instance:
        """Remove the operator's status: the instance's own status applies again."""
        path = (*_instance_path(service_name, instance_id), "status")
        return self._parse("DELETE", path, self._call("DELETE", path), instance_from_json)

    # -- HTTP ----------------------------------------------------------------------------

    def _registration(
        self,
        method: str,
        service_name: str,
        location: str,
        version: str | None,
        ttl: int | None,
        spec: InstanceSpec | None,
    ) -> Registration:
        extra = spec.fields() if spec is not None else {}
        fields = {
            "service_name": service_name,
            "version": version,
            "location": location,
            "ttl": ttl,
            **extra,
        }
        body, status = self._exchange(method, (), fields)
        return self._parse(
            method, (), body, lambda b: registration_from_json(b, status == 201, full=bool(extra))
        )

    def _parse(self, method: str, path: Sequence[str], body: Any, read: Callable[[Any], T]) -> T:
        """``read(body)``; UnexpectedResponse when the body is not what keyard answers."""
        try:
            return read(body)
        except (KeyError, TypeError, ValueError) as exc:
            shown = repr(body) if len(repr(body)) <= 300 else f"{repr(body)[:300]}..."
            raise UnexpectedResponse(
                f"{method} {self._url(path)} answered {shown} ({exc})"
            ) from exc

    def _result(self, fields: Mapping[str, object]) -> Any:
        body = self._call("GET", (), fields)
        if not (isinstance(body, dict) and "result" in body):
            raise UnexpectedResponse(f"GET {self.endpoint} answered {body!r}")
        return body["result"]

    def _call(
        self, method: str, path: Sequence[str], fields: Mapping[str, object] | None = None
    ) -> Any:
        return self._exchange(method, path, fields)[0]

    def _url(self, path: Sequence[str]) -> str:
        """``/keyard`` and the path's segments, each percent-encoded (``/`` as ``%2F``)."""
        return self.endpoint + "".join("/" + _quote(segment) for segment in path)

    def _exchange(
        self,
        method: str,
        path: Sequence[str],
        fields: Mapping[str, object] | None,
        timeout: float | None = None,
    ) -> tuple[Any, int]:
        """Send the fields (query string for GET, else a JSON body); the JSON answer and status.

        Fields that are ``None`` are not sent; without fields a DELETE has no body.
        """
        present = {name: value for name, value in (fields or {}).items() if value is not None}
        headers = {"Accept": "application/json"}
        if self._authorization is not None:
            headers["Authorization"] = self._authorization
        url = self._url(path)
        data = None
        if method == "GET":
            if present:
                url = f"{url}?{urlencode(present)}"
        elif fields is not None:
            data = json.dumps(present).encode("utf-8")
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        where = self._url(path)
        try:
            with self._opener.open(request, timeout=timeout or self.timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                error = self._error(
                    method, where, exc.code, exc.reason, _read_quietly(exc), exc.headers
                )
                raise error from None
        except OSError as exc:  # URLError, refused, reset, timeout
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, (TimeoutError, socket.timeout)):
                reason = f"no answer within {timeout or self.timeout:g} s"
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
                f"{method} {where} answered HTTP {status} without JSON: {raw[:200]!r}", status
            ) from exc

    def _error(
        self, method: str, where: str, status: int, reason: str, raw: bytes, headers: Any
    ) -> KeyardError:
        """The exception for an error answer; its message is the server's description.

        Only keyard's own error body (a JSON object with a ``title`` or a
        ``description``) is taken for the registry's word: any other answer,
        whatever its status, comes from a server that is not keyard (a wrong URL
        or port, a proxy's page) and raises UnexpectedResponse.
        """
        answered = f"{method} {where} answered HTTP {status} {reason}"
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        text = None
        if isinstance(body, dict):
            text = next(
                (
                    body[name]
                    for name in ("description", "title")
                    if isinstance(body.get(name), str) and body[name]
                ),
                None,
            )
        if 300 <= status < 400:
            target = headers.get("Location") if headers is not None else None
            to = f" to {target}" if target else ""
            return UnexpectedResponse(
                f"{answered}{to}: keyard does not redirect; is {self.base_url} the registry?",
                status,
            )
        if text is None:
            return UnexpectedResponse(
                f"{answered} without keyard's JSON error; is it a registry?", status
            )
        if status == 404:
            return NotFound(text)
        if status == 401:
            return Unauthorized(text)
        if status == 403:
            if isinstance(body, dict) and body.get("title") == "Namespace full":
                return CapacityExceeded(text)
            return Forbidden(text)
        if 400 <= status < 500:
            return InvalidInput(text)
        if 500 <= status < 600:
            return RegistryUnavailable(text)
        return UnexpectedResponse(text, status)


def _index(body: Any) -> int:
    """An answer's change index: a whole number (KeyError/ValueError when it is not)."""
    index = body["index"]
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"index {index!r} is not a whole number")
    return index


def _wait(wait: float) -> float:
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 1 <= wait <= 600:
        raise InvalidInput(f"wait must be between 1 and 600 seconds, got {wait!r}")
    return float(wait)


def _quote(segment: str) -> str:
    quoted = quote(segment, safe="")
    # "." and ".." are no names but steps along the path: encode them too.
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


def _segment(value: str, name: str) -> str:
    """A name that goes into the path; an empty one would name another resource."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{name} must not be empty")
    return value


def _instance_path(service_name: str, instance_id: str) -> tuple[str, ...]:
    return (
        "services",
        _segment(service_name, "service_name"),
        "instances",
        _segment(instance_id, "instance_id"),
    )


def _each(items: object, read: Callable[[object], T]) -> list[T]:
    if not isinstance(items, list):
        raise ValueError(f"expected a JSON list, got {items!r}")
    return [read(item) for item in items]


def _read_quietly(response: urllib.error.HTTPError) -> bytes:
    try:
        return response.read()
    except (OSError, http.client.HTTPException):
        return b""
