"""Helpers for the large-file path (render, parse and self-check of ~200,000 members).

Render and the quick self-check are written as *steps*: generators that
yield between small pieces of work and return their result. run_steps runs
them to the end at once; run_sliced runs them on the event loop in slices,
giving way to the other tasks between slices.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Generator, Iterator
from typing import TypeAlias, TypeVar

T = TypeVar("T")

# A computation that yields (nothing) between pieces of work and returns a T.
Steps: TypeAlias = Generator[None, None, T]

# The longest the event loop works on a sliced computation before it serves
# the rest of its tasks (an API request waits at most this long per loop turn).
SLICE_S = 0.001
# The pause after a slice: short when the loop had nothing else to do (an
# idle loop's poll rounds it up to 1 ms), long when it had, so that a busy
# loop gives the computation about a fifth of its time.
IDLE_GAP_S = 0.0005
BUSY_GAP_S = 0.004
# A loop turn longer than this ran other tasks: the loop is busy.
_BUSY_TURN_S = 0.0002


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No automatic cyclic garbage collection inside the block; the previous state after it.

    Parsing a large file allocates a few hundred thousand container objects
    (partitions, lists, tuples), none of them part of a reference cycle,
    while the caller typically holds as many long-lived ones (the desired
    state): each automatic collection on the way walks them all again, for
    nothing, about a third of the time of a parse. Reference counting still
    frees everything; a cycle made inside the block waits for the next
    collection after it. Re-enabled even when the block raises. Threads
    share the switch: one thread's block pauses collection for all, which
    only costs memory for the time of the block.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def run_steps(steps: Steps[T]) -> T:
    """Run a stepped computation to its end, here and now."""
    try:
        while True:
            next(steps)
    except StopIteration as done:
        result: T = done.value
        return result


async def run_sliced(steps: Steps[T], slice_s: float = SLICE_S) -> T:
    """Run a stepped computation on the event loop, `slice_s` at a time, with pauses.

    Why not a worker thread: the thread and the event loop would share the
    interpreter lock, and each would wait out the other's 5 ms switch
    interval, so every request in flight during a 30 ms render waited about
    as long again. In slices the loop serves its ready tasks between two
    slices: a request waits a slice per loop turn at most. After each slice
    one loop turn tells whether other tasks are waiting; then the pause is
    long (BUSY_GAP_S), so that the requests keep most of the loop and no
    queue builds behind the computation, or short (IDLE_GAP_S). Either pause
    lets the loop fall idle when nothing else is ready, and a worker thread
    that waits for the lock (a commit back from its fsync) then takes it at
    once instead of after a switch interval. Collection is paused within a
    slice only (see gc_paused).
    """
    clock = time.perf_counter
    while True:
        until = clock() + slice_s
        with gc_paused():
            try:
                next(steps)  # at least one step a slice, whatever the clock says
                while clock() < until:
                    next(steps)
            except StopIteration as done:
                result: T = done.value
                return result
        turn = clock()
        await asyncio.sleep(0)
        busy = clock() - turn > _BUSY_TURN_S
        await asyncio.sleep(BUSY_GAP_S if busy else IDLE_GAP_S)
