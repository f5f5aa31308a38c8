"""Who is calling: the caller's namespace, decided by the request's bearer token.

keyard knows no users, only namespaces. An :class:`Authenticator` turns the
bearer token of a request (``None`` when the request sent none) into a
:class:`Principal`, or raises :class:`~keyard.errors.Unauthorized` saying why,
never repeating the token. One authenticator per mode of the ``auth`` section
(:mod:`keyard.auth.settings`):

=========  =================================================================
mode       the namespace
=========  =================================================================
none       ``default``; no token or the token ``default``, any other is refused
trusted    the token itself (for trusted networks)
jwt        a string claim of a signed JWT (:mod:`keyard.auth.jwt_bearer`)
=========  =================================================================

A chain (``["jwt", "trusted"]``) asks jwt first: a token that is not a JWT at all
(and a request without one) goes on to the second mode; a JWT that fails is refused.

This package knows nothing about HTTP: :mod:`keyard.api.authentication` reads
the ``Authorization`` header and applies the authenticator to every tree.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from keyard.auth.settings import AuthSettings
from keyard.errors import Unauthorized
from keyard.model import DEFAULT_NAMESPACE, MAX_LENGTHS

__all__ = [
    "AuthSettings",
    "Authenticator",
    "Chain",
    "NoAuth",
    "NotThisKind",
    "Principal",
    "Trusted",
    "authenticator",
    "checked_namespace",
]


class Principal(NamedTuple):
    """The caller: the namespace it reads and writes, and the mode that decided it."""

    namespace: str
    mode: str


class NotThisKind(Unauthorized):
    """The token is not of the kind this mode reads (or there is none): in a chain, the
    next mode decides; alone, it is the 401 its message describes."""


class Authenticator(Protocol):
    """One mode: the principal of a bearer token (``None``: the request sent none)."""

    mode: str

    def authenticate(self, token: str | None) -> Principal:
        """The caller's principal; :class:`~keyard.errors.Unauthorized` saying why not."""
        ...


def checked_namespace(namespace: str, source: str) -> str:
    """``namespace`` when keyard can keep it: non-blank, at most 128 characters of
    valid Unicode.

    The message names ``source`` (where it came from: "the bearer token") and the
    bound, never the value, which may be a credential.
    """
    if not namespace.strip():
        raise Unauthorized(f"{source} is empty; it names your namespace")
    limit = MAX_LENGTHS["namespace"]
    if len(namespace) > limit:
        raise Unauthorized(
            f"{source} names a namespace of {len(namespace)} characters; the limit is {limit}"
        )
    if not namespace.isascii():
        try:
            namespace.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate, from a JSON escape in a JWT
            raise Unauthorized(f"{source} is not valid Unicode") from exc
    return namespace


class NoAuth:
    """Mode ``none``: one namespace, ``default``, for requests without a token.

    The token ``default`` is accepted too; any other is refused, so that a client
    configured for a namespace never writes into the shared one by mistake.
    """

    mode = "none"

    def authenticate(self, token: str | None) -> Principal:
        if token is None or token == DEFAULT_NAMESPACE:
            return Principal(DEFAULT_NAMESPACE, self.mode)
        raise Unauthorized(
            "this registry has one namespace, 'default' (auth mode none): send no token, "
            "or the token 'default'"
        )


class Trusted:
    """Mode ``trusted``: the namespace is the bearer token itself (trusted networks only)."""

    mode = "trusted"

    def authenticate(self, token: str | None) -> Principal:
        if token is None:
            raise Unauthorized(
                "a bearer token is required (auth mode trusted): "
                "send 'Authorization: Bearer NAMESPACE'"
            )
        return Principal(checked_namespace(token, "the bearer token"), self.mode)


class Chain:
    """Several modes in turn: each but the last passes on what is not of its kind."""

    def __init__(self, members: list[Authenticator]) -> None:
        self.members = members
        self.mode = ", ".join(member.mode for member in members)

    def authenticate(self, token: str | None) -> Principal:
        *first, last = self.members
        for member in first:
            try:
                return member.authenticate(token)
            except NotThisKind:
                continue
        return last.authenticate(token)


def authenticator(settings: AuthSettings) -> Authenticator:
    """The authenticator of a checked ``auth`` section."""
    members: list[Authenticator] = []
    for mode in settings.modes:
        if mode == "none":
            members.append(NoAuth())
        elif mode == "trusted":
            members.append(Trusted())
        else:
            from keyard.auth.jwt_bearer import JwtBearer

            members.append(JwtBearer(settings))
    return members[0] if len(members) == 1 else Chain(members)
