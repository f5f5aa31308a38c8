"""One etcd member's wire connection: v2 keys requests and watches over urllib3.

python-etcd's client, adapted (see :class:`Member`): the store's own failover
(:mod:`keyard.stores.etcd.cluster`) decides which member a request goes to; this
module sends it and turns etcd's answer into JSON or python-etcd's exception.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple
from urllib.parse import urlencode

import etcd
import urllib3

DEFAULT_TIMEOUT = 2.0

#: etcd's answers to a well-formed request: the store's logic handles them.
ANSWERS: tuple[type[Exception], ...] = (
    etcd.EtcdKeyNotFound,
    etcd.EtcdAlreadyExist,
    etcd.EtcdCompareFailed,
    etcd.EtcdNotFile,
    etcd.EtcdNotDir,
    etcd.EtcdDirNotEmpty,
)
#: Errors that retrying cannot cure (bad permissions, a value etcd rejects).
PERMANENT: tuple[type[Exception], ...] = (
    etcd.EtcdInsufficientPermissions,
    etcd.EtcdValueError,
    etcd.EtcdKeyError,
)
#: Everything python-etcd, urllib3 and the socket layer may raise.
DRIVER_ERRORS: tuple[type[Exception], ...] = (
    etcd.EtcdException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)
_FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}
#: Where :meth:`Member.request` puts the answer's ``X-Etcd-Index`` header.
INDEX_HEADER = "x-etcd-index"


class Endpoint(NamedTuple):
    """One member's address."""

    host: str
    port: int

    @property
    def netloc(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class Member(etcd.Client):
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

    def __init__(self, endpoint: Endpoint, protocol: str, pool_size: int) -> None:
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

    def timeout(self, seconds: float) -> TimeoutScope:
        """Give the calling thread's requests ``seconds`` in all, connecting included."""
        return TimeoutScope(self._local, urllib3.Timeout(total=max(seconds, 0.001)))

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
            answer[INDEX_HEADER] = index_of(response)
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
            live_after = index_of(response)  # events up to here come from the history
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
        else:  # as python-etcd reports it (see without_v2_api)
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


class TimeoutScope:
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


def is_unreachable(exc: BaseException) -> bool:
    """True when no connection could be opened at all (refused, unknown host)."""
    cause = getattr(exc, "cause", None) or exc
    return isinstance(cause, (urllib3.exceptions.NewConnectionError, ConnectionRefusedError))


def without_v2_api(exc: BaseException) -> bool:
    """True for the plain 404 that etcd gives on ``/v2/keys`` without ``--enable-v2=true``.

    python-etcd reports an answer that is not JSON as a bare EtcdException.
    """
    payload = getattr(exc, "payload", None)
    return (
        isinstance(payload, dict)
        and payload.get("message") == "Bad response"
        and "404 page not found" in str(payload.get("cause"))
    )


#: A key's namespace and what follows it, in a driver's message (``%25ns`` in a URL).
_NAMESPACED_KEY = re.compile(r"(%(?:25)?ns)/[^\s'\")]*")


def describe(exc: BaseException) -> str:
    """The failure in words, for messages and logs: without the key's namespace and
    names (in auth mode trusted the namespace is the caller's token)."""
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, urllib3.exceptions.NewConnectionError):
        return f"cannot connect ({str(cause).rpartition(': ')[2]})"
    if isinstance(cause, urllib3.exceptions.TimeoutError):
        return "no answer in time"
    return _NAMESPACED_KEY.sub(r"\1/...", f"{type(cause).__name__}: {cause}")


def index_of(response: urllib3.BaseHTTPResponse) -> int:
    try:
        return int(response.headers.get("X-Etcd-Index", 0))
    except ValueError:
        return 0


def error_index(exc: etcd.EtcdException) -> int:
    """The etcd index an error answer was given at (0 when it does not say)."""
    payload = exc.payload if isinstance(exc.payload, dict) else {}
    index = payload.get("index")
    return index if isinstance(index, int) else 0
