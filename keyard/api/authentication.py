"""Every request's namespace, from its ``Authorization: Bearer`` header.

Applied by the mounting table (:mod:`keyard.api`) to every tree, before routing:
a request the authenticator refuses gets a 401 (with ``WWW-Authenticate:
Bearer``) from any path, so that a route added later cannot forget it. The
header's bytes are read as UTF-8 (where the server hands them on: gunicorn does,
granian's WSGI interface hands on a header with bytes outside ASCII as an empty one). Nothing here
logs: in trusted mode the namespace is the token.
"""

from __future__ import annotations

import falcon

from keyard.auth import Authenticator
from keyard.errors import Unauthorized


def bearer_token(req: falcon.Request) -> str | None:
    """The bearer token of the request, ``None`` when it sent no ``Authorization``.

    Unauthorized for another scheme, a header that is not UTF-8, or ``Bearer``
    alone (an empty token).
    """
    raw = req.env.get("HTTP_AUTHORIZATION")
    if raw is None:
        return None
    if not raw.strip():
        raise Unauthorized(
            "the Authorization header is empty; send 'Bearer TOKEN' (granian's WSGI "
            "interface hands on a header with bytes outside ASCII as empty: use an "
            "ASCII token there, or keyard serve)"
        )
    try:
        value = raw.encode("latin-1").decode("utf-8")  # WSGI gives the bytes as latin-1
    except UnicodeError as exc:  # not latin-1: the server decoded it already
        if isinstance(exc, UnicodeEncodeError):
            value = raw
        else:
            raise Unauthorized("the Authorization header is not valid UTF-8") from exc
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthorized(
            "the Authorization header must be 'Bearer TOKEN'; "
            f"{'no scheme' if not scheme else 'another scheme'} was given"
        )
    token = token.strip()
    if not token:
        raise Unauthorized("the bearer token is empty")
    return token


class Authenticate:
    """Middleware: ``req.context.namespace`` (and ``principal``) from the bearer token."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        principal = self.authenticator.authenticate(bearer_token(req))
        req.context.principal = principal
        req.context.namespace = principal.namespace
