"""keyard's WSGI app called from an ASGI server: one request, in a thread of a pool.

:func:`call` builds the WSGI environ from an ASGI ``http`` scope and a body already
read, runs the app in ``executor`` (the app's store calls block; the event loop must
not) and returns the whole :class:`Answer`; :func:`send` writes it. keyard's answers
are small JSON documents, so an answer is collected before it is sent.
"""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from concurrent.futures import Executor
from typing import Any, NamedTuple

Scope = MutableMapping[str, Any]
Send = Callable[[dict[str, Any]], Awaitable[None]]
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Answer(NamedTuple):
    """A whole HTTP answer: status code, headers (as ASGI sends them) and body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        """The value of header ``name`` (lower case), or None."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


def environ(scope: Scope, body: bytes, query_string: bytes | None = None) -> dict[str, Any]:
    """The WSGI environ of ``scope`` with ``body``; ``query_string`` replaces the scope's.

    ``RAW_URI`` is the path as the client sent it (``keyard.api.paths`` routes on it).
    """
    query = scope.get("query_string", b"") if query_string is None else query_string
    raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client") or ("", 0)
    env: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": "",
        "PATH_INFO": scope["path"].encode("utf-8").decode("latin-1"),
        "QUERY_STRING": query.decode("latin-1"),
        "RAW_URI": (raw_path + (b"?" + query if query else b"")).decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]) if server[1] is not None else "",
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "REMOTE_ADDR": str(client[0]),
        "REMOTE_PORT": str(client[1]),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        value = raw_value.decode("latin-1")
        if name == "CONTENT_TYPE":
            env["CONTENT_TYPE"] = value
        elif name == "CONTENT_LENGTH":
            env["CONTENT_LENGTH"] = value
        else:
            key = f"HTTP_{name}"
            env[key] = f"{env[key]},{value}" if key in env else value
    if body and "CONTENT_LENGTH" not in env:  # sent in chunks: the length is what came
        env["CONTENT_LENGTH"] = str(len(body))
    return env


def run(app: WsgiApp, env: dict[str, Any]) -> Answer:
    """Call ``app`` with ``env`` in this thread; its whole answer."""
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started[:] = [status, headers]
        return lambda data: None  # keyard's app never calls write()

    result = app(env, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, headers = started
    encoded = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    return Answer(int(status.split(" ", 1)[0]), encoded, body)


async def call(app: WsgiApp, executor: Executor, env: dict[str, Any]) -> Answer:
    """``app``'s answer to the request of ``env``, computed in ``executor``."""
    return await asyncio.get_running_loop().run_in_executor(executor, run, app, env)


async def send(send: Send, answer: Answer, head_only: bool = False) -> None:
    """Write ``answer`` (its headers alone for ``HEAD``)."""
    await send({"type": "http.response.start", "status": answer.status, "headers": answer.headers})
    await send({"type": "http.response.body", "body": b"" if head_only else answer.body})
