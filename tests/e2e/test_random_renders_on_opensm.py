"""A sample of random valid desired states: OpenSM parses each render without error."""

from __future__ import annotations

import warnings

import pytest
from hypothesis.errors import NonInteractiveExampleWarning

from pkeyd.domain import DesiredState
from pkeyd.opensm.render import render
from pkeyd.sim.fabric import SimFabric
from pkeyd.sim.sweep import load_and_sweep
from tests.strategies import desired_states

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

SAMPLES = 12


def _sample(guids: list[int]) -> list[DesiredState]:
    strategy = desired_states(guids, allow_both=False, qos=False)
    with warnings.catch_warnings():
        # A fixed-size sample for a slow oracle, not a search: example() fits.
        warnings.simplefilter("ignore", NonInteractiveExampleWarning)
        return [strategy.example() for _ in range(SAMPLES)]


async def test_random_renders_parse_cleanly_on_opensm(fabric: SimFabric) -> None:
    for state in _sample(fabric.topology.hca_port_guids()):
        text = render(state)
        log = await load_and_sweep(fabric, text.encode())
        assert "PARSE ERROR" not in log, text
        assert "retrying with default config" not in log, text
