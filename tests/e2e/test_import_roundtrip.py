"""Import takes over a hand-written file without changing a single port's PKey table.

For every corpus file OpenSM accepts: real OpenSM on ibsim programs the
fabric from the original file, then from pkeyd's render of what `import`
stored; every HCA port's table must come out the same (order aside, unless
indx0 is involved). For every fatal file: import refuses it.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from pkeyd.admin import import_file
from pkeyd.config import Settings
from pkeyd.domain import DesiredState
from pkeyd.opensm.importer import plan_import
from pkeyd.opensm.render import render
from pkeyd.opensm.selfcheck import self_check
from pkeyd.sim.fabric import SimFabric
from pkeyd.sim.pkeys import PKeyTables, format_tables, read_pkey_tables
from pkeyd.sim.sweep import load_and_sweep
from pkeyd.sim.topology import fat_tree
from tests.opensm.corpus import CORPUS, CorpusFile, load

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

# The fabric the corpus GUIDs were written for (tests/opensm/corpus.py).
TOPOLOGY = fat_tree(8, ports_per_hca=2, hcas_per_leaf=4)
# Statements without a PKey resolve against what OpenSM still holds: start
# every file from a state with only the Default partition.
BASELINE = b"Default=0x7fff : ALL, SELF=full ;\n"

FILES = [load(p) for p in sorted(CORPUS.glob("*.conf"))]
ACCEPTED = [f for f in FILES if f.parse().fatal is None and not f.undefined]
FATAL = [f for f in FILES if f.parse().fatal is not None and not f.undefined]


class Loader:
    def __init__(self, sim: SimFabric) -> None:
        self.sim = sim

    async def tables(self, data: bytes) -> tuple[PKeyTables, str]:
        await load_and_sweep(self.sim, BASELINE)
        log = await load_and_sweep(self.sim, data)
        return await read_pkey_tables(self.sim), log


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def loaders(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[dict[tuple[bool, bool], Loader]]:
    """One fabric per opensm.conf option set the corpus needs."""
    running: dict[tuple[bool, bool], Loader] = {}
    root = tmp_path_factory.mktemp("roundtrip")
    async with contextlib.AsyncExitStack() as stack:
        for both, qos in sorted({(f.allow_both_pkeys, f.qos) for f in ACCEPTED}):
            workdir = root / f"both{int(both)}-qos{int(qos)}"
            workdir.mkdir()
            (workdir / "partitions.conf").write_bytes(BASELINE)
            extra = {}
            if both:
                extra["allow_both_pkeys"] = "TRUE"
            if qos:
                extra["qos"] = "TRUE"
            sim = await stack.enter_async_context(
                SimFabric(TOPOLOGY, workdir, opensm_conf_extra=extra)
            )
            running[(both, qos)] = Loader(sim)
        yield running
        for loader in running.values():
            shutil.copy(loader.sim.opensm_log, root / f"{loader.sim.workdir.name}.log")


def _comparable(tables: PKeyTables, keep_order: bool) -> dict[int, tuple[int, ...]]:
    return {g: tuple(t if keep_order else sorted(t)) for g, t in tables.items()}


@pytest.mark.parametrize("corpus_file", ACCEPTED, ids=lambda f: f.name)
async def test_render_of_import_programs_the_same_tables(
    corpus_file: CorpusFile, loaders: dict[tuple[bool, bool], Loader]
) -> None:
    result = corpus_file.parse()
    plan = plan_import(result)
    state = DesiredState(1, tuple(plan.partitions))
    rendered = render(state)
    assert (
        self_check(
            rendered, state, allow_both_pkeys=corpus_file.allow_both_pkeys, qos=corpus_file.qos
        )
        == []
    )

    loader = loaders[(corpus_file.allow_both_pkeys, corpus_file.qos)]
    original, _ = await loader.tables(corpus_file.data)
    ours, log = await loader.tables(rendered.encode())
    keep_order = any(e.indx0 for p in result.partitions for e in p.entries)
    if _comparable(original, keep_order) != _comparable(ours, keep_order):
        raise AssertionError(
            f"{corpus_file.name}: tables differ\noriginal:\n{format_tables(original)}\n"
            f"pkeyd's render:\n{format_tables(ours)}\nrender:\n{rendered}"
        )
    assert "PARSE ERROR" not in log
    assert "retrying with default config" not in log


@pytest.mark.parametrize("corpus_file", FATAL, ids=lambda f: f.name)
async def test_import_refuses_fatal_files(corpus_file: CorpusFile, tmp_path: Path) -> None:
    out = io.StringIO()
    settings = Settings(
        db_url=f"sqlite+aiosqlite:///{tmp_path}/pkeyd.db",
        reload_command=("true",),
        allow_both_pkeys=corpus_file.allow_both_pkeys,
        qos=corpus_file.qos,
    )
    rc = await import_file(
        settings.db_url, corpus_file.path, settings, dry_run=False, replace=False, out=out
    )
    assert rc == 2
    fatal = corpus_file.parse().fatal
    assert fatal is not None
    assert f"line {fatal.line}" in out.getvalue()
    assert "refused" in out.getvalue()
    assert not (tmp_path / "pkeyd.db").exists()
