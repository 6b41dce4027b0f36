"""serving.Batcher's gathering of requests into calls, on its own event loop (no server, no model)."""

import asyncio

import serving


def gathered_sizes(arrival_gaps, wait_seconds, calls, max_batch=64):
    """The number of jobs in each of the first calls gathered while one-poem jobs arrive after
    arrival_gaps (seconds, each after the one before)."""

    async def scenario():
        batcher = serving.Batcher(pool=None, max_batch=max_batch, wait_seconds=wait_seconds)
        loop = asyncio.get_running_loop()

        async def arrive():
            for gap in arrival_gaps:
                await asyncio.sleep(gap)
                batcher.queue.put_nowait(serving.Job(("wujue",), 0, 1, loop.create_future()))

        arrivals = asyncio.create_task(arrive())
        sizes = [len(await batcher.gather()) for _ in range(calls)]
        arrivals.cancel()
        return sizes

    return asyncio.run(scenario())


def test_requests_that_keep_coming_share_a_call_and_a_pause_ends_it():
    # A burst of four arriving well within the wait of each other, then a pause of ten waits, then
    # two more: two calls, of four and of two.
    assert gathered_sizes([0, 0.02, 0.02, 0.02, 1.0, 0.02], wait_seconds=0.1, calls=2) == [4, 2]


def test_a_call_waits_for_no_more_than_its_limit_or_its_batch():
    # Requests at half the wait apart without end: a call takes what came within GATHER_WAITS waits.
    first = gathered_sizes([0.05] * 60, wait_seconds=0.1, calls=1)[0]
    assert 2 <= first <= 0.1 * serving.GATHER_WAITS / 0.05 + 2


def test_a_full_batch_goes_at_once_however_long_the_wait():
    async def scenario():
        batcher = serving.Batcher(pool=None, max_batch=4, wait_seconds=30)
        loop = asyncio.get_running_loop()
        for _ in range(4):
            batcher.queue.put_nowait(serving.Job(("wujue",), 0, 1, loop.create_future()))
        return len(await asyncio.wait_for(batcher.gather(), timeout=10))

    assert asyncio.run(scenario()) == 4
