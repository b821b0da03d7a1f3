"""The memo of user keys whose TTL the Redis store set: a window that ends on time, a bound
on its size, and forgetting (``redis_ttl.py``; on real servers: test_state_store_ttl.py)."""

from __future__ import annotations

from streamscore.adapters.redis_ttl import MAX_REFRESH_S, TtlMemo


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_the_window_is_a_hundredth_of_the_ttl_at_most_an_hour() -> None:
    assert TtlMemo(400 * 86_400).refresh_s == MAX_REFRESH_S == 3600
    assert TtlMemo(2 * 3600).refresh_s == 72


def test_users_set_in_a_window_are_fresh_until_it_ends() -> None:
    clock = Clock()
    memo = TtlMemo(100, clock)  # a one-second window
    assert memo.current() == set()
    memo.set(["a", "b"])
    clock.now += 0.75
    assert memo.current() == {"a", "b"}
    memo.set(["c"])
    clock.now += 0.25  # a second after the window began, "c" included: set again
    assert memo.current() == set()


def test_the_memo_holds_at_most_its_bound_and_forgets() -> None:
    memo = TtlMemo(400 * 86_400, Clock(), max_users=3)
    memo.current()
    memo.set(["a", "a", "b"])
    memo.set(["c", "d", "e"])
    assert memo.current() == {"a", "b", "c"}
    memo.forget(["b", "zz"])
    memo.set(["d"])
    assert memo.current() == {"a", "c", "d"}
    memo.forget_all()
    assert memo.current() == set()
