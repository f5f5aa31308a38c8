"""The etcd store (``store_type: "etcd"``): one registry shared by every keyard process.

It speaks etcd's v2 keys API through python-etcd (etcd 3.4 serves it with
``--enable-v2=true``). An instance is one key::

    {base_path}/{service_name}/{version}/{location}  ->  {"ttl": 30, "expires_at": ..., ...}

Each of the three parts is percent-encoded on its own (see :func:`encode_part`),
so ``/``, ``%``, ``..`` or a leading ``_`` in a name never create a directory,
climb out of one, or hide a key; the value holds the names exactly as given.
The key carries etcd's own TTL (the instance's ``ttl``), so etcd purges
expired instances by itself; the value's ``expires_at`` lets every read hide
an expired instance that etcd has not purged yet.

Several members of a cluster can be given; a request that fails on one member
is retried on the next one, within the store's ``timeout``. Every failure to
reach etcd comes out as :class:`~keyard.errors.StoreUnavailable`.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import wraps
from typing import Any, NamedTuple, TypeVar, cast
from urllib.parse import quote, urlencode, urlsplit

import etcd
import urllib3

from keyard.errors import ConfigError, StoreUnavailable
from keyard.stores import options as opt
from keyard.stores.base import Instance, Store
from keyard.stores.etcd_mirror import Mirror, by_version_and_location, leaves

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_PORT = 2379
DEFAULT_BASE_PATH = "/services"
DEFAULT_TIMEOUT = 2.0
MAX_TIMEOUT = 60.0
OPTIONS = ("host", "port", "protocol", "base_path", "timeout", "allow_reconnect", "cache")

#: etcd's answers to a well-formed request: the store's logic handles them.
_ANSWERS: tuple[type[Exception], ...] = (
    etcd.EtcdKeyNotFound,
    etcd.EtcdAlreadyExist,
    etcd.EtcdCompareFailed,
    etcd.EtcdNotFile,
    etcd.EtcdNotDir,
    etcd.EtcdDirNotEmpty,
)
#: Errors that retrying cannot cure (bad permissions, a value etcd rejects).
_PERMANENT: tuple[type[Exception], ...] = (
    etcd.EtcdInsufficientPermissions,
    etcd.EtcdValueError,
    etcd.EtcdKeyError,
)
#: Everything python-etcd, urllib3 and the socket layer may raise.
_DRIVER_ERRORS: tuple[type[Exception], ...] = (
    etcd.EtcdException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)
_DISCOVERY_ERRORS: tuple[type[Exception], ...] = (*_DRIVER_ERRORS, ValueError, KeyError, TypeError)
_FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}
#: Where :meth:`_Member.request` puts the answer's ``X-Etcd-Index`` header.
INDEX_HEADER = "x-etcd-index"
#: The longest key segment kept readable; longer parts are stored under a digest.
MAX_SEGMENT = 150
#: The longest base path, so that every request line stays far below etcd's 4 KiB.
MAX_BASE_PATH = 200
#: How many times one call may go round all members while none can be connected to.
_UNREACHABLE_ROUNDS = 2
#: Don't ask the cluster for its members more often than this, in seconds.
_DISCOVERY_INTERVAL = 10.0


# -- keys --------------------------------------------------------------------


def encode_part(part: str) -> str:
    """The key segment that stands for ``part``: distinct parts give distinct segments.

    Percent-encoding with no safe characters, plus: a leading ``.`` is encoded
    (so ``.`` and ``..`` are never path segments that etcd would resolve), a
    leading ``_`` is encoded (etcd v2 hides such keys from listings), and the
    empty string becomes ``%``. A part whose encoding is longer than
    :data:`MAX_SEGMENT` characters is stored under its SHA-256 instead (etcd
    resets requests whose first line exceeds 4 KiB), as ``%sha256-<hex>``.
    None of these forms can be produced by another rule: percent-encoding never
    yields a ``%`` without two hex digits after it.
    """
    if not part:
        return "%"
    encoded = quote(part, safe="", errors="surrogatepass")
    if len(encoded) > MAX_SEGMENT:
        digest = hashlib.sha256(part.encode("utf-8", "surrogatepass")).hexdigest()
        return f"%sha256-{digest}"
    if encoded[0] in "._":
        encoded = f"%{ord(encoded[0]):02X}{encoded[1:]}"
    return encoded


@functools.lru_cache(maxsize=4096)
def _lookup_segment(part: str) -> str:
    """:func:`encode_part`, remembered for the names that lookups ask for again and again.

    The registry lets at most 128 characters through, so this holds a few MiB at most.
    """
    return encode_part(part)


def _url_path(key: str) -> str:
    # python-etcd puts the key into the URL as it is, and etcd decodes the URL
    # path once: quote the key so that etcd sees our encoded segments verbatim.
    return quote(key, safe="/")


# -- configuration -----------------------------------------------------------


class _Endpoint(NamedTuple):
    host: str
    port: int

    @property
    def netloc(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _check_port(port: object, member: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(
            f"etcd store: option host: the port of {member!r} must be between 1 and 65535"
        )
    return port


def _is_pair(value: Sequence[Any]) -> bool:
    """``[host, port]``: a host without a port of its own, and a number."""
    return (
        len(value) == 2
        and isinstance(value[0], str)
        and bool(value[0])
        and value[0].count(":") != 1
        and isinstance(value[1], int)
    )


def _parse_member(member: object, default_port: int) -> _Endpoint:
    """One member: ``"host"``, ``"host:port"``, ``"[::1]:port"`` or ``[host, port]``."""
    if isinstance(member, (list, tuple)):
        if not _is_pair(member):
            raise ConfigError(
                f"etcd store: option host: a member must be 'host:port', got {member!r}"
            )
        return _Endpoint(member[0], _check_port(member[1], member))
    if not isinstance(member, str) or not member.strip():
        raise ConfigError(f"etcd store: option host: a member must be 'host:port', got {member!r}")
    text = member.strip()
    if "://" in text:
        raise ConfigError(
            f"etcd store: option host: give 'host:port', not a URL ({member!r}); "
            "the scheme goes in the protocol option"
        )
    try:
        parsed = urlsplit(f"//{text}")
        port = parsed.port
    except ValueError:
        raise ConfigError(
            f"etcd store: option host: {member!r} is not 'host' or 'host:port'"
        ) from None
    if not parsed.hostname or parsed.path or parsed.query or parsed.fragment or "@" in text:
        raise ConfigError(f"etcd store: option host: {member!r} is not 'host' or 'host:port'")
    host = text[1 : text.index("]")] if text.startswith("[") else parsed.hostname
    return _Endpoint(host, default_port if port is None else _check_port(port, member))


def _parse_hosts(host: object, port: int) -> list[_Endpoint]:
    if isinstance(host, str) and "," in host:
        host = [part for part in host.split(",") if part.strip()]
    if isinstance(host, (list, tuple)) and not _is_pair(host):
        if not host:
            raise ConfigError("etcd store: option host: the list of members is empty")
        members = [_parse_member(member, port) for member in host]
    else:
        members = [_parse_member(host, port)]
    unique = list(dict.fromkeys(members))
    return unique


def _parse_base_path(base_path: object) -> str:
    if not isinstance(base_path, str) or not base_path.startswith("/"):
        raise ConfigError(
            f"etcd store: option base_path must be a path starting with '/', got {base_path!r}"
        )
    segments = base_path.strip("/").split("/")
    if segments == [""] or any(s in ("", ".", "..") or s.startswith("_") for s in segments):
        raise ConfigError(
            f"etcd store: option base_path must be like '/services': non-empty segments, none of "
            f"them '.', '..' or starting with '_'; got {base_path!r}"
        )
    normalized = "/" + "/".join(segments)
    if len(_url_path(normalized)) > MAX_BASE_PATH:
        raise ConfigError(
            f"etcd store: option base_path must be at most {MAX_BASE_PATH} characters once "
            f"URL-encoded; got {base_path!r}"
        )
    return normalized


# -- one member --------------------------------------------------------------


class _Member(etcd.Client):
    """python-etcd's client for one etcd member, adapted for a store.

    - No reconnection inside python-etcd (the store fails over between members
      itself): its ``allow_reconnect`` queries the cluster in the constructor
      (so a store could not even be built while etcd is down) and changes the
      client's server under concurrent threads.
    - urllib3 must not retry: its default ``Retry(3)`` would resend a timed-out
      request three more times and break the store's time bound.
    - Each request's timeout comes from the calling thread (:meth:`timeout`),
      because python-etcd's ``write`` and ``delete`` take none.
    - The keys requests go through :meth:`request`, straight to the member's
      connection pool with a request target built once: python-etcd's
      ``read``/``write`` cost about as much Python time as etcd takes to answer
      (a URL parsed and re-encoded twice per request, a result object per node).
    """

    def __init__(self, endpoint: _Endpoint, protocol: str, pool_size: int) -> None:
        host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
        super().__init__(
            host=host,
            port=endpoint.port,
            protocol=protocol,
            read_timeout=DEFAULT_TIMEOUT,
            allow_redirect=False,
            allow_reconnect=False,
            per_host_pool_size=pool_size,
        )
        self.http = urllib3.PoolManager(num_pools=2, maxsize=pool_size, retries=False)
        self._pool_args = (host, endpoint.port, pool_size)
        self.pool = self._new_pool()
        self.endpoint = endpoint
        self._local = threading.local()

    @property
    def read_timeout(self) -> urllib3.Timeout:
        """The calling thread's timeout for one request, connection included."""
        return getattr(self._local, "timeout", urllib3.Timeout(total=self._read_timeout))

    def timeout(self, seconds: float) -> _TimeoutScope:
        """Give the calling thread's requests ``seconds`` in all, connecting included."""
        return _TimeoutScope(self._local, urllib3.Timeout(total=max(seconds, 0.001)))

    def request(self, method: str, path: str, fields: Mapping[str, str]) -> dict[str, Any]:
        """One v2 keys request (``path`` is URL-encoded already); etcd's JSON answer.

        etcd's error answers raise python-etcd's exceptions (``EtcdKeyNotFound``
        ...), as its ``read``/``write`` do; a failure to get an answer raises
        ``EtcdConnectionFailed`` with the urllib3 error as its ``cause``.
        """
        target = f"/v2/keys{path}"
        body = None
        headers = None
        if method in ("GET", "DELETE"):
            if fields:
                target = f"{target}?{urlencode(fields)}"
        else:
            body = urlencode(fields)
            headers = _FORM_HEADERS
        try:
            response = self.pool.urlopen(
                method,
                target,
                body=body,
                headers=headers,
                timeout=self.read_timeout,
                retries=False,
                redirect=False,
                assert_same_host=False,
            )
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
            raise etcd.EtcdConnectionFailed(
                f"Connection to etcd failed due to {exc!r}", cause=exc
            ) from exc
        try:
            self._check_cluster_id(response)
        except etcd.EtcdClusterIdChanged:
            self.pool.close()  # connect afresh to the new cluster next time
            self.pool = self._new_pool()
            raise
        try:
            answer = json.loads(response.data)
        except (ValueError, RecursionError):
            answer = None
        if response.status in (200, 201) and isinstance(answer, dict):
            answer[INDEX_HEADER] = _index_of(response)
            return answer
        if response.status in (200, 201):
            raise etcd.EtcdException(f"etcd's answer is not JSON: {response.data[:200]!r}")
        self._raise_for(response.status, response.data)
        raise AssertionError("unreachable")  # _raise_for always raises

    def watch(
        self,
        path: str,
        index: int,
        wait: float,
        started: Callable[[], None],
        answer_within: float = DEFAULT_TIMEOUT,
    ) -> Iterator[dict[str, Any]]:
        """The changes under ``path`` from ``index`` on, as etcd streams them.

        One request (``?wait=true&recursive=true&stream=true&waitIndex=``): etcd
        sends its headers at once, and ``started()`` is called then, as proof
        that etcd took the watch; then every change as it is made, each event
        (``action``, ``node``, ``prevNode``) on its own line. The iterator ends
        when no change came for ``wait`` seconds, when etcd ends the stream (it
        does when the reader falls 100 events behind), and after an event that
        etcd found in its history rather than live: etcd then sends no more on
        that request, and the caller watches again from the next index. Raises
        as :meth:`request` does, ``EtcdEventIndexCleared`` when ``index`` has
        left etcd's event history (the last 1000 events), and when etcd does not
        answer the headers within ``answer_within`` seconds (a busy etcd gets
        longer than ``wait`` for them: a watch that failed is read again whole).
        """
        fields = {"wait": "true", "recursive": "true", "stream": "true", "waitIndex": str(index)}
        try:
            response = self.pool.urlopen(
                "GET",
                f"/v2/keys{path}?{urlencode(fields)}",
                timeout=urllib3.Timeout(connect=answer_within, read=answer_within),
                retries=False,
                redirect=False,
                assert_same_host=False,
                preload_content=False,
            )
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
            raise etcd.EtcdConnectionFailed(f"etcd watch failed due to {exc!r}", cause=exc) from exc
        try:
            self._check_cluster_id(response)
            if response.status != 200:
                self._raise_for(response.status, response.read())
            started()
            connection = response.connection
            sock = getattr(connection, "sock", None)
            if sock is not None:
                sock.settimeout(wait)  # from now on: how long to wait for the next change
            live_after = _index_of(response)  # events up to here come from the history
            pending = b""
            for chunk in response.read_chunked() if response.chunked else [response.read()]:
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if not isinstance(event, dict):
                        raise etcd.EtcdException(
                            f"a watched event is not an object: {line[:200]!r}"
                        )
                    yield event
                    if (event.get("node") or {}).get("modifiedIndex", 0) <= live_after:
                        return  # from the history: etcd sends nothing more on this request
        except urllib3.exceptions.ReadTimeoutError:
            return  # no change within ``wait``
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
            raise etcd.EtcdConnectionFailed(f"etcd watch failed due to {exc!r}", cause=exc) from exc
        except (ValueError, RecursionError) as exc:
            raise etcd.EtcdException(f"a watched event is not JSON: {exc}") from exc
        finally:
            response.close()
            response.release_conn()

    @staticmethod
    def _raise_for(status: int, data: bytes) -> None:
        """Raise python-etcd's exception for etcd's error answer."""
        try:
            answer = json.loads(data)
        except (ValueError, RecursionError):
            answer = None
        if isinstance(answer, dict):
            answer["status"] = status
        else:  # as python-etcd reports it (see _without_v2_api)
            answer = {"message": "Bad response", "cause": data.decode("utf-8", "replace")}
        etcd.EtcdError.handle(answer)  # raises the exception that stands for the answer
        raise etcd.EtcdException(f"etcd answered {status}: {answer}")

    def close(self) -> None:
        self.pool.close()
        self.http.clear()

    def _new_pool(self) -> urllib3.HTTPConnectionPool:
        host, port, size = self._pool_args
        if self.protocol == "https":
            return urllib3.HTTPSConnectionPool(host, port, maxsize=size, retries=False)
        return urllib3.HTTPConnectionPool(host, port, maxsize=size, retries=False)


