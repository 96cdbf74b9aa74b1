"""Port PKey-table capacity: refuse what OpenSM would silently drop.

A port's table holds NodeInfo.PartitionCap entries (128 is common), the
Default partition included. OpenSM fills a full table and drops the rest
without telling the client (ERR 0512 in its log only), so pkeyd counts before
it commits: every partition that lists the port, plus every partition whose
keywords (ALL, ALL_CAS) cover all CA ports.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from pkeyd.domain import KeywordMember, Member, PKey
from pkeyd.errors import ConflictError
from pkeyd.store.models import PartitionRow
from pkeyd.store.repository import Repository

_CA_KEYWORDS = ("ALL", "ALL_CAS")
_SHOWN = 10


class CapacityGuard:
    def __init__(self, default_cap: int) -> None:
        self._default_cap = default_cap
        self._caps: dict[str, int] = {}

    def update(self, caps: Mapping[str, int]) -> None:
        """PartitionCap per port GUID (canonical text), as read from the fabric."""
        self._caps = dict(caps)

    def cap(self, guid: str) -> int:
        return self._caps.get(guid, self._default_cap)

    async def check(
        self,
        repo: Repository,
        pkey: PKey,
        members: Sequence[Member],
        keywords: Sequence[KeywordMember],
        row: PartitionRow | None = None,
    ) -> None:
        keyword_pkeys = await repo.ca_keyword_pkeys()
        covers_all = any(k.keyword in _CA_KEYWORDS for k in keywords)
        if covers_all and pkey.value not in keyword_pkeys:
            # The partition now reaches every CA port: check all known ports.
            listed = await repo.explicit_pkeys(None)
            guids = set(listed) | set(self._caps) | {str(m.guid) for m in members}
        else:
            already = {m.guid for m in row.members} if row is not None else set()
            guids = {str(m.guid) for m in members} - already
            if not guids:
                return
            listed = await repo.explicit_pkeys(guids)
        self.refuse_overload(pkey, guids, listed, keyword_pkeys)

    def refuse_overload(
        self,
        pkey: PKey,
        guids: Iterable[str],
        listed: Mapping[str, set[int]],
        keyword_pkeys: set[int],
    ) -> None:
        """409 naming the ports that adding `pkey` would take past their table size."""
        always = keyword_pkeys | {pkey.value}  # what every port named will hold
        loads = []
        for guid in guids:
            pkeys = listed.get(guid)
            load = len(pkeys | always) if pkeys else len(always)
            if load > self.cap(guid):
                loads.append((guid, load))
        if loads:
            over = [f"{guid} ({load} > {self.cap(guid)})" for guid, load in sorted(loads)]
            shown = ", ".join(over[:_SHOWN]) + (
                f" and {len(over) - _SHOWN} more" if len(over) > _SHOWN else ""
            )
            raise ConflictError(
                f"{len(over)} port(s) would hold more PKeys than their table: {shown}; "
                "OpenSM would silently drop PKeys there",
                "members",
            )
