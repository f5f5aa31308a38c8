"""Reading a request's fields: the query string merged with a JSON or form body (any tree).

This is HTTP plumbing only; what the fields mean is the registry's business.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Protocol
from urllib.parse import parse_qsl

import falcon

#: The largest request body keyard reads, in bytes.
MAX_BODY_BYTES = 64 * 1024
JSON_TYPES = {"application/json"}
FORM_TYPES = {"application/x-www-form-urlencoded"}


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


def _read_stream(stream: _Readable) -> bytes:
    """Up to one byte over the limit of ``stream``; a body that cannot be read is a 400.

    The WSGI server parses the body as it is read, and raises its own errors for a
    malformed one (gunicorn: an invalid chunk size, a chunk without its CRLF; not
    subclasses of OSError), so any error of this read is the request's fault.
    """
    try:
        return stream.read(MAX_BODY_BYTES + 1)
    except (BlockingIOError, TimeoutError) as exc:  # the server's deadline for the client
        raise falcon.HTTPError(
            falcon.HTTP_408,
            title="Request timeout",
            headers={"Connection": "close"},
            description="the request body stopped arriving before its end "
            "(its Content-Length or last chunk); send the whole body without pausing",
        ) from exc
    except Exception as exc:
        raise falcon.HTTPBadRequest(
            title="Malformed body",
            description=f"the request body could not be read: {exc}",
        ) from exc


def has_no_body(req: falcon.Request) -> bool:
    """Whether the request surely has no body (most GETs and DELETEs): its fields are
    all in the query string. Read from the WSGI environ, without parsing a header."""
    env = req.env
    return env.get("CONTENT_LENGTH") in (None, "", "0") and "HTTP_TRANSFER_ENCODING" not in env


def read_body(req: falcon.Request) -> bytes:
    """The request's body, at most MAX_BODY_BYTES (413 past it; 411 for a chunked body
    the server does not end)."""
    if has_no_body(req):
        return b""
    length = req.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise falcon.HTTPContentTooLarge(
            title="Request body too large",
            description=f"the body is {length} bytes; the limit is {MAX_BODY_BYTES}",
        )
    if length is None and req.get_header("Transfer-Encoding"):
        # A chunked body has no Content-Length, and falcon's bounded_stream would
        # read nothing of it. The raw stream is safe to read only when the server
        # ends it with the body (gunicorn does, PEP 3333's wsgi.input_terminated).
        if not req.env.get("wsgi.input_terminated"):
            raise falcon.HTTPLengthRequired(
                title="Length required",
                description="this server needs a Content-Length header with a request body",
            )
        body = _read_stream(req.stream)
    else:
        body = _read_stream(req.bounded_stream)
    if len(body) > MAX_BODY_BYTES:
        raise falcon.HTTPContentTooLarge(
            title="Request body too large",
            description=f"the body is over the limit of {MAX_BODY_BYTES} bytes",
        )
    return body


def _decode_pairs(pairs: list[tuple[str, str]], where: str) -> list[tuple[str, str]]:
    """Bytes held as latin-1 text (raw or percent-decoded) to text.

    Bytes that are not UTF-8 are an error, never a silent U+FFFD.
    """
    if all(name.isascii() and value.isascii() for name, value in pairs):
        return pairs  # ASCII reads the same in latin-1 and UTF-8: most requests
    decoded = []
    for name, value in pairs:
        try:
            text_name = name.encode("latin-1").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise falcon.HTTPBadRequest(
                title="Invalid input",
                description=f"a field name in {where} is not valid UTF-8: "
                f"{name.encode('latin-1')[:40]!r}",
            ) from exc
        try:
            text_value = value.encode("latin-1").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise falcon.HTTPBadRequest(
                title="Invalid input",
                description=f"{text_name[:40]} in {where} is not valid UTF-8 "
                f"(after percent-decoding): {value.encode('latin-1')[:40]!r}",
            ) from exc
        decoded.append((text_name, text_value))
    return decoded


def _url_encoded_pairs(text: str, where: str) -> list[tuple[str, str]]:
    """Name-value pairs of a query string or form (``+`` is a space); blank values kept.

    ``text`` holds the raw bytes as latin-1, as WSGI's ``QUERY_STRING`` does.
    """
    if "%" in text or "+" in text:
        raw = parse_qsl(text, keep_blank_values=True, encoding="latin-1", errors="strict")
    else:  # nothing to decode: parse_qsl's answer in a third of its time (most lookups)
        raw = [_split_pair(segment) for segment in text.split("&") if segment]
    return _decode_pairs(raw, where)


def _split_pair(segment: str) -> tuple[str, str]:
    name, _, value = segment.partition("=")
    return name, value


def _unique_fields(pairs: Iterable[tuple[str, object]]) -> dict[str, object]:
    fields: dict[str, object] = {}
    for name, value in pairs:
        if name in fields:
            raise falcon.HTTPBadRequest(
                title="Invalid input", description=f"{name} is given more than once"
            )
        fields[name] = value
    return fields


def _parse_body(req: falcon.Request, body: bytes) -> dict[str, object]:
    media_type = (req.content_type or "").split(";", 1)[0].strip().lower()
    if media_type in JSON_TYPES:
        try:
            data = json.loads(body, object_pairs_hook=_unique_fields)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise falcon.HTTPBadRequest(
                title="Malformed JSON", description=f"the body is not valid JSON: {exc}"
            ) from exc
        if not isinstance(data, dict):
            raise falcon.HTTPBadRequest(
                title="Malformed JSON",
                description=f"the body must be a JSON object, got {type(data).__name__}",
            )
        return data
    if media_type in FORM_TYPES:
        if body.lstrip()[:1] in (b"{", b"["):
            raise falcon.HTTPUnsupportedMediaType(
                title="Unsupported content type",
                description="the body looks like JSON but was sent as "
                f"{media_type} (curl -d's default): send JSON with the header "
                "Content-Type: application/json",
            )
        # latin-1 maps each byte to one character; _decode_pairs then insists on UTF-8.
        return _unique_fields(_url_encoded_pairs(body.decode("latin-1"), "the form body"))
    given = (
        f"Content-Type {req.content_type!r} is not supported"
        if req.content_type
        else "the body has no Content-Type"
    )
    raise falcon.HTTPUnsupportedMediaType(
        title="Unsupported content type",
        description=f"{given}; send application/json or application/x-www-form-urlencoded",
    )


def read_fields(req: falcon.Request) -> dict[str, object]:
    """The request's fields from its query string and body (JSON object or form)."""
    # Not req.params: falcon turns bytes that are not UTF-8 (%ff) into U+FFFD.
    fields = _unique_fields(_url_encoded_pairs(req.query_string, "the query string"))
    body = read_body(req)
    if body.strip():
        for key, field in _parse_body(req, body).items():
            if key in fields:
                raise falcon.HTTPBadRequest(
                    title="Invalid input",
                    description=f"{key} is given both in the query string and in the body",
                )
            fields[key] = field
    return fields