class _TimeoutScope:
    def __init__(self, local: threading.local, timeout: urllib3.Timeout) -> None:
        self._local = local
        self._timeout = timeout

    def __enter__(self) -> None:
        self._local.timeout = self._timeout

    def __exit__(self, *exc_info: object) -> None:
        del self._local.timeout


class _QuietPythonEtcd(logging.Filter):
    """Turn python-etcd's error logs into debug logs.

    python-etcd logs every failed request at ERROR, including those the store
    then retries with success on another member; the store reports what
    matters itself (StoreUnavailable, and a warning when it fails over).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


_python_etcd_log = logging.getLogger("etcd.client")
if not any(isinstance(f, _QuietPythonEtcd) for f in _python_etcd_log.filters):
    _python_etcd_log.addFilter(_QuietPythonEtcd())


def _is_unreachable(exc: BaseException) -> bool:
    """True when no connection could be opened at all (refused, unknown host)."""
    cause = getattr(exc, "cause", None) or exc
    return isinstance(cause, (urllib3.exceptions.NewConnectionError, ConnectionRefusedError))


def _without_v2_api(exc: BaseException) -> bool:
    """True for the plain 404 that etcd gives on ``/v2/keys`` without ``--enable-v2=true``.

    python-etcd reports an answer that is not JSON as a bare EtcdException.
    """
    payload = getattr(exc, "payload", None)
    return (
        isinstance(payload, dict)
        and payload.get("message") == "Bad response"
        and "404 page not found" in str(payload.get("cause"))
    )


def _describe(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, urllib3.exceptions.NewConnectionError):
        return f"cannot connect ({str(cause).rpartition(': ')[2]})"
    if isinstance(cause, urllib3.exceptions.TimeoutError):
        return "no answer in time"
    return f"{type(cause).__name__}: {cause}"


# -- the store ---------------------------------------------------------------


def _at_the_edge(method: F) -> F:
    """Let no driver exception out of a store method: they become StoreUnavailable.

    ``_call`` already translates failures to reach etcd; what is left are etcd
    answers that the method did not expect (a foreign key in the way).
    """

    @wraps(method)
    def translated(self: EtcdStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except _DRIVER_ERRORS as exc:
            raise self._unavailable(f"{type(exc).__name__}: {exc}") from exc

    return cast(F, translated)


class EtcdStore(Store):
    """Instances as etcd v2 keys under ``base_path``, expired by etcd's own TTLs.

    ``host`` is one host (``"localhost"``, ``"10.0.0.5:2379"``) or the members of
    a cluster (``["10.0.0.5:2379", "10.0.0.6:2379"]``); ``port`` applies to those
    given without one. ``timeout`` bounds every store call, failover included.
    With ``allow_reconnect`` (the default when several members are given) the
    store also learns the other members from the cluster, and fails over to
    them when the member in use stops answering.

    Reads are quorum reads, so every keyard process sees a registration as
    soon as it is made, whichever member it talks to. Stores with the same
    ``base_path`` share one registry; different base paths never see each other.
    Thread-safe; without ``cache`` the store holds no state but connection pools.

    With ``cache`` each process that looks up keeps a copy of everything under
    ``base_path``, kept current by a watch (:mod:`keyard.stores.etcd_mirror`),
    and answers lookups from it while it is current: this process's writes at
    once, other processes' after the watch brings them (milliseconds). While
    the copy is not known to be current, lookups are quorum reads as without it.
    """

    name = "etcd"

    def __init__(
        self,
        host: str | Sequence[str | Sequence[Any]] = "localhost",
        port: int = DEFAULT_PORT,
        *,
        protocol: str = "http",
        base_path: str = DEFAULT_BASE_PATH,
        timeout: float = DEFAULT_TIMEOUT,
        allow_reconnect: bool | None = None,
        cache: bool = False,
    ) -> None:
        port = opt.whole_number("etcd", "port", port, minimum=1, maximum=65535)
        endpoints = _parse_hosts(host, port)
        if protocol not in ("http", "https"):
            raise ConfigError(
                f"etcd store: option protocol must be 'http' or 'https', got {protocol!r}"
            )
        timeout = opt.seconds("etcd", "timeout", timeout, zero_ok=False, maximum=MAX_TIMEOUT)
        if allow_reconnect is None:
            allow_reconnect = len(endpoints) > 1
        elif not isinstance(allow_reconnect, bool):
            raise ConfigError(
                f"etcd store: option allow_reconnect must be true or false, got {allow_reconnect!r}"
            )
        elif not allow_reconnect and len(endpoints) > 1:
            raise ConfigError(
                f"etcd store: option allow_reconnect is false but host lists {len(endpoints)} "
                "members; leave allow_reconnect out (or true) to use them all"
            )
        self.base_path = _parse_base_path(base_path)
        self.cache = opt.boolean("etcd", "cache", cache)
        self.protocol = protocol
        self.timeout = float(timeout)
        self.allow_reconnect = allow_reconnect
        self._pool_size = 16
        self._members = tuple(_Member(e, protocol, self._pool_size) for e in endpoints)
        self._current = 0  # index into _members of the member that answered last
        self._lock = threading.Lock()  # guards changes to _members
        self._discovered_at: float | None = None
        self._parsed: dict[tuple[str, str], Instance | None] = {}
        self._mirrors: dict[int, Mirror] = {}  # by process id: a forked child builds its own

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> EtcdStore:
        """Build the store from the ``etcd`` config section; every option has a default.

        ``host``, ``port`` (2379), ``protocol`` (``"http"``), ``base_path``
        (``"/services"``), ``timeout`` (2 seconds), ``allow_reconnect``
        (true when ``host`` lists several members) and ``cache`` (false).
        """
        opt.reject_unknown("etcd", options, OPTIONS)
        return cls(**options)

    @property
    def members(self) -> list[str]:
        """The members the store may use, as ``host:port``: configured, then discovered."""
        return [m.endpoint.netloc for m in self._members]

    def __repr__(self) -> str:
        return f"EtcdStore({self._where()}, base_path={self.base_path!r})"

    # -- the Store interface ---------------------------------------------------

    @_at_the_edge
    def register(self, instance: Instance) -> bool:
        deadline = time.monotonic() + self.timeout
        key = self._key(instance.service_name, instance.version, instance.location)
        path = _url_path(key)
        now = instance.expires_at - instance.ttl
        # The writer token tells this call's own write apart from anyone else's
        # when a request is resent after its answer was lost (a member died).
        token = uuid.uuid4().hex
        fields = _write_fields(instance, token)
        decided: bool | None = None  # the answer of an update this call made
        while True:
            try:
                answer = self._call(deadline, "PUT", path, **fields, prevExist="false")
                self._wrote(key, answer, instance)
                return True
            except etcd.EtcdAlreadyExist:
                pass
            try:
                current = self._read(deadline, path, quorum=True)
            except etcd.EtcdKeyNotFound:
                continue  # expired or removed meanwhile: create it again
            if current.get("dir"):
                raise self._unavailable(f"{key} is a directory in etcd, not an instance")
            record = _record(current.get("value"))
            if record is not None and record.get("writer") == token:
                self._wrote(key, {"node": current}, instance)
                return True if decided is None else decided
            live = record is not None and record["expires_at"] > now
            try:
                answer = self._call(
                    deadline, "PUT", path, **fields, prevIndex=current["modifiedIndex"]
                )
                self._wrote(key, answer, instance)
                return not live
            except (etcd.EtcdCompareFailed, etcd.EtcdKeyNotFound):
                decided = not live  # in case the failed compare was our own resent write
                continue

    @_at_the_edge
    def refresh(self, instance: Instance) -> tuple[Instance, bool]:
        """One read and one compare-and-swap write (the base class takes four requests).

        The first read is a local one (no quorum, so it costs etcd no raft
        round), or none at all with ``cache`` when this process's copy is
        current: the write that follows only succeeds if the key is still
        exactly as read (``prevIndex``, or ``prevExist=false`` when absent), so
        a stale read costs one more round, with a quorum read, never a wrong
        answer.
        """
        deadline = time.monotonic() + self.timeout
        key = self._key(instance.service_name, instance.version, instance.location)
        path = _url_path(key)
        now = instance.expires_at - instance.ttl
        token = uuid.uuid4().hex
        quorum = False
        decided: tuple[Instance, bool] | None = None  # the answer of a write this call made
        guess = self._cached_entry(key)
        while True:
            index: int | None
            if guess is not None:
                (index, known), guess = guess, None
            else:
                try:
                    current: dict[str, Any] | None = self._read(deadline, path, quorum=quorum)
                except etcd.EtcdKeyNotFound:
                    current = None
                quorum = True
                if current is not None and current.get("dir"):
                    raise self._unavailable(f"{key} is a directory in etcd, not an instance")
                if current is not None and decided is not None:
                    record = _record(current.get("value"))
                    if record is not None and record.get("writer") == token:
                        self._wrote(key, {"node": current}, decided[0])
                        return decided
                index = None if current is None else current["modifiedIndex"]
                value = None if current is None else current.get("value")
                known = None if value is None else self._parse(key, value)
            if known is not None and known.expires_at > now:
                answer = (instance._replace(ttl=known.ttl, expires_at=now + known.ttl), False)
            else:
                answer = (instance, True)
            fields = _write_fields(answer[0], token)
            try:
                if index is None:
                    written = self._call(deadline, "PUT", path, **fields, prevExist="false")
                else:
                    written = self._call(deadline, "PUT", path, **fields, prevIndex=index)
                self._wrote(key, written, answer[0])
                return answer
            except (etcd.EtcdAlreadyExist, etcd.EtcdCompareFailed, etcd.EtcdKeyNotFound):
                decided = answer  # in case the failed compare was our own resent write

    @_at_the_edge
    def get(self, service_name: str, version: str, location: str, now: float) -> Instance | None:
        deadline = time.monotonic() + self.timeout
        key = self._key(service_name, version, location)
        try:
            node = self._read(deadline, _url_path(key), quorum=True)
        except (etcd.EtcdKeyNotFound, etcd.EtcdNotDir):
            return None
        if node.get("dir"):
            return None
        value = node.get("value")
        instance = None if value is None else self._parse(node["key"], value)
        if instance is None or instance.expires_at <= now:
            return None
        return instance

    @_at_the_edge
    def deregister(self, service_name: str, version: str, location: str, now: float) -> bool:
        deadline = time.monotonic() + self.timeout
        key = self._key(service_name, version, location)
        path = _url_path(key)
        while True:
            try:
                current = self._read(deadline, path, quorum=True)
            except etcd.EtcdKeyNotFound as exc:
                self._wrote(key, {"node": {"modifiedIndex": _error_index(exc)}}, None)
                return False
            if current.get("dir"):
                return False
            record = _record(current.get("value"))
            live = record is not None and record["expires_at"] > now
            try:
                answer = self._call(deadline, "DELETE", path, prevIndex=current["modifiedIndex"])
            except etcd.EtcdKeyNotFound as exc:
                self._wrote(key, {"node": {"modifiedIndex": _error_index(exc)}}, None)
                return False
            except etcd.EtcdCompareFailed:
                continue  # refreshed meanwhile: decide again on the new record
            self._wrote(key, answer, None)
            if live:
                self._remove_empty_directories(service_name, version, deadline)
            return live

    @_at_the_edge
    def lookup(self, service_name: str, version: str | None, now: float) -> list[Instance]:
        """The live instances, from this process's copy when ``cache`` is on and it is current.

        Otherwise (``cache`` off, or the copy not loaded, or its watch failing)
        a quorum read of the service's directory.
        """
        service = _lookup_segment(service_name)
        version_part = None if version is None else _lookup_segment(version)
        if self.cache:
            found = self._mirror(start=True).lookup(service, version_part, now)
            if found is not None:
                return found
        deadline = time.monotonic() + self.timeout
        parts = [self.base_path, service]
        if version_part is not None:
            parts.append(version_part)
        path = _url_path("/".join(parts))
        try:
            tree = self._read(deadline, path, recursive=True, quorum=True)
        except (etcd.EtcdKeyNotFound, etcd.EtcdNotDir):
            return []
        found = []
        # Only leaves with a value: directories emptied by deletes or expiry stay
        # in etcd and must not show up.
        for node in leaves(tree):
            instance = self._instance(node["key"], node.get("value"))
            if instance is not None and instance.expires_at > now:
                found.append(instance)
        found.sort(key=by_version_and_location)
        return found

    def close(self) -> None:
        mirror = self._mirrors.pop(os.getpid(), None)
        if mirror is not None:
            mirror.stop()
        for member in self._members:
            member.close()

    def cache_info(self) -> dict[str, Any] | None:
        """What this process's copy holds (see :meth:`Mirror.info`); None when it has none."""
        mirror = self._mirrors.get(os.getpid())
        return None if mirror is None else mirror.info()

    def hold_cache(self, held: bool) -> None:
        """Hold this process's copy's watcher between two requests, or let it go on (tests)."""
        mirror = self._mirror(start=True)
        if held:
            mirror.hold()
        else:
            mirror.resume()

    # -- internals ---------------------------------------------------------------

    def _mirror(self, *, start: bool) -> Mirror:
        """This process's copy of the registry, made and started on first use.

        Keyed by process id: a copy and thread made before gunicorn forked
        belong to the parent; the child makes its own.
        """
        pid = os.getpid()
        mirror = self._mirrors.get(pid)
        if mirror is None:
            made = Mirror(
                self.base_path,
                load=self._load_everything,
                watch=self._watch,
                parse=self._parse,
                timeout=self.timeout,
            )
            mirror = self._mirrors.setdefault(pid, made)  # one of racing threads wins
            for other in list(self._mirrors):
                if other != pid:
                    self._mirrors.pop(other, None)  # a parent's copy, without its thread here
        if start:
            mirror.start()
        return mirror

    def _cached_entry(self, key: str) -> tuple[int | None, Instance | None] | None:
        """``(modifiedIndex, instance)`` of ``key`` in this process's current copy.

        ``(None, None)`` when the copy holds no instance there; ``None`` when
        there is no current copy to ask.
        """
        mirror = self._mirrors.get(os.getpid()) if self.cache else None
        return None if mirror is None else mirror.entry(key)

    def _wrote(self, key: str, answer: dict[str, Any], instance: Instance | None) -> None:
        """Apply a write of this process to its copy at once, at the write's etcd index."""
        mirror = self._mirrors.get(os.getpid()) if self.cache else None
        index = (answer.get("node") or {}).get("modifiedIndex")
        if mirror is not None and isinstance(index, int):
            mirror.put(key, index, instance)

    def _load_everything(self, deadline: float) -> tuple[dict[str, Any] | None, int]:
        """Everything under base_path (a quorum read), and the etcd index it is current at."""
        try:
            answer = self._call(
                deadline, "GET", _url_path(self.base_path), recursive="true", quorum="true"
            )
        except etcd.EtcdKeyNotFound as exc:
            return None, _error_index(exc)
        return answer.get("node"), answer[INDEX_HEADER]

    def _watch(
        self, index: int, wait: float, started: Callable[[], None]
    ) -> Iterator[dict[str, Any]]:
        """Watch base_path on the member that answered last (see :meth:`_Member.watch`)."""
        members = self._members
        member = members[self._current % len(members)]
        try:
            yield from member.watch(
                _url_path(self.base_path), index, wait, started, answer_within=self.timeout
            )
        except etcd.EtcdEventIndexCleared:
            raise  # the mirror reads everything again
        except _ANSWERS:
            raise
        except _DRIVER_ERRORS as exc:
            raise self._unavailable(f"watch: {_describe(exc)}") from exc

    def _key(self, service_name: str, version: str, location: str) -> str:
        return "/".join(
            (self.base_path, encode_part(service_name), encode_part(version), encode_part(location))
        )

    def _instance(self, key: str, value: str | None) -> Instance | None:
        """The instance a key and value hold, or None when they are not one of ours.

        The names come from the value (segments may be digests); they must give
        back exactly the key they were found under. The answer depends on
        ``key`` and ``value`` alone, so it is remembered for the values read
        most recently: a lookup of a busy service reads the same values again
        and again until their next refresh.
        """
        if value is None:
            return None
        parsed = self._parsed.get((key, value), _UNPARSED)
        if parsed is not _UNPARSED:
            return cast("Instance | None", parsed)
        instance = self._parse(key, value)
        if len(self._parsed) >= _PARSED_VALUES:
            self._parsed.clear()
        self._parsed[(key, value)] = instance
        return instance

    def _parse(self, key: str, value: str) -> Instance | None:
        record = _record(value)
        if record is None:
            return None
        names = tuple(record.get(name) for name in ("service_name", "version", "location"))
        if not all(isinstance(name, str) for name in names):
            return None
        service_name, version, location = cast("tuple[str, str, str]", names)
        if key != self._key(service_name, version, location):
            return None
        return Instance(service_name, version, location, record["ttl"], record["expires_at"])

    def _remove_empty_directories(self, service_name: str, version: str, deadline: float) -> None:
        """Delete the version and service directories if this left them empty.

        Best effort: etcd refuses to delete a directory that is not empty, so a
        concurrent registration is never lost; a failure here changes nothing.
        """
        service = f"{self.base_path}/{encode_part(service_name)}"
        for directory in (f"{service}/{encode_part(version)}", service):
            try:
                self._call(deadline, "DELETE", _url_path(directory), dir="true")
            except (etcd.EtcdException, StoreUnavailable):
                return

    def _where(self) -> str:
        return ", ".join(m.endpoint.netloc for m in self._members)

    def _unavailable(self, reason: str) -> StoreUnavailable:
        return StoreUnavailable(f"etcd at {self._where()} is unavailable: {reason}")

    def _read(self, deadline: float, path: str, **fields: Any) -> dict[str, Any]:
        """GET one key or directory; its node (``key``, ``value``, ``dir``, ``nodes``, ...)."""
        for name, value in fields.items():
            if isinstance(value, bool):
                fields[name] = "true" if value else "false"
        node = self._call(deadline, "GET", path, **fields).get("node")
        if not isinstance(node, dict):
            raise etcd.EtcdException(f"etcd's answer for {path} has no node")
        return node

    def _call(self, deadline: float, method: str, path: str, **fields: Any) -> dict[str, Any]:
        """Send one keys request to the current member, failing over; etcd's answer.

        ``method`` is ``GET``, ``PUT`` or ``DELETE``, ``fields`` its form or
        query fields (``prevExist="false"``, ``prevIndex=12``, ``quorum="true"``).

        etcd's answers (key not found, compare failed, ...) come out as
        python-etcd raises them. Failures are retried on the next member until
        ``deadline``: at once when a member cannot be connected to (giving up
        after a few rounds of that), after a short pause when the members are
        reachable but failing (an election after the leader died). Every
        driver exception leaves as StoreUnavailable.
        """
        members = self._members
        count = len(members)
        start = self._current % count
        # With several members one attempt gets a quarter of the time: a request
        # that a follower forwarded to a leader that just died is never answered,
        # and must be sent again once the cluster has elected another leader.
        attempt_limit = self.timeout if count == 1 else self.timeout / 4
        failures: list[tuple[_Member, BaseException]] = []
        unreachable_in_a_row = 0
        pause = 0.05
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            index = (start + attempt) % count
            member = members[index]
            try:
                with member.timeout(min(remaining, attempt_limit)):
                    result = member.request(method, path, fields)
            except _ANSWERS:
                self._answered(index, members, failures, deadline)
                raise
            except _PERMANENT as exc:
                raise self._unavailable(f"{member.endpoint.netloc}: {exc}") from exc
            except _DRIVER_ERRORS as exc:
                if _without_v2_api(exc):
                    raise self._unavailable(
                        f"{member.endpoint.netloc} does not serve etcd's v2 keys API "
                        "(start etcd with --enable-v2=true)"
                    ) from exc
                failures.append((member, exc))
                unreachable_in_a_row = unreachable_in_a_row + 1 if _is_unreachable(exc) else 0
            else:
                self._answered(index, members, failures, deadline)
                return result
            attempt += 1
            if unreachable_in_a_row >= _UNREACHABLE_ROUNDS * count:
                break
            if attempt % count == 0 and unreachable_in_a_row < count:
                # A whole round failed and someone was reachable: give it a moment.
                time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
                pause = min(pause * 2, 0.2)
        if not failures:
            raise self._unavailable(f"no answer within {self.timeout:g} s")
        last_error = failures[-1][1]
        if count == 1:
            raise self._unavailable(_describe(last_error)) from last_error
        latest = {m.endpoint.netloc: _describe(e) for m, e in failures}
        reasons = "; ".join(f"{netloc}: {reason}" for netloc, reason in latest.items())
        raise self._unavailable(reasons) from last_error

    def _answered(
        self,
        index: int,
        members: tuple[_Member, ...],
        failures: list[tuple[_Member, BaseException]],
        deadline: float,
    ) -> None:
        """Keep using the member that answered; say so if others failed first."""
        member = members[index]
        if failures:
            log.warning(
                "etcd failover: %s; %s answered instead",
                "; ".join(f"{m.endpoint.netloc} failed ({_describe(e)})" for m, e in failures),
                member.endpoint.netloc,
            )
        self._current = index
        if self.allow_reconnect and self._discovery_due(failed_over=bool(failures)):
            self._discover(member, deadline)

    def _discovery_due(self, *, failed_over: bool) -> bool:
        if self._discovered_at is None:
            return True
        return failed_over and time.monotonic() - self._discovered_at > _DISCOVERY_INTERVAL

    def _discover(self, member: _Member, deadline: float) -> None:
        """Add the client URLs the cluster advertises to the members to fail over to."""
        self._discovered_at = time.monotonic()
        try:
            with member.timeout(max(0.0, deadline - time.monotonic())):
                response = member.api_execute(member.version_prefix + "/members", "GET")
            advertised = json.loads(response.data.decode("utf-8"))["members"]
            urls = [url for m in advertised for url in m.get("clientURLs") or ()]
        except _DISCOVERY_ERRORS as exc:
            log.debug("could not list the etcd cluster's members: %s", exc)
            return
        with self._lock:
            known = {(m.protocol, m.endpoint) for m in self._members}
            added = list(self._members)
            for endpoint, protocol in _endpoints_of(urls):
                if (protocol, endpoint) not in known:
                    known.add((protocol, endpoint))
                    added.append(_Member(endpoint, protocol, self._pool_size))
            if len(added) > len(self._members):
                log.info("etcd cluster members: %s", ", ".join(m.endpoint.netloc for m in added))
                self._members = tuple(added)


