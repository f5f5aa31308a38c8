"""What the client returns: plain, immutable records."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Registration:
    """A registered instance, as the registry answered a register or health check.

    ``created`` is ``True`` when the registry did not know the instance before
    (HTTP 201), ``False`` when it refreshed a live one (HTTP 200).
    """

    service_name: str
    version: str
    location: str
    ttl: int
    expires_at: datetime
    created: bool
