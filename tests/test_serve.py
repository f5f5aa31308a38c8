"""``keyard serve`` as a user runs it, under each server (granian, the default, and
gunicorn): every promise it makes, tested against the real server process."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from keyard.api.request_fields import MAX_BODY_BYTES
from tests import keyard_serve
from tests.conftest import free_port, wait_until

pytestmark = pytest.mark.slow

SERVERS = pytest.mark.parametrize("server", keyard_serve.SERVERS)


def call(method: str, url: str, data: dict | None = None, timeout: float = 5) -> tuple[int, object]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def raw_http(port: int, request: bytes, wait: float = 10.0) -> tuple[bytes, float]:
    """Send ``request`` as is and read until the server closes (at most 100 reads and
    ``wait`` seconds of silence): what it sent back, and after how many seconds."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(request)
        chunks = []
        for _ in range(100):
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - started


def split_answer(answer: bytes) -> tuple[str, dict[str, str], bytes]:
    """The status line, the headers (lower-case names) and the body of one answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def post_head(length: int) -> bytes:
    return (
        b"POST /keyard HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: %d\r\n\r\n" % length
    )


def sqlite_config(workdir: Path) -> None:
    config = {"store_type": "sqlite", "sqlite": {"path": str(workdir / "registry.db")}}
    keyard_serve.write_config(workdir, json.dumps(config))


def lookups_answer(url: str, count: int = 5) -> bool:
    return all(
        call("GET", f"{url}/keyard?service_name=web", timeout=2)[0] == 200 for _ in range(count)
    )


# -- serving, and stopping ------------------------------------------------------------------


@SERVERS
def test_serve_answers_and_sigterm_finishes_the_request_in_flight_and_exits_0(
    server: str, tmp_path: Path
) -> None:
    keyard_serve.write_config(tmp_path, '{"store_type": "simple", "default_ttl": 7}')
    with keyard_serve.start(server, tmp_path, free_port()) as served:
        status, body = call(
            "POST", f"{served.url}/keyard", {"service_name": "web", "location": "a"}
        )
        assert (status, body["ttl"]) == (201, 7)  # type: ignore[index]
        assert call("GET", f"{served.url}/keyard?service_name=web") == (200, {"result": ["a"]})
        # A request in flight (its body half sent) when SIGTERM comes is still answered.
        body_bytes = b"service_name=web&location=b"
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
            sock.sendall(post_head(len(body_bytes)) + body_bytes[:10])
            time.sleep(0.5)  # the app is reading the body
            served.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            sock.sendall(body_bytes[10:])
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        status_line, _, body = split_answer(answer)
        assert status_line.startswith("HTTP/1.1 201 "), answer
        assert json.loads(body)["location"] == "b"
        assert served.process.wait(20) == 0, served.output()
        output = served.output()
    assert "keyard ready: store simple (config file " in output, output
    assert "Traceback" not in output, output


@SERVERS
def test_sigterm_answers_a_waiting_blocking_query_at_once_with_its_state_and_exits_0(
    server: str, tmp_path: Path
) -> None:
    sqlite_config(tmp_path)  # the default store
    with keyard_serve.start(server, tmp_path, free_port()) as served:
        status, _ = call("POST", f"{served.url}/keyard", {"service_name": "web", "location": "a"})
        assert status == 201
        status, state = call("GET", f"{served.url}/keyard/services/web")
        index = state["index"]  # type: ignore[index]
        answers: list[tuple[int, object, float]] = []

        def watch() -> None:
            status, body = call(
                "GET", f"{served.url}/keyard/services/web?index={index}&wait=60", timeout=40
            )
            answers.append((status, body, time.monotonic()))

        watcher = threading.Thread(target=watch)
        watcher.start()
        time.sleep(1.0)  # the query is waiting
        assert not answers
        signalled = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        watcher.join(30)
        assert answers, "the waiting query was not answered"
        status, body, answered = answers[0]
        assert status == 200, body
        assert body["index"] == index  # type: ignore[index]
        assert [i["location"] for i in body["instances"]] == ["a"]  # type: ignore[index]
        assert answered - signalled < 5, "answered when its wait ran out, not at SIGTERM"
        assert served.process.wait(20) == 0, served.output()
        assert "Traceback" not in served.output(), served.output()


@SERVERS
def test_a_crashed_worker_is_replaced_and_the_service_keeps_answering(
    server: str, tmp_path: Path
) -> None:
    sqlite_config(tmp_path)
    with keyard_serve.start(server, tmp_path, free_port(), ["--workers", "2"]) as served:
        wait_until(lambda: len(served.worker_pids()) == 2, 20, "two workers")
        before = served.worker_pids()
        os.kill(before[0], signal.SIGKILL)
        # A connection the kernel queued for the killed worker in the instant it died is
        # reset with it; once it is gone, the other worker answers every request...
        wait_until(lambda: before[0] not in served.worker_pids(), 10, "the worker gone")
        assert lookups_answer(served.url, 20)
        # ...and a new one takes its place.
        wait_until(lambda: len(served.worker_pids()) == 2, 20, "a new worker in place")
        assert lookups_answer(served.url, 20)
        assert served.process.poll() is None
        assert served.stop() == 0, served.output()


# -- what keyard serve refuses to start with ----------------------------------------------


@SERVERS
def test_the_memory_store_is_refused_under_several_workers_with_one_message(
    server: str, tmp_path: Path
) -> None:
    result = keyard_serve.run_to_exit(server, tmp_path, free_port(), ["--workers", "2"])
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("Error: store_type 'simple' keeps the registry inside one")
    assert result.stderr.count("\n") == 1 and result.stdout == "", result.stderr


@SERVERS
def test_a_port_in_use_says_so_once_and_exits_3(server: str, tmp_path: Path) -> None:
    port = free_port()
    first = tmp_path / "first"
    first.mkdir()
    with keyard_serve.start("granian", first, port):  # keyard serve, already there
        result = keyard_serve.run_to_exit(server, tmp_path, port)
    assert result.returncode == 3, result.stderr
    assert result.stderr == f"Error: cannot listen on 127.0.0.1:{port}: port in use\n"
    assert result.stdout == ""
    port = free_port()
    with socket.socket() as other:  # any other program's listening socket
        other.bind(("127.0.0.1", port))
        other.listen()
        result = keyard_serve.run_to_exit(server, tmp_path, port)
    assert result.returncode == 3 and result.stderr.count("port in use") == 1, result.stderr


# -- requests the server answers itself, and the body limit -------------------------------

#: Requests gunicorn refuses before keyard's app sees them, and its status (in JSON).
GUNICORN_REFUSES = {
    b"GET /keyard?service_name=" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n": 414,
    b"GET /keyard?service_name=a HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n": 431,
    "GET /keyard?service_name=é HTTP/1.1\r\nHost: x\r\n\r\n".encode(): 400,
    b"POST /keyard HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n": 400,
}
#: Requests granian refuses itself, and its status: an empty body, the connection closed
#: (README, "Serving"). What gunicorn refuses beside these, granian hands to keyard.
GRANIAN_REFUSES = {
    b"GARBAGE\r\n\r\n": 400,
    b"POST /keyard HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n": 400,
    b"GET /keyard?service_name=a HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-H%d: v\r\n" % i for i in range(101))
    + b"\r\n": 431,
}


@SERVERS
def test_requests_the_server_refuses_itself_get_json_or_granians_empty_answer(
    server: str, tmp_path: Path
) -> None:
    env = {"KEYARD_CLIENT_TIMEOUT": "1"}  # kept-alive connections closed after a second
    with keyard_serve.start(server, tmp_path, free_port(), env=env) as served:
        refused = GUNICORN_REFUSES if server == "gunicorn" else GRANIAN_REFUSES
        for request, expected in refused.items():
            answer, _ = raw_http(served.port, request)
            status, headers, body = split_answer(answer)
            assert status.startswith(f"HTTP/1.1 {expected} "), answer[:300]
            assert headers.get("connection") == "close", answer[:300]
            if server == "gunicorn":
                assert headers["content-type"] == "application/json", answer[:300]
                assert set(json.loads(body)) == {"title", "description"}
            else:
                assert body == b"" and headers["content-length"] == "0", answer[:300]
        if server == "granian":  # what granian passes on is keyard's to answer, in JSON
            for request in GUNICORN_REFUSES.keys() - GRANIAN_REFUSES.keys():
                status, headers, body = split_answer(raw_http(served.port, request)[0])
                assert headers["content-type"] == "application/json", status
                assert (
                    set(json.loads(body)) == {"title", "description"} or "result" in body.decode()
                )


@SERVERS
def test_a_body_over_64_kib_is_413_in_json(server: str, tmp_path: Path) -> None:
    with keyard_serve.start(server, tmp_path, free_port()) as served:
        # Announced by its Content-Length: refused before a byte of it is read.
        answer, _ = raw_http(served.port, post_head(100_000_000) + b"service_name=")
        status, headers, body = split_answer(answer)
        assert status.startswith("HTTP/1.1 413 "), answer[:300]
        assert json.loads(body)["description"].endswith(f"the limit is {MAX_BODY_BYTES}")
        # Chunked, with no length: read up to the limit, then refused.
        chunk = b"a" * (MAX_BODY_BYTES + 10)
        request = (
            b"POST /keyard HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % len(chunk)
            + chunk
            + b"\r\n0\r\n\r\n"
        )
        status, headers, body = split_answer(raw_http(served.port, request)[0])
        assert status.startswith("HTTP/1.1 413 "), status
        assert headers["content-type"] == "application/json"
        assert str(MAX_BODY_BYTES) in json.loads(body)["description"]


# -- clients that stall: KEYARD_CLIENT_TIMEOUT ---------------------------------------------


@SERVERS
def test_a_client_stalled_in_its_headers_is_cut_off_after_the_client_timeout(
    server: str, tmp_path: Path
) -> None:
    env = {"KEYARD_CLIENT_TIMEOUT": "1"}
    args = ["--workers", "1", "--threads", "1"]
    with keyard_serve.start(server, tmp_path, free_port(), args, env) as served:
        stalled: list[tuple[bytes, float]] = []
        thread = threading.Thread(
            target=lambda: stalled.append(
                raw_http(served.port, b"GET /keyard?service_name=x HTTP/1.1\r\n")
            )
        )
        thread.start()
        time.sleep(0.2)
        # granian reads headers without a Python thread: the one thread answers others
        # meanwhile. gunicorn's thread reads them, and is free once it gives up.
        wait = 0.8 if server == "granian" else 5
        assert call("GET", f"{served.url}/keyard?service_name=web", timeout=wait) == (
            200,
            {"result": []},
        )
        thread.join(10)
        answer, seconds = stalled[0]
        assert answer == b"" and 0.9 < seconds < 5, (answer, seconds)
        output = served.output()
    assert "Traceback" not in output, output
    if server == "gunicorn":  # one line, not gthread's socket error with a traceback
        assert "sent nothing for 1 s mid-request" in output, output


def test_a_client_stalled_in_its_body_gets_a_408_and_the_connection_closed_under_gunicorn(
    tmp_path: Path,
) -> None:
    # Under granian a worker thread reads the body: README ("Serving") says so.
    env = {"KEYARD_CLIENT_TIMEOUT": "1"}
    args = ["--workers", "1", "--threads", "1"]
    with keyard_serve.start("gunicorn", tmp_path, free_port(), args, env) as served:
        answer, seconds = raw_http(served.port, post_head(100) + b"service_name=")
        status, headers, body = split_answer(answer)
        assert status.startswith("HTTP/1.1 408 "), answer
        # ...and the connection closed (read to its end above): the rest of the body
        # must never be taken for a request.
        assert headers["connection"] == "close", answer
        assert json.loads(body) == {
            "title": "Request timeout",
            "description": "the request body stopped arriving before its end (its "
            "Content-Length or last chunk); send the whole body without pausing",
        }
        assert 0.9 < seconds < 5, seconds
        assert call("GET", f"{served.url}/keyard?service_name=web") == (200, {"result": []})
        output = served.output()
    assert "Traceback" not in output, output


def test_a_client_that_never_reads_its_answer_holds_no_thread_and_is_cut_off_under_granian(
    tmp_path: Path,
) -> None:
    # gunicorn's gthread cannot cut it off: README ("Serving") says so.
    env = {"KEYARD_CLIENT_TIMEOUT": "1"}
    args = ["--workers", "1", "--threads", "1"]
    with keyard_serve.start("granian", tmp_path, free_port(), args, env) as served:
        body = b"service_name=web&location=a"
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
            keep_alive = post_head(len(body)).replace(b"Connection: close\r\n", b"")
            sock.sendall(keep_alive + body)
            time.sleep(0.3)
            assert call("GET", f"{served.url}/keyard?service_name=web", timeout=0.8) == (
                200,
                {"result": ["a"]},
            )
            time.sleep(1.5)  # past the timeout, unread
            answer = b""
            for _ in range(100):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        assert split_answer(answer)[0].startswith("HTTP/1.1 201 "), answer
        assert time.monotonic() - started < 5  # closed by the server, not by the read timeout


def test_16_clients_that_leave_their_answers_unread_stop_no_other_client(tmp_path: Path) -> None:
    """Issue 14's reliability gap: under gunicorn's gthread every thread waited on such a
    client. Under the default server others are answered throughout."""
    sqlite_config(tmp_path)
    env = {"KEYARD_CLIENT_TIMEOUT": "2"}
    with keyard_serve.start("granian", tmp_path, free_port(), env=env) as served:
        holding: list[socket.socket] = []
        try:
            for number in range(16):
                sock = socket.create_connection(("127.0.0.1", served.port), timeout=5)
                body = b"service_name=unread&location=http://h/%d" % number
                sock.sendall(post_head(len(body)).replace(b"Connection: close\r\n", b"") + body)
                holding.append(sock)
            answered, slowest = 0, 0.0
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and answered < 2000:
                started = time.monotonic()
                status, _ = call("GET", f"{served.url}/keyard?service_name=unread", timeout=2)
                slowest = max(slowest, time.monotonic() - started)
                answered += status == 200
        finally:
            for sock in holding:
                sock.close()
        assert answered >= 100 and slowest < 1, (answered, slowest)
        status, found = call("GET", f"{served.url}/keyard?service_name=unread")
        assert status == 200 and len(found["result"]) == 16  # type: ignore[index]


# -- the access log -------------------------------------------------------------------------


@SERVERS
def test_the_access_log_has_one_line_per_request_when_asked_for(
    server: str, tmp_path: Path
) -> None:
    for args, lines in ([], 0), (["--access-log"], 3):
        with keyard_serve.start(server, tmp_path, free_port(), args) as served:
            before = served.stdout().count("/keyard")  # the start-up probe asks for /
            call("POST", f"{served.url}/keyard", {"service_name": "web", "location": "a"})
            call("GET", f"{served.url}/keyard?service_name=web")
            call("GET", f"{served.url}/keyard/services")
            if lines:  # a line is written once its answer is on its way
                wait_until(lambda: served.stdout().count("/keyard") == 3, 5, "3 lines")
            else:
                time.sleep(0.5)
            assert served.stop() == 0
            logged = [line for line in served.stdout().splitlines() if "/keyard" in line]
        assert before == 0
        assert len(logged) == lines, served.stdout()
        # One line each, in any order: each worker process writes its own lines.
        # (granian's line names the path without its query string).
        if lines:
            for request in ('"POST /keyard HTTP/1.1" 201', '"GET /keyard/services HTTP/1.1" 200'):
                assert sum(request in line for line in logged) == 1, (request, logged)
            lookups = [line for line in logged if '"GET /keyard' in line and "services" not in line]
            assert len(lookups) == 1 and "HTTP/1.1\" 200" in lookups[0], logged


@SERVERS
def test_a_blocking_query_waits_on_the_callers_namespace_not_the_default_one(
    server: str, tmp_path: Path
) -> None:
    config = {"store_type": "sqlite", "sqlite": {"path": str(tmp_path / "registry.db")},
              "auth": {"mode": "trusted"}}  # fmt: skip
    keyard_serve.write_config(tmp_path, json.dumps(config))

    def as_team(team: str, method: str, path: str, data: dict | None = None) -> dict:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        request = urllib.request.Request(
            served.url + path, data=body, method=method, headers={"Authorization": f"Bearer {team}"}
        )
        with urllib.request.urlopen(request, timeout=15) as response:
            return {"index": response.headers["X-Keyard-Index"], **json.loads(response.read())}

    with keyard_serve.start(server, tmp_path, free_port()) as served:
        as_team("team-a", "POST", "/keyard", {"service_name": "web", "location": "a"})
        index = as_team("team-a", "GET", "/keyard/services/web")["index"]
        answers: list[tuple[float, dict]] = []
        started = time.monotonic()

        def watch() -> None:
            found = as_team("team-a", "GET", f"/keyard/services/web?index={index}&wait=10")
            answers.append((time.monotonic() - started, found))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        time.sleep(0.5)
        # A change of the same service in another namespace is not team-a's: the query
        # keeps waiting, past the front's 1 s recheck (it once waited on `default`'s index).
        as_team("team-b", "POST", "/keyard", {"service_name": "web", "location": "b"})
        time.sleep(2.0)
        assert answers == [], answers
        as_team("team-a", "POST", "/keyard", {"service_name": "web", "location": "c"})
        watcher.join(timeout=10)
        assert len(answers) == 1, answers
        elapsed, found = answers[0]
        assert 2.4 < elapsed < 5, elapsed
        assert int(found["index"]) > int(index)
        assert sorted(i["location"] for i in found["instances"]) == ["a", "c"]


def test_kept_lookup_answers_follow_every_write_namespace_and_accept_header(
    tmp_path: Path,
) -> None:
    """keyard serve's front keeps lookup answers: never one another namespace or Accept
    header asked for, never one a write of any worker has changed, never past a lease."""
    config = {"store_type": "sqlite", "sqlite": {"path": str(tmp_path / "registry.db")},
              "auth": {"mode": "trusted"}, "min_ttl": 1}  # fmt: skip
    keyard_serve.write_config(tmp_path, json.dumps(config))

    def as_team(team: str, method: str, path: str, data: dict | None = None,
                accept: str = "application/json") -> tuple[int, object]:  # fmt: skip
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        headers = {"Authorization": f"Bearer {team}", "Accept": accept}
        request = urllib.request.Request(served.url + path, body, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    lookup = "/keyard?service_name=web"
    with keyard_serve.start("granian", tmp_path, free_port(), ["--workers", "2"]) as served:
        as_team("team-a", "POST", "/keyard", {"service_name": "web", "location": "a1"})
        as_team("team-b", "POST", "/keyard", {"service_name": "web", "location": "b1"})
        for round_ in range(2, 6):  # many lookups between writes: both workers keep answers
            for _ in range(8):
                assert as_team("team-a", "GET", lookup) == (
                    200, {"result": [f"a{n}" for n in range(1, round_)]})
                assert as_team("team-b", "GET", lookup) == (200, {"result": ["b1"]})
                assert as_team("team-a", "GET", lookup, accept="text/html")[0] == 406
            as_team("team-a", "POST", "/keyard", {"service_name": "web", "location": f"a{round_}"})
        as_team("team-b", "POST", "/keyard",
                {"service_name": "web", "location": "b2", "ttl": "1"})  # fmt: skip
        assert as_team("team-b", "GET", lookup) == (200, {"result": ["b1", "b2"]})
        time.sleep(1.2)  # b2's lease ran out: no kept answer names it
        for _ in range(4):
            assert as_team("team-b", "GET", lookup) == (200, {"result": ["b1"]})
