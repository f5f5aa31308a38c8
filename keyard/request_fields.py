"""Reading a request's fields: the query string merged with a JSON or form body.

This is HTTP plumbing only; what the fields mean is the registry's business.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

import falcon

#: The largest request body keyard reads, in bytes.
MAX_BODY_BYTES = 64 * 1024
JSON_TYPES = {"application/json"}
FORM_TYPES = {"application/x-www-form-urlencoded"}


def _read_body(req: falcon.Request) -> bytes:
    length = req.content_length
    if not length and req.get_header("Transfer-Encoding") is None:
        return b""  # no body: most GETs and DELETEs
    if length is not None and length > MAX_BODY_BYTES:
        raise falcon.HTTPContentTooLarge(
            title="Request body too large",
            description=f"the body is {length} bytes; the limit is {MAX_BODY_BYTES}",
        )
    body = req.bounded_stream.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        raise falcon.HTTPContentTooLarge(
            title="Request body too large",
            description=f"the body is over the limit of {MAX_BODY_BYTES} bytes",
        )
    return body


def _parse_body(req: falcon.Request, body: bytes) -> dict[str, object]:
    media_type = (req.content_type or "").split(";", 1)[0].strip().lower()
    if media_type in JSON_TYPES:
        try:
            data = json.loads(body)
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
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError as exc:
            raise falcon.HTTPBadRequest(
                title="Malformed form", description=f"the body is not valid UTF-8: {exc}"
            ) from exc
        fields: dict[str, object] = {}
        for name, value in pairs:
            if name in fields:
                raise falcon.HTTPBadRequest(
                    title="Invalid input", description=f"{name} is given more than once"
                )
            fields[name] = value
        return fields
    raise falcon.HTTPUnsupportedMediaType(
        title="Unsupported content type",
        description=(
            f"Content-Type {req.content_type!r} is not supported; send "
            "application/json or application/x-www-form-urlencoded"
        ),
    )


def read_fields(req: falcon.Request) -> dict[str, object]:
    """The request's fields from its query string and body (JSON object or form)."""
    fields: dict[str, object] = {}
    for name, value in req.params.items():
        if isinstance(value, list):
            raise falcon.HTTPBadRequest(
                title="Invalid input", description=f"{name} is given more than once"
            )
        fields[name] = value
    body = _read_body(req)
    if body.strip():
        for key, field in _parse_body(req, body).items():
            if key in fields:
                raise falcon.HTTPBadRequest(
                    title="Invalid input",
                    description=f"{key} is given both in the query string and in the body",
                )
            fields[key] = field
    return fields
