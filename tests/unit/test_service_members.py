"""Whole-list replacement and multi-member removal in the service layer."""

from __future__ import annotations

import pytest

from pkeyd.api.keys import SERVICE
from pkeyd.domain import Membership, PKey, PortGuid
from pkeyd.drafts import MemberSpec
from pkeyd.errors import NotFoundError
from tests.helpers import Daemon

PKEY = PKey(0x0A12)
G = [PortGuid(0x0002C90300000010 + i) for i in range(4)]


def spec(guid: PortGuid | str, membership: Membership | None = None) -> MemberSpec:
    return MemberSpec(guid, membership, False)


async def _seed(daemon: Daemon) -> None:
    body = {
        "name": "tenant",
        "pkey": "0x0a12",
        "members": [{"guid": str(G[0])}, {"guid": str(G[1]), "membership": "limited"}],
        "keywords": [{"keyword": "SELF", "membership": "full"}],
    }
    await daemon.json("POST", "/api/v1/partitions", 201, json=body)


async def test_replace_members_sets_exactly_the_new_list(daemon: Daemon) -> None:
    await _seed(daemon)
    service = daemon.app[SERVICE]
    before = await service.desired_generation()
    after = await service.replace_members(
        PKEY, [spec(G[1], Membership.FULL), spec(G[2])], [spec("ALL", Membership.LIMITED)]
    )
    assert [(m.guid, m.membership) for m in after.members] == [
        (G[1], Membership.FULL),
        (G[2], Membership.FULL),
    ]
    assert [(k.keyword, k.membership) for k in after.keywords] == [("ALL", Membership.LIMITED)]
    assert await service.desired_generation() == before + 1
    assert after.generation == before + 1
    again = await service.replace_members(
        PKEY, [spec(G[1], Membership.FULL), spec(G[2])], [spec("ALL", Membership.LIMITED)]
    )
    assert again == after  # the same list again commits nothing
    assert await service.desired_generation() == before + 1
    emptied = await service.replace_members(PKEY, [], [])
    assert emptied.members == ()
    assert emptied.keywords == ()


async def test_remove_members_is_all_or_nothing_unless_missing_ok(daemon: Daemon) -> None:
    await _seed(daemon)
    service = daemon.app[SERVICE]
    with pytest.raises(NotFoundError) as err:
        await service.remove_members(PKEY, [G[0], G[3]])
    assert err.value.field == "guids"
    assert str(G[3]) in str(err.value)
    assert len((await service.get_partition(PKEY)).members) == 2  # nothing removed
    left = await service.remove_members(PKEY, [G[0], G[3], "SELF"], missing_ok=True)
    assert [m.guid for m in left.members] == [G[1]]
    assert left.keywords == ()
    generation = await service.desired_generation()
    await service.remove_members(PKEY, [G[3]], missing_ok=True)  # nothing to do
    assert await service.desired_generation() == generation
