"""Random valid desired states render to files that read back as the same state."""

from __future__ import annotations

from hypothesis import given, settings

from pkeyd.domain import DesiredState
from pkeyd.opensm.importer import plan_import
from pkeyd.opensm.parse import parse
from pkeyd.opensm.render import render
from pkeyd.opensm.selfcheck import self_check
from tests.strategies import desired_states

GUIDS = [0x0002C90300000000 + 0x100 * i + 1 for i in range(64)]


@settings(max_examples=150, deadline=None)
@given(desired_states(GUIDS))
def test_render_reads_back_as_the_desired_state(state: DesiredState) -> None:
    assert self_check(render(state), state, allow_both_pkeys=False, qos=False) == []


@settings(max_examples=60, deadline=None)
@given(desired_states(GUIDS, allow_both=True, qos=True))
def test_both_and_sl_read_back_when_opensm_allows_them(state: DesiredState) -> None:
    assert self_check(render(state), state, allow_both_pkeys=True, qos=True) == []


@settings(max_examples=100, deadline=None)
@given(desired_states(GUIDS))
def test_import_of_a_render_means_the_same(state: DesiredState) -> None:
    plan = plan_import(parse(render(state)))
    imported = DesiredState(state.generation, tuple(plan.partitions))
    # The re-render of what import stored reads back as the original state.
    assert self_check(render(imported), state, allow_both_pkeys=False, qos=False) == []
