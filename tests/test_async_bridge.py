"""The thread→iterator bridge: items, errors and ends cross over; every producer thread ends, whatever the schedule."""

import asyncio
import random
import threading
import time

import pytest

from fish_worker.async_bridge import from_iterator, iterate_in_thread, merge_threads


class Boom(RuntimeError):
    pass


def alive(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


def counting(name: str, count: int, *, fail_at: int | None = None, pause_s: float = 0.0):
    """A producer emitting (name, 0..count-1), raising Boom at `fail_at`, leaving early once stopped."""

    def produce(emit, stop):
        for i in range(count):
            if i == fail_at:
                raise Boom(f"{name} failed at {i}")
            emit((name, i))
            if pause_s:
                time.sleep(pause_s)
            if stop.is_set():
                return

    produce.__name__ = name
    return produce


@pytest.mark.timeout(30)
def test_items_of_every_producer_arrive_in_their_own_order():
    items = list(merge_threads(counting("a", 50), counting("b", 30), name="order"))
    assert [i for n, i in items if n == "a"] == list(range(50))
    assert [i for n, i in items if n == "b"] == list(range(30))
    assert not alive("order-")


@pytest.mark.timeout(30)
def test_a_producer_error_is_raised_to_the_consumer_and_the_other_producer_is_stopped_and_joined():
    endless = counting("endless", 10**9, pause_s=0.001)
    with pytest.raises(Boom, match="bad failed at 3"):
        for _ in merge_threads(endless, counting("bad", 10, fail_at=3), name="err"):
            pass
    assert not alive("err-")


@pytest.mark.timeout(30)
def test_an_exception_object_emitted_as_an_item_is_an_item_not_an_error():
    error = ValueError("data")
    assert list(merge_threads(lambda emit, stop: emit(error))) == [error]


@pytest.mark.timeout(30)
def test_the_callers_stop_ends_the_stream_and_every_producer():
    stop = threading.Event()
    seen = []
    for item in merge_threads(counting("slow", 10**9, pause_s=0.002), stop=stop, name="caller", poll_s=0.01):
        seen.append(item)
        if len(seen) == 5:
            stop.set()
    assert seen[:5] == [("slow", i) for i in range(5)]
    assert not alive("caller-")


@pytest.mark.timeout(30)
def test_none_is_an_item_like_any_other():
    assert list(merge_threads(lambda emit, stop: [emit(None), emit(0)], stop=threading.Event(), poll_s=0.01)) == [
        None,
        0,
    ]


@pytest.mark.timeout(30)
def test_a_producer_that_never_emits_still_ends_the_stream():
    assert list(merge_threads(lambda emit, stop: None, name="quiet")) == []


@pytest.mark.timeout(120)
def test_random_schedules_every_producer_thread_ends():
    """Consumers leave early, producers raise, callers stop: each stream ends, every thread ends with it."""
    rng = random.Random(9)
    for run in range(200):
        prefix = f"stress{run}"
        producers, failing = [], set()
        for p in range(rng.randint(1, 3)):
            fail_at = rng.randint(0, 20) if rng.random() < 0.3 else None
            count = rng.randint(0, 30)
            if fail_at is not None and fail_at < count:
                failing.add(f"p{p}")
            producers.append(counting(f"p{p}", count, fail_at=fail_at, pause_s=rng.choice([0, 0, 0.0005])))
        stop = threading.Event() if rng.random() < 0.3 else None
        leave_after = rng.choice([None, rng.randint(0, 20)])
        stop_after = rng.randint(0, 20)
        stream = merge_threads(*producers, stop=stop, name=prefix, poll_s=0.005)
        seen: list = []
        try:
            for item in stream:
                seen.append(item)
                if stop is not None and len(seen) == stop_after:
                    stop.set()
                if leave_after is not None and len(seen) >= leave_after:
                    break
            else:
                # Ran to its end: all items arrived, unless a producer failed or the caller stopped.
                if stop is None or not stop.is_set():
                    assert not failing, (run, failing)
        except Boom:
            assert failing, run
        finally:
            stream.close()
        for name in {n for n, _ in seen}:
            mine = [i for n, i in seen if n == name]
            assert mine == list(range(len(mine))), (run, name)
        assert not alive(prefix + "-"), run


@pytest.mark.timeout(60)
def test_async_form_yields_items_and_reraises_the_producer_error():
    def numbers(stop):
        yield from range(3)
        raise Boom("after three")

    async def consume():
        got = []
        with pytest.raises(Boom, match="after three"):
            async for item in iterate_in_thread(numbers, name="async-err"):
                got.append(item)
        return got

    assert asyncio.run(consume()) == [0, 1, 2]


@pytest.mark.timeout(60)
def test_async_random_schedules_every_producer_thread_ends():
    rng = random.Random(4)

    def make(count: int, fail_at: int | None):
        def numbers(stop):
            for i in range(count):
                if i == fail_at:
                    raise Boom(str(i))
                yield i
                time.sleep(0.0005)

        return numbers

    async def one(run: int) -> None:
        count, fail_at = rng.randint(0, 40), rng.choice([None, rng.randint(0, 40)])
        leave_after = rng.choice([None, rng.randint(0, 40)])
        got = []
        stream = iterate_in_thread(make(count, fail_at), name=f"astress{run}")
        try:
            async for item in stream:
                got.append(item)
                if leave_after is not None and len(got) >= leave_after:
                    break
        except Boom:
            assert fail_at is not None and fail_at < count
        finally:
            await stream.aclose()
        assert got == list(range(len(got)))

    async def schedules() -> None:
        await asyncio.gather(*(one(run) for run in range(100)))

    asyncio.run(schedules())
    deadline = time.monotonic() + 10
    while alive("astress") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not alive("astress")


@pytest.mark.timeout(30)
def test_from_iterator_stops_between_items_once_stop_is_set():
    stop = threading.Event()
    emitted = []

    def endless(stop):
        i = 0
        while True:
            yield i
            i += 1

    def emit(item):
        emitted.append(item)
        if item == 4:
            stop.set()

    from_iterator(endless)(emit, stop)
    assert emitted == [0, 1, 2, 3, 4]


def test_call_in_thread_s_error_leaves_no_reference_cycle_holding_the_work_s_input():
    """A failing call's error is caught and dropped: the input its frames held (a request body) is freed
    at once, not at the next GC pass (a cycle through the future that holds the error would keep it)."""
    import gc
    import weakref

    from fish_worker.async_bridge import call_in_thread

    class Body:
        pass

    async def main() -> weakref.ref:
        body = Body()
        held = weakref.ref(body)

        def work(stop: threading.Event, body: Body = body) -> None:
            raise ValueError("bad body")

        del body
        try:
            await call_in_thread(work)
        except ValueError:
            pass
        del work
        return held

    gc.disable()
    try:
        held = asyncio.run(main())
        assert held() is None
    finally:
        gc.enable()
