"""keyard as an ASGI app: blocking queries wait on the event loop, not in a thread.

``keyard serve`` runs this under granian's ASGI interface. Every request is answered
by keyard's WSGI app (:func:`keyard.app.create_app`, the same resources and answers
as under gunicorn) in a small pool of threads, except the wait of a blocking query
(``GET /keyard/services[/NAME]?index=N``), which holds no thread:

1. the app answers the query with ``wait=0``: a bad field, another index than ``N``
   or any answer but a ``200`` goes back at once, as it would have;
2. else the request is parked (an asyncio future) under its service's index. The
   store's notifications (:meth:`~keyard.stores.base.Store.subscribe_changes`) make the
   loop read the index of each parked service once, in the pool, and wake the requests
   whose index moved; a parked request also wakes when its ``wait`` (with the spread
   the registry adds) has passed, or when the server shuts down (:func:`stop_waiting`);
3. the app answers it again with ``wait=0``. The requests woken by one reading that
   ask the same thing (method, path, query, ``Authorization``) share that one answer:
   10,000 watchers of one service cost one lookup when it changes, not 10,000.

A blocking query with a body, or whose ``index`` or ``wait`` the front cannot read,
goes to the app as it is (which answers the error, or waits in its thread).

With ``keep_answers`` the front also keeps the whole answer of a lookup (``GET
/keyard?service_name=...``, not a load-balanced choice) that the app says holds
(:data:`~keyard.answers.READING_KEY`), and answers the same request again without the
app while it holds (:class:`~keyard.answers.Answers`: no write to the service, no lease
run out). Same request means the same raw path, query string, ``Authorization`` and
``Accept``: so only where those say who asks (not with JWTs, which expire, nor with
``require_https``, which also asks the peer's address).
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

from keyard.answers import BODY_KEY, READING_KEY, Answers
from keyard.api.authentication import NAMESPACE_KEY
from keyard.api.native import fields
from keyard.errors import InvalidInput
from keyard.model import DEFAULT_NAMESPACE
from keyard.registry import Registry, spread_wait
from keyard.server import wsgi_bridge
from keyard.server.wsgi_bridge import Answer, Scope, Send, WsgiApp
from keyard.stores.base import WouldWait, without_waiting
from keyard.stores.changes import stopping

log = logging.getLogger("keyard")

Receive = Callable[[], Awaitable[dict[str, Any]]]
#: A parked request's key: the namespace and service (None: the catalog) it watches.
Watched = tuple[str, str | None]
#: Seconds between two readings of the parked services' indexes with no notification
#: (one lost costs at most this much; every store also rechecks its own).
RECHECK = 1.0
#: Bytes of a request body the front reads before it hands the request over (the app
#: refuses a body over 64 KiB by its Content-Length).
BODY_LIMIT = 65536 + 1
_SERVICES = "/keyard/services"


def watched_by(path: str) -> tuple[str | None] | None:
    """What a GET of ``path`` watches: ``(None,)`` for the catalog, ``(name,)`` for one
    service, or None (no blocking query). The namespace is the caller's: the app's."""
    path = path.rstrip("/")
    if path == _SERVICES:
        return (None,)
    prefix = _SERVICES + "/"
    if path.startswith(prefix) and "/" not in path[len(prefix) :] and len(path) > len(prefix):
        return (urllib.parse.unquote(path[len(prefix) :]),)
    return None


def without_wait(query: bytes) -> bytes:
    """``query`` with its ``wait`` replaced by ``wait=0``: the app answers at once."""
    kept = [part for part in query.split(b"&") if part and part.split(b"=", 1)[0] != b"wait"]
    return b"&".join([*kept, b"wait=0"])


class ParkedRequests:
    """The blocking queries of one event loop, parked by what they watch and their index."""

    def __init__(self, registry: Registry, executor: Executor) -> None:
        self.registry = registry
        self.executor = executor
        self.loop: asyncio.AbstractEventLoop | None = None
        self._parked: dict[Watched, dict[int, set[asyncio.Future[int]]]] = {}
        self._reading: asyncio.Task[None] | None = None
        self._again = False
        self._timer: asyncio.TimerHandle | None = None
        self.round = 0  # one more at each reading: requests woken by one share answers

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Listen to the store's notifications, from now on, on ``loop``."""
        self.loop = loop
        self.registry.subscribe_changes(self._notified)

    def _notified(self) -> None:
        # The store's thread: hand over to the loop (closed once the server stopped).
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.read_soon)

    def count(self) -> int:
        """How many requests are parked."""
        parked = self._parked.values()
        return sum(len(waiting) for by_index in parked for waiting in by_index.values())

    async def wait(self, watched: Watched, index: int, timeout: float) -> int:
        """Until the index of ``watched`` moves from ``index``, ``timeout`` passes or the
        server stops; the reading round that woke it (0: the timeout)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        waiting = self._parked.setdefault(watched, {}).setdefault(index, set())
        waiting.add(future)
        self._arm_timer()
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return 0
        finally:
            waiting.discard(future)
            if not waiting:
                by_index = self._parked.get(watched, {})
                if by_index.get(index) is waiting:
                    del by_index[index]
                if not by_index:
                    self._parked.pop(watched, None)

    def _arm_timer(self) -> None:
        if self._timer is None and self.loop is not None:
            self._timer = self.loop.call_later(RECHECK, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self._parked:
            self.read_soon()
            self._arm_timer()

    def read_soon(self) -> None:
        """Read the parked services' indexes (once more after the reading under way)."""
        if self._reading is not None:
            self._again = True
            return
        if self._parked:
            self._reading = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._again = False
                self.round += 1
                watched = list(self._parked)
                if stopping():
                    self._wake(watched, None)
                else:
                    try:
                        if self.registry.reads_are_local:
                            found = self._indexes(watched)
                        else:
                            found = await loop.run_in_executor(
                                self.executor, self._indexes, watched
                            )
                    except Exception as exc:  # noqa: BLE001 - the app answers the failure (503)
                        log.debug("reading the watched indexes failed: %s", exc)
                        self._wake(watched, None)
                    else:
                        for key, current in found.items():
                            self._wake([key], current)
                if not self._again:
                    return
        finally:
            self._reading = None

    def _indexes(self, watched: list[Watched]) -> dict[Watched, int | None]:
        return {key: self.registry.change_index(*key) for key in watched}

    def _wake(self, watched: list[Watched], current: int | None) -> None:
        """Wake the requests of ``watched`` whose index is not ``current`` (None: all)."""
        for key in watched:
            for index, waiting in list(self._parked.get(key, {}).items()):
                if index != current:
                    for future in list(waiting):
                        if not future.done():
                            future.set_result(self.round)


