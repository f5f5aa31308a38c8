"""``require_https``: plain-HTTP requests refused, before anything else reads them.

A request came over HTTPS when its connection was TLS (``keyard serve
--certfile``: granian's ``wsgi.url_scheme``, gunicorn's socket), or, behind a
proxy that ends TLS, when the proxy says so in ``X-Forwarded-Proto``; that
header is believed only from the addresses in ``trusted_proxies`` (the
connection's ``REMOTE_ADDR``), since any client can send it. Of several values
(proxies that append) the last counts: it is the one the trusted proxy wrote.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterable
from typing import Union

import falcon

from keyard.errors import Forbidden

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


def networks(proxies: Iterable[str]) -> tuple[Network, ...]:
    """``trusted_proxies`` (addresses or networks: ``10.0.0.5``, ``10.0.0.0/24``) parsed.

    ValueError naming the entry for one that is neither.
    """
    found = []
    for entry in proxies:
        try:
            found.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(
                f"{entry!r} is not an IP address or network (10.0.0.5, 10.0.0.0/24, ::1)"
            ) from exc
    return tuple(found)


def _server_says_https(env: dict[str, object]) -> bool:
    """Whether the connection itself is TLS.

    gunicorn rewrites ``wsgi.url_scheme`` from ``X-Forwarded-Proto`` when the peer is
    in its own ``forwarded_allow_ips`` (127.0.0.1 by default), so under gunicorn the
    socket it hands on says it; other servers (granian) set ``wsgi.url_scheme`` from
    the connection.
    """
    sock = env.get("gunicorn.socket")
    if sock is not None:
        return isinstance(sock, ssl.SSLSocket)
    return env.get("wsgi.url_scheme") == "https"


class RequireHttps:
    """Middleware: 403 for a request that did not come over HTTPS."""

    def __init__(self, trusted_proxies: Iterable[Network] = ()) -> None:
        self.trusted_proxies = tuple(trusted_proxies)

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if self.came_over_https(req):
            return
        raise Forbidden(
            "this registry accepts HTTPS requests only (require_https): use an https:// URL"
            + (
                "; behind a proxy that ends TLS, list its address in trusted_proxies so that "
                "its X-Forwarded-Proto counts"
                if req.env.get("HTTP_X_FORWARDED_PROTO") is not None
                else ""
            )
        )

    def came_over_https(self, req: falcon.Request) -> bool:
        if _server_says_https(req.env):
            return True
        forwarded = req.env.get("HTTP_X_FORWARDED_PROTO")
        if forwarded is None or not self._from_trusted_proxy(req.env.get("REMOTE_ADDR")):
            return False
        return forwarded.split(",")[-1].strip().lower() == "https"

    def _from_trusted_proxy(self, address: str | None) -> bool:
        if not address or not self.trusted_proxies:
            return False
        try:
            peer = ipaddress.ip_address(address.strip("[]"))
        except ValueError:
            return False  # a unix socket's peer, or no address at all
        mapped = getattr(peer, "ipv4_mapped", None)  # ::ffff:10.0.0.5 is 10.0.0.5
        return any(
            peer in network or (mapped is not None and mapped in network)
            for network in self.trusted_proxies
        )
