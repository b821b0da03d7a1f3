"""Which user keys a save must send ``EXPIRE`` for, so that most saves send one command per
user (``HSET``) instead of two.

Redis keeps a key's TTL across ``HSET``; only commands that replace or delete the key clear
it. So a user key needs ``EXPIRE`` when it is new, and then again only often enough that an
active user's state does not run out: the store remembers, per process, the users whose TTL
it set within the current *refresh window* (``refresh_s``: 1 % of the TTL, at most an hour),
and sends ``EXPIRE`` for everyone else. Each window starts empty, so a user saved in it
gets one ``EXPIRE`` at its first save there: while a user is being saved, their key's
remaining TTL never falls below the TTL minus the window (400 days minus an hour by default).

What the memo cannot see is a key that went away behind its back within a window: erased by
another process (after a rebalance, or by a scorer that lost its partition without knowing),
expired, evicted, flushed by an operator, lost in a failover. The store does not rely on it
for those, so it needs no word of rebalances: ``HSET`` answers how many fields it *added*,
and since a user key holds one field, 1 means the key did not exist and has no TTL now; the
store then sends ``EXPIRE`` for those keys at once, in one more round trip (a rare one), and
counts them as set only once that is answered. Beyond that, the memo is dropped whenever a
write of a save fails (whatever the failure did, every key gets its ``EXPIRE`` again), and
``erase`` forgets the users it deletes, so a user saved again after their erasure costs no
extra round trip. A key can be left without a TTL only by a process killed between those two
round trips (or by an operator's ``PERSIST``); the next save of that user by any process
sets it, as a new process remembers no one.

The memo holds at most ``MAX_USERS`` ids (10 MB with ids of a dozen characters); once full,
users beyond it get ``EXPIRE`` with every save, as before, until the next window.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

REFRESH_FRACTION = 0.01  # of the TTL: how stale a key's TTL may get while it is saved
MAX_REFRESH_S = 3600.0
MAX_USERS = 100_000

Clock = Callable[[], float]


class TtlMemo:
    """The users whose key's TTL this process set within the current refresh window."""

    def __init__(self, ttl_s: float, clock: Clock = time.monotonic, max_users: int = MAX_USERS):
        """``clock``: monotonic seconds (tests pass their own, to end a window at will)."""
        self.refresh_s = min(ttl_s * REFRESH_FRACTION, MAX_REFRESH_S)
        self.clock = clock
        self.max_users = max_users
        self._users: set[str] = set()
        self._since = clock()

    def current(self) -> set[str]:
        """Users whose TTL was set since the current window began (a new one when the last
        is over): their next save needs no ``EXPIRE``. Read it before sending the batch."""
        now = self.clock()
        if now - self._since >= self.refresh_s:
            self._users = set()
            self._since = now
        return self._users

    def set(self, user_ids: Iterable[str]) -> None:
        """These users' ``EXPIRE`` was acknowledged (sent after ``current`` was read)."""
        room = self.max_users - len(self._users)
        for u in user_ids:
            if room <= 0:
                return
            if u not in self._users:
                self._users.add(u)
                room -= 1

    def forget(self, user_ids: Iterable[str]) -> None:
        """Their keys are gone or may be: the next save sets their TTL."""
        self._users.difference_update(user_ids)

    def forget_all(self) -> None:
        """Every key may have lost its TTL (a failed batch): set each again at its next save."""
        self._users = set()
