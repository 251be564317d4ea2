"""Groups of concurrent calls for one key in one process, run together: the pattern of the claim groups
(coupons/claim_groups.py), also used by other apps for their own hot rows (admission's entries).

While a group of a key is in flight, further calls with that key wait; when
it ends, all of them form the next group, led by the first to arrive, whose
thread runs it. A call that arrives while nothing of its key is in flight
leads a group of one at once: a quiet service adds no wait. Groups of
different keys run side by side.
"""

import copy
import threading
from collections.abc import Callable, Hashable


class _Pending:
    __slots__ = ("item", "answered", "outcome", "group")

    def __init__(self, item):
        self.item = item
        self.answered = threading.Event()
        self.outcome = None  # the member's result, or the exception to raise
        self.group = None  # set when this call is promoted to lead the next group


class Groups:
    """Thread-safe. `run(key, items)` does one group's work and returns an outcome per item, in order: a result,
    or an exception that member raises. If it raises, every member raises it (each its own copy)."""

    def __init__(self, run: Callable[[Hashable, list], list]):
        self._run_group = run
        self._mutex = threading.Lock()
        # Key -> the calls waiting for the group in flight. A key is present exactly while a group of it is in flight.
        self._waiting: dict[Hashable, list[_Pending]] = {}

    def submit(self, key: Hashable, item):
        """`item`'s outcome, run with whatever other calls of `key` are waiting; raises its refusal."""
        pending = _Pending(item)
        with self._mutex:
            waiting = self._waiting.get(key)
            if waiting is None:
                self._waiting[key] = []
                pending.group = [pending]
            else:
                waiting.append(pending)
        if pending.group is None:
            pending.answered.wait()
        if pending.group is not None:  # leading a group: at once, or promoted when the previous one ended
            self._run(key, pending.group)
        if isinstance(pending.outcome, BaseException):
            raise pending.outcome
        return pending.outcome

    def in_flight(self, key: Hashable) -> bool:
        """Whether a group of this key is running in this process."""
        return key in self._waiting

    def queued(self, key: Hashable) -> int:
        """How many calls of this key wait for the group in flight."""
        return len(self._waiting.get(key, ()))

    def _run(self, key, group):
        try:
            outcomes = self._run_group(key, [pending.item for pending in group])
        except BaseException as exc:  # even a worker's timeout: no member may be left waiting
            # Every member hears the failure (each its own copy, raised from the original).
            outcomes = [exc, *(_copy_of(exc) for _ in group[1:])]
        next_group = self._next_group(key)
        if next_group:
            next_group[0].answered.set()  # first: the next group's work starts while this one's are told
        for pending, outcome in zip(group, outcomes, strict=True):
            pending.outcome = outcome
            pending.group = None
        for pending in group[1:]:  # group[0] is this thread
            pending.answered.set()

    def _next_group(self, key):
        """The calls that arrived while this group ran, led by the first of them; none: the key is idle."""
        with self._mutex:
            next_group = self._waiting.pop(key)
            if next_group:
                self._waiting[key] = []
                next_group[0].group = next_group
        return next_group


def _copy_of(exc):
    duplicate = copy.copy(exc)
    duplicate.__cause__ = exc
    return duplicate
