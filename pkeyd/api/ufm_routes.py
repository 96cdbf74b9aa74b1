"""The PKey calls of UFM's REST API, served on pkeyd's own partitions.

Clients written for NVIDIA UFM (ib-kubernetes, the Neutron InfiniBand
drivers, operators' scripts) run unchanged against these routes. They are
served under /ufmRest and, identical, under /ufmRestV2 and /ufmRestV3 (the
prefixes UFM uses for session and token authentication). A PKey here is the
partition /api/v1 shows: the handlers only parse, call PartitionService and
answer in UFM's shapes (pkeyd.api.ufm_shapes). docs/ufm-compat.md lists
every call and where the answers differ from UFM's.

Status codes are the ones clients check for: ib-kubernetes wants exactly
200 for its POSTs, the Rust clients accept only 200 and 201, so writes
answer 200 (201 for pkeys/add) and a deleted PKey 200, never 204.
"""

from __future__ import annotations

from aiohttp import web

from pkeyd import __version__
from pkeyd.api.keys import SERVICE, SETTINGS
from pkeyd.api.schemas import read_json_object
from pkeyd.api.ufm_clock import read_last_updated, touch_last_updated
from pkeyd.api.ufm_shapes import (
    GuidRemoval,
    MemberChange,
    NewPKey,
    Qos,
    QosChange,
    default_name,
    guid_path_list,
    parse_flag,
    pkey_json,
    pkey_key,
    ufm_time,
)
from pkeyd.domain import Partition, PKey
from pkeyd.drafts import MemberSpec, PartitionDraft, PartitionPatch
from pkeyd.errors import ConflictError, NotFoundError, ValidationError
from pkeyd.groups import GroupSettings
from pkeyd.service import PartitionService

PREFIXES = ("/ufmRest", "/ufmRestV2", "/ufmRestV3")
# Set on the 200 `{}` answer for a PKey that does not exist (UFM's shape).
MISSING_HEADER = "X-Pkeyd-Not-Found"


def _answer(request: web.Request, partition: Partition, status: int = 200) -> web.Response:
    """The PKey after a write; last_updated will cover this call even if it changed nothing."""
    touch_last_updated(request.app, partition.generation)
    return web.json_response(pkey_json(partition, guids_data=True, qos_conf=True), status=status)


def _check_qos(request: web.Request, qos: Qos) -> None:
    """As /api/v1, but naming UFM's field: OpenSM forces sl to 0 without QoS."""
    if qos.sl not in (None, 0) and not request.app[SETTINGS].qos:
        raise ValidationError(
            "OpenSM forces the service level to 0 unless QoS is enabled "
            "(configure pkeyd with qos, as opensm.conf has it)",
            "service_level",
        )


def _patch(
    present: frozenset[str], *, ipoib: bool | None = None, settings: GroupSettings | None = None
) -> PartitionPatch:
    return PartitionPatch(
        present=present,
        name=None,
        ipoib=ipoib,
        settings=settings or GroupSettings(),
        defmember=None,
        indx0=None,
        mgroups=None,
    )


async def _create(service: PartitionService, draft: PartitionDraft) -> Partition | None:
    """Create the PKey; None if another writer created it first (then it is changed instead)."""
    try:
        return await service.create_partition(draft)
    except ConflictError as exc:
        if exc.field == "pkey":
            return None
        if exc.field == "name":  # the name is UFM's partition_name (or the generated one)
            raise ConflictError(exc.message, "partition_name") from exc
        raise


def _draft(change: MemberChange) -> PartitionDraft:
    return PartitionDraft(
        name=default_name(change.pkey),
        pkey=change.pkey,
        ipoib=True if change.ip_over_ib is None else change.ip_over_ib,
        settings=GroupSettings(),
        defmember=None,
        indx0=False,
        members=change.specs(),
    )


async def _existing(service: PartitionService, pkey: PKey) -> Partition | None:
    try:
        return await service.get_partition(pkey)
    except NotFoundError:
        return None


async def _apply_ipoib(
    service: PartitionService, partition: Partition, change: MemberChange
) -> Partition:
    """ip_over_ib changes an existing PKey only when the client sent it.

    UFM's default (true) applies to a PKey this call creates; applying it to
    an existing one would switch IPoIB on for every client that leaves the
    field out.
    """
    if change.ip_over_ib is None or change.ip_over_ib == partition.ipoib:
        return partition
    return await service.patch_partition(
        partition.pkey, _patch(frozenset({"ipoib"}), ipoib=change.ip_over_ib)
    )


# -- handlers ------------------------------------------------------------------


async def ufm_version(request: web.Request) -> web.Response:
    """The liveness check clients call first (and HEAD for the server's Date)."""
    return web.json_response({"ufm_release_version": f"pkeyd {__version__}"})


async def last_updated(request: web.Request) -> web.Response:
    moment = read_last_updated(request.app)
    return web.json_response({"last_updated": None if moment is None else ufm_time(moment)})


async def list_pkeys(request: web.Request) -> web.Response:
    guids_data = parse_flag(request.query, "guids_data")
    qos_conf = parse_flag(request.query, "qos_conf")
    partitions = await request.app[SERVICE].list_partitions()
    return web.json_response(
        {
            pkey_key(p.pkey): pkey_json(p, guids_data=guids_data, qos_conf=qos_conf)
            for p in partitions
        }
    )


