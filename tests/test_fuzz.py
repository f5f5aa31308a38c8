"""No input produces a 500: a seeded, bounded stream of odd requests against the app."""

from __future__ import annotations

import json
import random

import webtest

from keyard.app import create_app
from keyard.stores.memory import MemoryStore

ODD_VALUES: list[object] = [
    "",
    " ",
    "web",
    "\ud800",
    "a\x00b",
    "ü/🚀?#%",
    "9" * 5000,
    "-1",
    "1e3",
    "0x10",
    "x" * 2000,
    0,
    -1,
    1.5,
    10**30,
    float("inf"),
    True,
    None,
    [],
    ["a"],
    {},
    {"a": 1},
]
FIELDS = ["service_name", "version", "location", "ttl", "load_balancer_strategy", "", "x"]
CONTENT_TYPES = [
    "application/json",
    "application/x-www-form-urlencoded",
    "text/plain",
    "application/json; charset=latin-1",
    "",
]


def random_fields(rng: random.Random) -> dict[str, object]:
    fields: dict[str, object] = {"service_name": "web", "location": "loc"}
    for _ in range(rng.randint(0, 4)):
        fields[rng.choice(FIELDS)] = rng.choice(ODD_VALUES)
    if rng.random() < 0.3:
        fields.pop(rng.choice(list(fields)), None)
    return fields


def encode(rng: random.Random, fields: dict[str, object]) -> tuple[bytes, str]:
    content_type = rng.choice(CONTENT_TYPES)
    if "json" in content_type:
        text = json.dumps(fields, allow_nan=True)
        if rng.random() < 0.1:
            text = text[: rng.randint(0, len(text))]
        return text.encode("utf-8", "surrogatepass"), content_type
    pairs = "&".join(f"{k}={v}" for k, v in fields.items())
    return pairs.encode("utf-8", "surrogatepass"), content_type


def test_random_requests_never_get_a_server_error() -> None:
    rng = random.Random(20261122)
    api = webtest.TestApp(create_app({}, store=MemoryStore()))
    for _ in range(1500):
        method = rng.choice(["GET", "POST", "PUT", "DELETE"])
        fields = random_fields(rng)
        body, content_type = encode(rng, fields)
        if method == "GET" or rng.random() < 0.2:
            query = "&".join(f"{k}={v}" for k, v in fields.items())
            response = api.request(
                "/keyard?" + query.encode("utf-8", "surrogatepass").decode("latin-1"),
                method=method,
                expect_errors=True,
            )
        else:
            headers = {"Content-Type": content_type} if content_type else {}
            response = api.request(
                "/keyard", method=method, body=body, headers=headers, expect_errors=True
            )
        assert response.status_int < 500, (method, fields, response.status, response.body)
        body_json = json.loads(response.body)
        if response.status_int >= 400:
            assert body_json["title"] and body_json["description"], body_json


def test_query_strings_without_escapes_split_exactly_as_parse_qsl_does() -> None:
    """The fast path for a query string with no ``%`` or ``+`` gives parse_qsl's pairs."""
    from urllib.parse import parse_qsl

    from keyard.api.request_fields import _url_encoded_pairs

    rng = random.Random(7)
    texts = ["", "&", "=", "a", "a=", "=b", "a==b", "&a=1&", "a=1&&b=2", "x=y=z&x"]
    texts += ["".join(rng.choice("ab=&; .") for _ in range(rng.randrange(12))) for _ in range(2000)]
    for text in texts:
        expected = parse_qsl(text, keep_blank_values=True, encoding="latin-1", errors="strict")
        assert _url_encoded_pairs(text, "the query string") == expected, text
