"""What the ports really hold: drift, per-partition status, one port's table."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pkeyd.api.keys import RECONCILER, SERVICE, VERIFIER
from pkeyd.domain import PKey, PortGuid
from pkeyd.drift import REPAIRABLE, actual_memberships, expected_for
from pkeyd.errors import NotFoundError, UnavailableError
from pkeyd.fabric.model import FabricPort
from pkeyd.verification import Verifier

fabric_routes = web.RouteTableDef()


def verification_status(verifier: Verifier | None) -> dict[str, Any]:
    """The verification part of /api/v1/status."""
    if verifier is None:
        return {"verified_generation": None, "verification": {"enabled": False}}
    st = verifier.status
    kinds: dict[str, int] = {}
    for d in st.drift:
        kinds[d.kind] = kinds.get(d.kind, 0) + 1
    return {
        "verified_generation": st.verified_generation,
        "verification": {
            "enabled": True,
            "last_success": st.last_success.isoformat() if st.last_success else None,
            "duration_s": st.snapshot.duration_s if st.snapshot else None,
            "ports_read": len(st.snapshot.ports) if st.snapshot else 0,
            "read_failures": len(st.snapshot.failures) if st.snapshot else 0,
            "error": st.error,
            "drift_entries": kinds,
            "drift_persists": st.persistent,
            "repair_reloads": st.repairs,
            "local_ports": len(st.local_ports),
            "local_error": st.local_error,
        },
    }


def _verifier(request: web.Request) -> Verifier:
    verifier = request.app[VERIFIER]
    if verifier is None:
        raise UnavailableError("verification is off (fabric_reader = off)")
    return verifier


@fabric_routes.get("/api/v1/drift")
async def drift(request: web.Request) -> web.Response:
    """Every difference found by the last verification, as a list."""
    return web.json_response([d.to_json() for d in _verifier(request).status.drift])


@fabric_routes.get("/api/v1/partitions/{pkey}/status")
async def partition_status(request: web.Request) -> web.Response:
    pkey = PKey.parse(request.match_info["pkey"], "pkey")
    partition = await request.app[SERVICE].get_partition(pkey)
    verifier = _verifier(request)
    applied = request.app[RECONCILER].status.applied_generation or 0
    verified = verifier.status.verified_generation or 0
    concerned = [d for d in verifier.status.drift if d.pkey == pkey.value]
    if any(d.kind in REPAIRABLE or d.kind == "over_capacity" for d in concerned):
        state = "drifted"
    elif verified >= partition.generation:
        state = "verified"
    elif applied >= partition.generation:
        state = "applied"
    else:
        state = "pending"
    return web.json_response(
        {
            "pkey": str(pkey),
            "state": state,
            "generation": partition.generation,
            "applied_generation": applied,
            "verified_generation": verifier.status.verified_generation,
            "ports": [d.to_json() for d in concerned],
        }
    )


def _port_json(port: FabricPort, source: str) -> dict[str, Any]:
    return {**port.to_json(), "source": source}


@fabric_routes.get("/api/v1/ports/{guid}")
async def port(request: web.Request) -> web.Response:
    """The port's real table beside the one the desired state asks for."""
    guid = PortGuid.parse(request.match_info["guid"], "guid")
    verifier = _verifier(request)
    status = verifier.status
    local = {p.port_guid: p for p in status.local_ports}
    found = local.get(guid.value)
    source = "verbs"
    if found is None and status.snapshot is not None:
        found, source = status.snapshot.port(guid.value), "smp"
    if found is None:
        raise NotFoundError(f"port {guid} was not seen on the fabric", "guid")
    applied = request.app[RECONCILER].applied_state
    expected: dict[int, str] = {}
    if applied is not None and status.snapshot is not None:
        tables = expected_for(
            applied, [found], verifier.sm_port_guid or 0, allow_both=verifier.allow_both
        )
        expected = dict(tables.get(guid.value, {}))
    actual = actual_memberships(found)
    return web.json_response(
        {
            "port": _port_json(found, source),
            "expected": {f"0x{k:04x}": v for k, v in sorted(expected.items())},
            "actual": {f"0x{k:04x}": v for k, v in sorted(actual.items())},
            "drift": [d.to_json() for d in status.drift if d.port_guid == guid.value],
        }
    )
