"""The reconciler's desired state: whole each time, rebuilt only where generations moved."""

from __future__ import annotations

from pkeyd.api.keys import SERVICE
from pkeyd.domain import PKey, PortGuid
from pkeyd.drafts import MemberSpec
from pkeyd.snapshots import DesiredStateLoader
from tests.helpers import Daemon

G1 = PortGuid(0x0002C90300000011)


async def test_unchanged_partitions_are_reused_changed_ones_reread(daemon: Daemon) -> None:
    for name, pkey in (("a", "0x0a12"), ("b", "0x0a13")):
        await daemon.json("POST", "/api/v1/partitions", 201, json={"name": name, "pkey": pkey})
    service = daemon.app[SERVICE]
    loader = DesiredStateLoader(service._sessions)
    first = await loader.load()
    assert [p.pkey.value for p in first.partitions] == [0x0A12, 0x0A13, 0x7FFF]
    await service.add_members(PKey(0x0A13), [MemberSpec(G1, None, False)], [])
    await service.delete_partition(PKey(0x0A12))
    second = await loader.load()
    assert second.generation == first.generation + 2
    assert [p.pkey.value for p in second.partitions] == [0x0A13, 0x7FFF]
    assert second.partitions[1] is first.partitions[2]  # the Default: unchanged, reused
    assert [m.guid for m in second.partitions[0].members] == [G1]
    fresh = await DesiredStateLoader(service._sessions).load()
    assert fresh == second


async def test_the_daemon_wires_one_cache_and_one_gate(daemon: Daemon) -> None:
    """The reconciler's loader reads the cache the service fills, under the same gate."""
    from pkeyd.api.keys import RECONCILER

    loader = daemon.app[RECONCILER]._load_state.__self__  # type: ignore[attr-defined]
    service = daemon.app[SERVICE]
    assert loader._lookup.__self__ is service.cache
    assert loader._gate is service._committer.gate
