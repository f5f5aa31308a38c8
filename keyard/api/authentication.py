"""Every request's namespace, from its ``Authorization`` header.

The token is a bearer token (``Authorization: Bearer TOKEN``) or, for clients that
cannot send one (Eureka's and lyft's, which take credentials in their server URL:
``http://keyard:TOKEN@host:8000/eureka/``), the password of HTTP basic credentials
(the user name alone when there is no password; the user name is otherwise unused).

Applied by the mounting table (:mod:`keyard.api`) to every tree, before routing:
a request the authenticator refuses gets a 401 (with ``WWW-Authenticate:
Bearer``) from any path, so that a route added later cannot forget it. The
header's bytes are read as UTF-8 (where the server hands them on: gunicorn does,
granian's WSGI interface hands on a header with bytes outside ASCII as an empty one). Nothing here
logs: in trusted mode the namespace is the token.
"""

from __future__ import annotations

import base64
import binascii

import falcon

from keyard.auth import Authenticator
from keyard.errors import Unauthorized


def bearer_token(req: falcon.Request) -> str | None:
    """The token of the request, ``None`` when it sent no ``Authorization``.

    Unauthorized for a scheme other than Bearer and Basic, a header that is not
    UTF-8, ``Bearer`` alone (an empty token), or basic credentials that are not
    base64 of ``user:password``.
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
    if scheme.lower() == "basic":
        return _basic_token(token.strip())
    if scheme.lower() != "bearer":
        raise Unauthorized(
            "the Authorization header must be 'Bearer TOKEN' (or basic credentials whose "
            f"password is the token); {'no scheme' if not scheme else 'another scheme'} was given"
        )
    token = token.strip()
    if not token:
        raise Unauthorized("the bearer token is empty")
    return token


def _basic_token(encoded: str) -> str:
    """The token of basic credentials: the password, or the user name when it has none."""
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, ValueError) as exc:
        raise Unauthorized(
            "the basic credentials are not base64 of UTF-8 'user:password'"
        ) from exc
    user, colon, password = decoded.partition(":")
    token = password or user
    if not token:
        raise Unauthorized("the basic credentials are empty: put the token as the password")
    if not colon:
        raise Unauthorized("the basic credentials have no ':' between user and password")
    return token


#: The WSGI environ key where :class:`Authenticate` leaves the caller's namespace, for
#: the server that called the app (``keyard serve``'s front parks a blocking query
#: under it: :mod:`keyard.server.waiting`).
NAMESPACE_KEY = "keyard.namespace"


class Authenticate:
    """Middleware: ``req.context.namespace`` (and ``principal``) from the request's token,
    also left in the environ under :data:`NAMESPACE_KEY`."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        principal = self.authenticator.authenticate(bearer_token(req))
        req.context.principal = principal
        req.context.namespace = req.env[NAMESPACE_KEY] = principal.namespace