async def get_pkey(request: web.Request) -> web.Response:
    pkey = PKey.parse(request.match_info["pkey"], "pkey")
    guids_data = parse_flag(request.query, "guids_data")
    qos_conf = parse_flag(request.query, "qos_conf")
    partition = await _existing(request.app[SERVICE], pkey)
    if partition is None:
        # UFM answers a missing PKey with 200 and exactly `{}`, and clients
        # (the Rust and Go ones) test for that body; the header says why.
        return web.json_response({}, headers={MISSING_HEADER: str(pkey)})
    return web.json_response(pkey_json(partition, guids_data=guids_data, qos_conf=qos_conf))


async def add_guids(request: web.Request) -> web.Response:
    """Add GUIDs (additive); the PKey is created when it does not exist."""
    change = MemberChange.parse(await read_json_object(request))
    service = request.app[SERVICE]
    if await _existing(service, change.pkey) is None:
        created = await _create(service, _draft(change))
        if created is not None:
            return _answer(request, created)
    partition = await service.add_members(change.pkey, change.specs(), [])
    return _answer(request, await _apply_ipoib(service, partition, change))


async def set_guids(request: web.Request) -> web.Response:
    """Make these GUIDs the PKey's whole member list (created when absent)."""
    change = MemberChange.parse(await read_json_object(request))
    service = request.app[SERVICE]
    current = await _existing(service, change.pkey)
    if current is None:
        created = await _create(service, _draft(change))
        if created is not None:
            return _answer(request, created)
        current = await service.get_partition(change.pkey)
    # UFM's member list is GUIDs only: keywords set through /api/v1 (ALL,
    # SELF...) stay. A keyword change racing this call between the read and
    # the write would be undone; /api/v1 is where keywords are managed.
    keywords = [MemberSpec(k.keyword, k.membership, k.index0) for k in current.keywords]
    partition = await service.replace_members(change.pkey, change.specs(), keywords)
    return _answer(request, await _apply_ipoib(service, partition, change))


async def create_empty(request: web.Request) -> web.Response:
    new = NewPKey.parse(await read_json_object(request))
    _check_qos(request, new.qos)
    draft = PartitionDraft(
        name=new.name or default_name(new.pkey),
        pkey=new.pkey,
        ipoib=new.ip_over_ib,
        settings=new.qos.settings(),
        defmember=None,
        indx0=new.index0,
    )
    created = await _create(request.app[SERVICE], draft)
    if created is None:
        raise ConflictError(f"PKey {new.pkey} exists already", "pkey")
    return _answer(request, created, status=201)


async def remove_guids(request: web.Request) -> web.Response:
    """DELETE .../pkeys/{pkey}/guids/{g1,g2}: removing a non-member is a no-op."""
    pkey = PKey.user(request.match_info["pkey"], "pkey")
    guids = guid_path_list(request.match_info["guids"])
    return _answer(request, await request.app[SERVICE].remove_members(pkey, guids, missing_ok=True))


async def remove_guids_action(request: web.Request) -> web.Response:
    """The deprecated POST form ib-kubernetes and the Rust clients still send."""
    removal = GuidRemoval.parse(await read_json_object(request))
    service = request.app[SERVICE]
    return _answer(
        request, await service.remove_members(removal.pkey, removal.guids, missing_ok=True)
    )


async def delete_pkey(request: web.Request) -> web.Response:
    pkey = PKey.parse(request.match_info["pkey"], "pkey")
    await request.app[SERVICE].delete_partition(pkey)
    return web.json_response({})


async def update_qos(request: web.Request) -> web.Response:
    change = QosChange.parse(await read_json_object(request))
    _check_qos(request, change.qos)
    patch = _patch(change.qos.present, settings=change.qos.settings())
    return _answer(request, await request.app[SERVICE].patch_partition(change.pkey, patch))


def _routes_under(prefix: str) -> list[web.RouteDef]:
    pkeys = f"{prefix}/resources/pkeys"
    return [
        web.get(f"{prefix}/app/ufm_version", ufm_version),
        # Fixed names before {pkey}, so that they are never read as a PKey.
        web.get(f"{pkeys}/last_updated", last_updated),
        web.post(f"{pkeys}/add", create_empty),
        web.post(f"{pkeys}/qos_conf", update_qos),
        web.put(f"{pkeys}/qos_conf", update_qos),
        # Clients write the collection both ways: ib-kubernetes GETs
        # `pkeys/?guids_data=true`, the Neutron driver POSTs to `pkeys/`.
        *(
            route
            for path in (pkeys, f"{pkeys}/")
            for route in (
                web.get(path, list_pkeys),
                web.post(path, add_guids),
                web.put(path, set_guids),
            )
        ),
        web.get(f"{pkeys}/{{pkey}}", get_pkey),
        web.delete(f"{pkeys}/{{pkey}}", delete_pkey),
        web.delete(f"{pkeys}/{{pkey}}/guids/{{guids}}", remove_guids),
        web.post(f"{prefix}/actions/remove_guids_from_pkey", remove_guids_action),
    ]


def ufm_routes() -> list[web.RouteDef]:
    return [route for prefix in PREFIXES for route in _routes_under(prefix)]
