"""Bookkeeping of the dispatcher, kept pure (no Kafka, no clock).

* :class:`Offsets`: a partition's committed offset moves only over records
  that are finished (delivered, dead-lettered or skipped), so a crash replays
  every unfinished trigger and loses none.
* :class:`Delivered`: which (endpoint, trigger id) pairs were delivered,
  bounded; rebuilt after a restart from ``journey.dispatch.delivered`` so that
  the replayed tail of uncommitted records is not sent twice.
"""

from __future__ import annotations

from collections import OrderedDict, deque


class Offsets:
    def __init__(self):
        self._order: dict = {}    # tp -> deque of offsets read, ascending
        self._done: dict = {}     # tp -> offsets finished, not yet committable

    def read(self, tp, offset: int) -> None:
        self._order.setdefault(tp, deque()).append(offset)
        self._done.setdefault(tp, set())

    def finish(self, tp, offset: int) -> None:
        if tp in self._done:
            self._done[tp].add(offset)

    def committable(self, tp) -> int | None:
        """The offset to commit for ``tp`` (one past the last finished record with nothing unfinished
        before it), or None when nothing new is finished."""
        order, done = self._order.get(tp), self._done.get(tp)
        last = None
        while order and order[0] in done:
            last = order.popleft()
            done.discard(last)
        return None if last is None else last + 1

    def unfinished(self, tp=None) -> int:
        if tp is not None:
            return len(self._order.get(tp, ()))
        return sum(len(o) for o in self._order.values())

    def drop(self, tp) -> None:
        self._order.pop(tp, None)
        self._done.pop(tp, None)


class Delivered:
    """A bounded set of (endpoint, trigger id), oldest forgotten first."""

    def __init__(self, limit: int):
        self.limit = limit
        self._keys: OrderedDict = OrderedDict()

    def __contains__(self, key) -> bool:
        return key in self._keys

    def add(self, key) -> None:
        if self.limit <= 0:
            return
        self._keys[key] = None
        self._keys.move_to_end(key)
        while len(self._keys) > self.limit:
            self._keys.popitem(last=False)

    def __len__(self) -> int:
        return len(self._keys)
