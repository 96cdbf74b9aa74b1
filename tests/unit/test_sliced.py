"""Render and the quick self-check in steps, run in slices on the event loop.

The stepped forms must say exactly what the one-go forms say, give the loop
back between slices, and leave garbage collection as they found it.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import time

import pytest
from hypothesis import given, settings

from pkeyd.domain import DesiredState, KeywordMember, Member, Membership, Partition, PKey, PortGuid
from pkeyd.opensm import fastpath
from pkeyd.opensm.fastpath import Steps, run_sliced, run_steps
from pkeyd.opensm.render import is_intact_render, render, render_steps
from pkeyd.opensm.selfcheck import full_check, reads_back_steps, self_check
from tests.strategies import desired_states

GUIDS = [0x0002C90300000000 + 0x100 * i + 1 for i in range(48)]


def _busy(steps: int, each_s: float) -> Steps[int]:
    for _ in range(steps):
        until = time.perf_counter() + each_s
        while time.perf_counter() < until:
            pass
        yield
    return steps


async def test_sliced_steps_give_the_loop_back_between_slices() -> None:
    ticks: list[int] = []

    async def ticker() -> None:
        while True:
            ticks.append(len(ticks))
            await asyncio.sleep(0)

    other = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = len(ticks)
    # 40 steps of 0.5 ms in slices of 1 ms: about 20 slices.
    assert await run_sliced(_busy(40, 0.0005), slice_s=0.001) == 40
    during = len(ticks) - before
    other.cancel()
    assert during >= 5, during  # the other task ran between the slices


async def test_the_pause_after_a_slice_is_long_only_when_other_tasks_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pauses: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        if delay:
            pauses.append(delay)
        await real_sleep(delay)

    monkeypatch.setattr("pkeyd.opensm.fastpath.asyncio.sleep", sleep)
    # An idle loop: the pauses are short (a slow machine may see a busy turn).
    await run_sliced(_busy(10, 0.001), slice_s=0.001)
    assert pauses.count(fastpath.IDLE_GAP_S) >= len(pauses) // 2, pauses

    async def competitor() -> None:  # takes 1 ms of every loop turn
        while True:
            until = time.perf_counter() + 0.001
            while time.perf_counter() < until:
                pass
            await real_sleep(0)

    pauses.clear()
    other = asyncio.create_task(competitor())
    await real_sleep(0)
    await run_sliced(_busy(10, 0.001), slice_s=0.001)
    other.cancel()
    assert pauses
    assert set(pauses) == {fastpath.BUSY_GAP_S}, pauses


async def test_collection_is_paused_only_inside_slices_and_restored_on_error() -> None:
    seen: list[bool] = []

    def steps() -> Steps[None]:
        for _ in range(3):
            seen.append(gc.isenabled())
            yield
        raise ValueError("broken step")

    assert gc.isenabled()
    with pytest.raises(ValueError, match="broken step"):
        await run_sliced(steps(), slice_s=0.0)
    assert seen == [False, False, False]
    assert gc.isenabled()


@settings(max_examples=60, deadline=None)
@given(desired_states(GUIDS, allow_both=True, qos=True))
def test_stepped_render_and_check_say_what_the_one_go_forms_say(state: DesiredState) -> None:
    text = run_steps(render_steps(state))
    assert text == render(state)
    for allow_both, qos in ((False, False), (True, True)):
        quick = run_steps(reads_back_steps(text, state, allow_both_pkeys=allow_both, qos=qos))
        checked = self_check(text, state, allow_both_pkeys=allow_both, qos=qos)
        if quick:
            assert checked == []
        # The full parse alone agrees with self_check either way.
        assert full_check(text, state, allow_both_pkeys=allow_both, qos=qos) == checked


def test_a_render_past_one_hash_step_is_intact() -> None:
    first = 0x0002C90300000001
    members = tuple(Member(PortGuid(first + i), Membership.FULL) for i in range(60_000))
    state = DesiredState(
        7,
        (
            Partition(PKey(0x7FFF), "Default", True),
            Partition(PKey(0x10), "big", False, members=members),
        ),
    )
    data = render(state).encode()
    assert len(data) > 1 << 20  # hashed in more than one step
    assert is_intact_render(data)
    body = data.split(b"\n", 3)[3]
    assert hashlib.sha256(body).hexdigest().encode() in data.split(b"\n", 3)[2]


async def test_a_wrong_render_reads_back_wrong_in_slices() -> None:
    state = DesiredState(
        3,
        (
            Partition(
                PKey(0x7FFF), "Default", True, keywords=(KeywordMember("ALL", Membership.LIMITED),)
            ),
            Partition(
                PKey(0x10),
                "a",
                False,
                members=(Member(PortGuid(0x0002C90300000001), Membership.FULL),),
            ),
        ),
    )
    text = await run_sliced(render_steps(state))
    assert await run_sliced(reads_back_steps(text, state, allow_both_pkeys=False, qos=False))
    wrong = text.replace("=full", "=limited")
    assert not await run_sliced(reads_back_steps(wrong, state, allow_both_pkeys=False, qos=False))
    assert full_check(wrong, state, allow_both_pkeys=False, qos=False) != []
