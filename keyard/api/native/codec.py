"""How the native API shows records: keyard 0.2's short view, and the full record."""

from __future__ import annotations

import json

from keyard.model import Instance, ServiceSummary, iso_time


def encode(answer: object) -> bytes:
    """An answer's JSON bytes, exactly as falcon's default media handler writes them."""
    return json.dumps(answer, ensure_ascii=False).encode("utf-8")


def short_view(instance: Instance) -> dict[str, object]:
    """The instance as ``/keyard`` has always answered it (keyard 0.2's five fields)."""
    return {
        "service_name": instance.service_name,
        "version": instance.version,
        "location": instance.location,
        "ttl": instance.ttl,
        "expires_at": iso_time(instance.expires_at),
    }


def record_view(instance: Instance) -> dict[str, object]:
    """The full record; ``status`` is the effective one, ``status_override`` shown when set."""
    view: dict[str, object] = {
        "namespace": instance.namespace,
        "service_name": instance.service_name,
        "version": instance.version,
        "instance_id": instance.instance_id,
        "location": instance.location,
        "status": instance.effective_status,
    }
    if instance.status_override is not None:
        view["status_override"] = instance.status_override
    view.update(
        tags=list(instance.tags),
        metadata=dict(instance.metadata),
        weight=instance.weight,
        ttl=instance.ttl,
        registered_at=iso_time(instance.registered_at),
        last_heartbeat_at=iso_time(instance.last_heartbeat_at),
        expires_at=iso_time(instance.expires_at),
    )
    return view


def summary_view(summary: ServiceSummary) -> dict[str, object]:
    return {
        "service_name": summary.service_name,
        "instances": summary.instances,
        "up": summary.up,
    }