class WaitingFront:
    """The ASGI app: keyard's WSGI ``app``, with blocking queries parked (see the module).

    ``executor`` runs ``app`` (its size is the number of requests answered at once).
    """

    def __init__(
        self, app: WsgiApp, registry: Registry, executor: Executor, *, keep_answers: bool = False
    ) -> None:
        """``keep_answers``: keep the whole answers of lookups (see :meth:`_kept_key`)."""
        self.app = app
        self.kept: Answers[Answer] | None = Answers(registry) if keep_answers else None
        self.parked = ParkedRequests(registry, executor)
        self.executor = executor
        self._shared: dict[tuple[Any, ...], asyncio.Future[Answer]] = {}
        self.blocking = 0  # blocking queries between their arrival and their answer
        self.inline_reads = registry.reads_are_local
        self.inline_writes = registry.writes_are_local

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if self.parked.loop is None:
            self.parked.start(asyncio.get_running_loop())
        body = await _read_body(receive) if _has_body(scope) else b""
        key = None
        if self.kept is not None and not body and scope["method"] == "GET":
            key = _kept_key(scope)
            kept = self.kept.get(key) if key is not None else None
            if kept is not None:
                await wsgi_bridge.send(send, kept)
                return
        blocking = self._blocking(scope, body)
        if blocking is None:
            env = wsgi_bridge.environ(scope, body)
            answer = await self._answer_env(env, bool(body))
            reading = env.get(READING_KEY)
            # Not a choice (BODY_KEY): each of its answers is made afresh, by the app.
            choice = BODY_KEY in env
            keeping = self.kept
            if keeping is not None and key is not None and reading is not None and not choice:
                keeping.keep(key, reading, answer)
        else:
            self.blocking += 1
            try:
                answer = await self._answer_blocking(scope, *blocking)
            finally:
                self.blocking -= 1
        await wsgi_bridge.send(send, answer)

    async def _answer(self, scope: Scope, body: bytes, query: bytes | None = None) -> Answer:
        """The app's answer (see :meth:`_answer_env`)."""
        return await self._answer_env(wsgi_bridge.environ(scope, body, query), bool(body))

    async def _answer_env(self, env: dict[str, Any], body: bool) -> Answer:
        """The app's answer to ``env``: computed here, on the loop, for a read of a store
        whose reads are local (a few dozen microseconds, no wait), and for any request
        to a store whose writes are local unless it would wait (for another process's
        write lock: :class:`~keyard.stores.base.WouldWait`), else in the pool.

        A request tried on the loop and refused wrote nothing; the pool answers it
        from a copy of ``env`` as it came (its body read again from the start).
        """
        if self.inline_reads and not body and env["REQUEST_METHOD"] in ("GET", "HEAD"):
            return wsgi_bridge.run(self.app, env)
        if self.inline_writes:
            fresh = dict(env)
            try:
                with without_waiting():
                    return wsgi_bridge.run(self.app, env)
            except WouldWait:
                env.clear()
                env.update(fresh)
                env["wsgi.input"].seek(0)
        return await wsgi_bridge.call(self.app, self.executor, env)

    async def answered(self, timeout: float) -> bool:
        """Whether every blocking query was answered within ``timeout`` seconds (after
        :func:`~keyard.stores.changes.stop_waiting`, they all are, at once)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.blocking and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return not self.blocking

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.parked.start(asyncio.get_running_loop())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    @staticmethod
    def _blocking(scope: Scope, body: bytes) -> tuple[str | None, int, float] | None:
        """The service a blocking query watches (None: the catalog), its index and its
        wait; None for any other request."""
        if scope["method"] not in ("GET", "HEAD") or body:
            return None
        query: bytes = scope.get("query_string", b"")
        if b"index" not in query:
            return None
        watched = watched_by(scope["path"])
        if watched is None:
            return None
        pairs = urllib.parse.parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        names = [name for name, _ in pairs]
        if names.count("index") != 1 or names.count("wait") > 1:
            return None  # the app answers it
        given = {name: value for name, value in pairs if name in fields.BLOCKING_FIELDS}
        try:
            index, wait = fields.blocking(given)
        except InvalidInput:
            return None
        if index is None:
            return None
        return watched[0], index, wait

    async def _answer_blocking(
        self, scope: Scope, service: str | None, index: int, wait: float
    ) -> Answer:
        query = without_wait(scope.get("query_string", b""))
        env = wsgi_bridge.environ(scope, b"", query)
        answer = await self._answer_env(env, False)
        if answer.status != 200 or answer.header(b"x-keyard-index") != str(index).encode():
            return answer
        if stopping():
            return answer
        # Parked under the caller's namespace, which the app's authentication left in env.
        watched = (env.get(NAMESPACE_KEY, DEFAULT_NAMESPACE), service)
        woken = await self.parked.wait(watched, index, spread_wait(wait))
        if not woken:
            return await self._answer(scope, b"", query)
        key = (woken, scope["method"], scope["path"], query, _header(scope, b"authorization"))
        shared = self._shared.get(key)
        if shared is None:
            shared = asyncio.ensure_future(self._answer(scope, b"", query))
            self._shared[key] = shared
            shared.add_done_callback(lambda _: self._shared.pop(key, None))
        return await asyncio.shield(shared)


def _kept_key(scope: Scope) -> tuple[bytes, bytes, bytes | None, bytes | None] | None:
    """What a GET's kept whole answer is kept under: its raw path and query string, its
    ``Authorization`` (the namespace) and ``Accept``, which are all a lookup's answer
    depends on (:data:`~keyard.answers.READING_KEY`); None for a request whose answer is
    never kept (a blocking query, either header sent twice)."""
    query: bytes = scope.get("query_string", b"")
    if b"index" in query:
        return None
    authorization = accept = None
    for raw_name, value in scope.get("headers", ()):
        name = raw_name.lower()
        if name == b"authorization":
            if authorization is not None:
                return None
            authorization = bytes(value)
        elif name == b"accept":
            if accept is not None:
                return None
            accept = bytes(value)
    return (scope.get("raw_path") or scope["path"].encode(), query, authorization, accept)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


def _has_body(scope: Scope) -> bool:
    """Whether to read the request's body first: it says it has one (chunks, or a
    ``Content-Length`` above 0), not longer than the app takes (a longer one is refused
    by the app from its ``Content-Length`` alone, before a byte of it is read)."""
    for name, value in scope.get("headers", ()):
        name = name.lower()
        if name == b"transfer-encoding":
            return True
        if name == b"content-length":
            length = value.strip()
            return length != b"0" and not (length.isdigit() and int(length) >= BODY_LIMIT)
    return False


async def _read_body(receive: Receive) -> bytes:
    """The request's body, up to :data:`BODY_LIMIT` bytes (the app refuses a longer one)."""
    chunks: list[bytes] = []
    size = 0
    while size < BODY_LIMIT:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)
