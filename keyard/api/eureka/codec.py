"""Eureka's wire formats: XStream's XML and Jackson's JSON, in and out.

Both are written from one dict shape (:mod:`keyard.api.eureka.mapping`'s): a key
``"@name"`` is an XML attribute, ``"$"`` an element's text, a list repeats its
element, and every other key is a child element. JSON is that dict as it is.

A request body is read into the same shape: JSON objects as they are (the
``{"instance": {...}}`` wrapper optional), XML with :mod:`defusedxml`, which
refuses a DTD, entities and external references rather than expanding them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from xml.etree.ElementTree import Element, ParseError
from xml.sax.saxutils import escape, quoteattr

import falcon
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from keyard.api.request_fields import read_body

XML = "application/xml"
JSON = "application/json"

#: Characters XML 1.0 cannot hold (controls but tab, newline and carriage return).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
#: An element name XML accepts (ASCII subset: what metadata keys use in practice).
_XML_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9._\-]*\Z")


def wants_json(req: falcon.Request) -> bool:
    """JSON only when the Accept header mentions json (as Eureka decides); else XML."""
    return "json" in (req.env.get("HTTP_ACCEPT") or "").lower()


def answer(req: falcon.Request, resp: falcon.Response, root: str, body: Any) -> None:
    """Write ``{root: body}`` as JSON or XML, as the request's Accept header asks."""
    if wants_json(req):
        resp.content_type = JSON
        resp.data = json.dumps({root: body}, ensure_ascii=False).encode("utf-8")
    else:
        resp.content_type = XML
        resp.data = xml_element(root, body).encode("utf-8")


def xml_element(name: str, value: Any) -> str:
    """One element in XStream's shape (see the module's docstring); an entry whose name
    XML cannot hold is left out, as are characters XML cannot hold."""
    if isinstance(value, list):
        return "".join(xml_element(name, item) for item in value)
    if not _XML_NAME.match(name):
        return ""
    if not isinstance(value, Mapping):
        return f"<{name}>{_xml_text(value)}</{name}>"
    attributes = "".join(
        f" {key[1:]}={quoteattr(_clean(_plain(item)))}"
        for key, item in value.items()
        if key[:1] == "@" and _XML_NAME.match(key[1:])
    )
    inner = "".join(
        xml_element(key, item) for key, item in value.items() if key[:1] not in ("@", "$")
    )
    if "$" in value:
        inner = _xml_text(value["$"]) + inner
    if not inner:
        return f"<{name}{attributes}/>"
    return f"<{name}{attributes}>{inner}</{name}>"


def _plain(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _clean(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


def _xml_text(value: Any) -> str:
    return escape(_clean(_plain(value)))


# -- reading -----------------------------------------------------------------------------


def _bad(description: str) -> falcon.HTTPBadRequest:
    return falcon.HTTPBadRequest(title="Invalid input", description=description)


def read_instance(req: falcon.Request) -> Mapping[str, Any]:
    """The InstanceInfo of a registration's body, JSON or XML by its Content-Type."""
    body = read_body(req)
    if not body.strip():
        raise _bad("the body is empty: send the instance as JSON or XML")
    media_type = (req.content_type or "").split(";", 1)[0].strip().lower()
    if media_type.endswith("json"):
        return _json_instance(body)
    if media_type.endswith("xml"):
        return _xml_instance(body)
    raise falcon.HTTPUnsupportedMediaType(
        title="Unsupported content type",
        description=f"Content-Type {req.content_type or '(none)'!r} is not supported; "
        "send application/json or application/xml",
    )


def _json_instance(body: bytes) -> Mapping[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise _bad(f"the body is not valid JSON: {exc}") from exc
    if isinstance(data, dict) and set(data) == {"instance"}:
        data = data["instance"]
    if not isinstance(data, dict):
        raise _bad('the body must be a JSON object: {"instance": {...}}')
    return data


def _xml_instance(body: bytes) -> Mapping[str, Any]:
    try:
        root = fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise _bad(f"the XML body is refused: DTDs and entities are not accepted ({exc})") from exc
    except (ParseError, ValueError, RecursionError) as exc:
        raise _bad(f"the body is not well-formed XML: {exc}") from exc
    if root.tag != "instance":
        raise _bad(f"the XML body's root must be <instance>, got <{str(root.tag)[:40]}>")
    data = _from_xml(root, depth=0)
    return data if isinstance(data, dict) else {}


def _from_xml(element: Element, depth: int) -> Any:
    """An element in the dict shape: text alone, or attributes, text and children."""
    if depth > 8:
        raise _bad("the XML body is nested too deeply")
    children = list(element)
    if not children and not element.attrib:
        return element.text or ""
    found: dict[str, Any] = {f"@{key}": value for key, value in element.attrib.items()}
    if not children:
        if element.text and element.text.strip():
            found["$"] = element.text.strip()
        return found
    for child in children:
        value = _from_xml(child, depth + 1)
        tag = str(child.tag)
        if tag in found:
            raise _bad(f"<{tag[:40]}> is given more than once in <{element.tag}>")
        found[tag] = value
    return found
