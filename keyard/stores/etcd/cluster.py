"""The members of an etcd cluster, and failing over between them within a deadline.

:class:`Cluster` sends each v2 keys request to the member that answered last and,
when it fails, to the next one, until the call's deadline; with
``allow_reconnect`` it also learns the members the cluster advertises. Every
failure to reach etcd comes out as :class:`~keyard.errors.StoreUnavailable`;
etcd's own answers (key not found, compare failed, ...) as python-etcd raises them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import etcd

from keyard.errors import ConfigError, StoreUnavailable
from keyard.stores.etcd.client import (
    ANSWERS,
    DRIVER_ERRORS,
    PERMANENT,
    Endpoint,
    Member,
    describe,
    is_unreachable,
    without_v2_api,
)

log = logging.getLogger(__name__)

#: How many times one call may go round all members while none can be connected to.
_UNREACHABLE_ROUNDS = 2
#: Don't ask the cluster for its members more often than this, in seconds.
_DISCOVERY_INTERVAL = 10.0
_DISCOVERY_ERRORS: tuple[type[Exception], ...] = (*DRIVER_ERRORS, ValueError, KeyError, TypeError)


# -- configuration -----------------------------------------------------------


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


def _parse_member(member: object, default_port: int) -> Endpoint:
    """One member: ``"host"``, ``"host:port"``, ``"[::1]:port"`` or ``[host, port]``."""
    if isinstance(member, (list, tuple)):
        if not _is_pair(member):
            raise ConfigError(
                f"etcd store: option host: a member must be 'host:port', got {member!r}"
            )
        return Endpoint(member[0], _check_port(member[1], member))
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
    return Endpoint(host, default_port if port is None else _check_port(port, member))


def parse_hosts(host: object, port: int) -> list[Endpoint]:
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


# -- failover ----------------------------------------------------------------


class Cluster:
    """The members a store may use, and the one it uses now. Thread-safe.

    ``timeout`` bounds one call, failover included; with several members one
    attempt gets a quarter of it.
    """

    def __init__(
        self, endpoints: Sequence[Endpoint], protocol: str, timeout: float, allow_reconnect: bool
    ) -> None:
        self.protocol = protocol
        self.timeout = timeout
        self.allow_reconnect = allow_reconnect
        self._pool_size = 16
        self._members = tuple(Member(e, protocol, self._pool_size) for e in endpoints)
        self._current = 0  # index into _members of the member that answered last
        self._lock = threading.Lock()  # guards changes to _members
        self._discovered_at: float | None = None

    @property
    def members(self) -> list[str]:
        """The members the store may use, as ``host:port``: configured, then discovered."""
        return [m.endpoint.netloc for m in self._members]

    def close(self) -> None:
        for member in self._members:
            member.close()

    def watch(
        self, path: str, index: int, wait: float, started: Callable[[], None]
    ) -> Iterator[dict[str, Any]]:
        """Watch ``path`` on the member that answered last (see :meth:`Member.watch`).

        etcd's answers (``EtcdEventIndexCleared`` ...) as python-etcd raises them;
        a failure to reach the member as StoreUnavailable.
        """
        members = self._members
        member = members[self._current % len(members)]
        try:
            yield from member.watch(path, index, wait, started, answer_within=self.timeout)
        except ANSWERS:
            raise
        except etcd.EtcdEventIndexCleared:
            raise  # the cache reads everything again
        except DRIVER_ERRORS as exc:
            raise self.unavailable(f"watch: {describe(exc)}") from exc

    def where(self) -> str:
        return ", ".join(m.endpoint.netloc for m in self._members)

    def unavailable(self, reason: str) -> StoreUnavailable:
        return StoreUnavailable(f"etcd at {self.where()} is unavailable: {reason}")

    def read(self, deadline: float, path: str, **fields: Any) -> dict[str, Any]:
        """GET one key or directory; its node (``key``, ``value``, ``dir``, ``nodes``, ...)."""
        for name, value in fields.items():
            if isinstance(value, bool):
                fields[name] = "true" if value else "false"
        node = self.call(deadline, "GET", path, **fields).get("node")
        if not isinstance(node, dict):
            raise etcd.EtcdException(f"etcd's answer for {path} has no node")
        return node

    def call(self, deadline: float, method: str, path: str, **fields: Any) -> dict[str, Any]:
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
        failures: list[tuple[Member, BaseException]] = []
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
            except ANSWERS:
                self._answered(index, members, failures, deadline)
                raise
            except PERMANENT as exc:
                raise self.unavailable(f"{member.endpoint.netloc}: {exc}") from exc
            except DRIVER_ERRORS as exc:
                if without_v2_api(exc):
                    raise self.unavailable(
                        f"{member.endpoint.netloc} does not serve etcd's v2 keys API "
                        "(start etcd with --enable-v2=true)"
                    ) from exc
                failures.append((member, exc))
                unreachable_in_a_row = unreachable_in_a_row + 1 if is_unreachable(exc) else 0
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
            raise self.unavailable(f"no answer within {self.timeout:g} s")
        last_error = failures[-1][1]
        if count == 1:
            raise self.unavailable(describe(last_error)) from last_error
        latest = {m.endpoint.netloc: describe(e) for m, e in failures}
        reasons = "; ".join(f"{netloc}: {reason}" for netloc, reason in latest.items())
        raise self.unavailable(reasons) from last_error

    def _answered(
        self,
        index: int,
        members: tuple[Member, ...],
        failures: list[tuple[Member, BaseException]],
        deadline: float,
    ) -> None:
        """Keep using the member that answered; say so if others failed first."""
        member = members[index]
        if failures:
            log.warning(
                "etcd failover: %s; %s answered instead",
                "; ".join(f"{m.endpoint.netloc} failed ({describe(e)})" for m, e in failures),
                member.endpoint.netloc,
            )
        self._current = index
        if self.allow_reconnect and self._discovery_due(failed_over=bool(failures)):
            self._discover(member, deadline)

    def _discovery_due(self, *, failed_over: bool) -> bool:
        if self._discovered_at is None:
            return True
        return failed_over and time.monotonic() - self._discovered_at > _DISCOVERY_INTERVAL

    def _discover(self, member: Member, deadline: float) -> None:
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
                    added.append(Member(endpoint, protocol, self._pool_size))
            if len(added) > len(self._members):
                log.info("etcd cluster members: %s", ", ".join(m.endpoint.netloc for m in added))
                self._members = tuple(added)


def _endpoints_of(urls: Iterable[str]) -> Iterable[tuple[Endpoint, str]]:
    for url in urls:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            continue
        if parts.scheme in ("http", "https") and parts.hostname:
            default = 443 if parts.scheme == "https" else 80
            yield Endpoint(parts.hostname, port or default), parts.scheme
