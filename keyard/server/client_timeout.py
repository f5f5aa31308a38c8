"""``KEYARD_CLIENT_TIMEOUT``: how long a server waits for a client, under either server.

A client that stalls within its headers or body, or leaves its answer unread, is
given up on after this many seconds (default 10), so that a few such clients
never hold every worker thread.
"""

from __future__ import annotations

import logging
import math
import os

#: Seconds a server waits for a client's next bytes, or for it to read the answer.
CLIENT_TIMEOUT = 10.0
CLIENT_TIMEOUT_VARIABLE = "KEYARD_CLIENT_TIMEOUT"


def client_timeout() -> float:
    """``KEYARD_CLIENT_TIMEOUT`` when it is a positive number of seconds, else the default."""
    text = os.environ.get(CLIENT_TIMEOUT_VARIABLE)
    if text is None:
        return CLIENT_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= 3600:  # NaN too
        logging.getLogger("keyard").warning(
            "%s=%r is not a number of seconds in (0, 3600]; using %g",
            CLIENT_TIMEOUT_VARIABLE, text, CLIENT_TIMEOUT,
        )  # fmt: skip
        return CLIENT_TIMEOUT
    return seconds