def _endpoints_of(urls: Iterable[str]) -> Iterable[tuple[_Endpoint, str]]:
    for url in urls:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            continue
        if parts.scheme in ("http", "https") and parts.hostname:
            default = 443 if parts.scheme == "https" else 80
            yield _Endpoint(parts.hostname, port or default), parts.scheme


def _record(value: str | None) -> dict[str, Any] | None:
    """The JSON record of an instance's value, or None when it is not one."""
    try:
        record = json.loads(value) if value is not None else None
    except (ValueError, RecursionError):  # not JSON, or nested too deep to read: not ours
        return None
    if not isinstance(record, dict):
        return None
    ttl, expires_at = record.get("ttl"), record.get("expires_at")
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        return None
    if isinstance(expires_at, bool) or not isinstance(expires_at, (int, float)):
        return None
    record["expires_at"] = float(expires_at)
    return record


_UNPARSED = object()
#: How many (key, value) -> Instance answers a store remembers (see EtcdStore._instance).
_PARSED_VALUES = 4096


def _write_fields(instance: Instance, token: str) -> dict[str, Any]:
    """The form fields of a write of ``instance``: its JSON value and etcd's own TTL."""
    value = json.dumps(
        {
            "service_name": instance.service_name,
            "version": instance.version,
            "location": instance.location,
            "ttl": instance.ttl,
            "expires_at": instance.expires_at,
            "writer": token,
        }
    )
    return {"value": value, "ttl": max(1, instance.ttl)}


def _index_of(response: urllib3.BaseHTTPResponse) -> int:
    try:
        return int(response.headers.get("X-Etcd-Index", 0))
    except ValueError:
        return 0


def _error_index(exc: etcd.EtcdException) -> int:
    """The etcd index an error answer was given at (0 when it does not say)."""
    payload = exc.payload if isinstance(exc.payload, dict) else {}
    index = payload.get("index")
    return index if isinstance(index, int) else 0
