"""LargestFirst: a free worker gets the largest series planned so far, memory bounded."""

from __future__ import annotations

import anyio
import pytest

from kheops_async.engine.scheduling import LargestFirst
from kheops_async.targets import SeriesPlan

pytestmark = pytest.mark.anyio


def plan(n: int, instances: int | None) -> SeriesPlan:
    return SeriesPlan("1.2.3", f"1.2.3.{n}", expected_instances=instances)


async def drain(chooser: LargestFirst) -> list[int | None]:
    taken = []
    while (item := await chooser.next()) is not None:
        taken.append(item.expected_instances)
    return taken


async def test_a_free_worker_gets_the_largest_series_already_planned() -> None:
    send, receive = anyio.create_memory_object_stream[SeriesPlan](10)
    for n, size in enumerate([20, 20, 200, None, 5, 20]):
        send.send_nowait(plan(n, size))
    send.close()
    with receive:
        assert await drain(LargestFirst(receive, 10)) == [200, 20, 20, 20, 5, None]


async def test_the_choice_is_made_when_a_worker_asks() -> None:
    send, receive = anyio.create_memory_object_stream[SeriesPlan](10)
    chooser = LargestFirst(receive, 10)
    with send, receive:
        await send.send(plan(0, 10))
        assert (await chooser.next()).expected_instances == 10  # type: ignore[union-attr]
        for n, size in enumerate([3, 300, 30], start=1):
            await send.send(plan(n, size))
        assert (await chooser.next()).expected_instances == 300  # type: ignore[union-attr]


async def test_a_worker_waits_for_the_next_series_then_for_the_end() -> None:
    send, receive = anyio.create_memory_object_stream[SeriesPlan](10)
    chooser = LargestFirst(receive, 10)
    taken: list[int | None] = []

    async def worker() -> None:
        taken.extend(await drain(chooser))

    async with anyio.create_task_group() as group:
        group.start_soon(worker)
        group.start_soon(worker)
        await anyio.wait_all_tasks_blocked()
        assert taken == []
        await send.send(plan(1, 7))
        await send.send(plan(2, 70))
        send.close()
    receive.close()
    assert sorted(taken, key=lambda n: n or 0) == [7, 70]


async def test_no_more_than_capacity_series_wait_in_the_chooser() -> None:
    send, receive = anyio.create_memory_object_stream[SeriesPlan](1000)
    for n in range(100):
        send.send_nowait(plan(n, n))
    send.close()
    with receive:
        chooser = LargestFirst(receive, 8)
        first = await chooser.next()
        assert first is not None and first.expected_instances == 7  # largest of the 8 held
        assert receive.statistics().current_buffer_used == 100 - 8  # the rest stays queued
        assert len(await drain(chooser)) == 99
