"""Event-time ordering for input that arrives out of order (the live path).

Events are held until the watermark (the latest event time seen, less the
allowed lateness) passes them, then applied in event-time order, interleaved
with the timers due before each of them; timers due at or before the
watermark fire after that. An event at or below the watermark when it
arrives is *late*: it is applied at once (nothing is dropped) and counted.

``drive(engine, sorted_events, until)`` is the same timeline for input that
is already in event-time order (replay, backtest).

No event can stop the timeline: an exception while one event is applied is
handed to ``on_error(event, token, exception)`` (the shells dead-letter the
record and count it) and the timeline goes on with the next.
"""

from __future__ import annotations

import heapq


def order_key(ev) -> tuple:
    """The total order of events: event time, then event id (ties are rare and
    broken the same way everywhere)."""
    return (ev.ts, ev.id)


def drive(engine, events, until: int | None = None, on_error=None) -> int | None:
    """Apply time-ordered ``events``; then fire timers up to ``until`` (or the
    last event's time). Returns the final watermark. ``on_error(ev, None, exc)``
    takes an event whose application failed (without it, the error propagates)."""
    last = None
    fire_due, apply = engine.fire_due, engine.apply
    heap = getattr(engine, "heap", None)
    for ev in events:
        ts = ev.ts
        if last is None or ts > last:
            # timers due strictly before this event; at equal times the event comes first
            if heap is None or (heap and heap[0][0] < ts):
                fire_due(ts - 1)
            last = ts
        try:
            apply(ev)
        except Exception as e:
            if on_error is None:
                raise
            on_error(ev, None, e)
    final = last if until is None or (last is not None and until < last) else until
    if final is not None:
        fire_due(final)
    return final


class Timeline:
    """Reorders events within the allowed lateness and drives the engine."""

    def __init__(self, engine, lateness_ms: int, on_error=None):
        self.engine = engine
        # on_error(event, token, exception): an event whose application failed (the live
        # worker dead-letters its record); without it, the error propagates
        self.on_error = on_error
        self.lateness = lateness_ms
        self.buffer: list[tuple] = []
        self.max_ts: int | None = None
        self.watermark: int | None = None
        self.late = 0
        self._seq = 0
        # tokens of the events applied so far (the live worker acknowledges a Kafka record
        # only once its event has been applied, never while it waits in the buffer)
        self.released: list = []

    def offer(self, ev, token=None, auto: bool = True) -> None:
        """Accept one event; applies whatever the watermark now allows. ``token`` is
        appended to ``released`` once the event has been applied. With ``auto`` off,
        the caller moves the watermark itself (the live worker aligns several inputs)."""
        if self.watermark is not None and ev.ts <= self.watermark:
            self.late += 1
            self._apply(ev, token)
            if token is not None:
                self.released.append(token)
            return
        self._seq += 1
        heapq.heappush(self.buffer, (ev.ts, ev.id, self._seq, ev, token))
        if self.max_ts is None or ev.ts > self.max_ts:
            self.max_ts = ev.ts
            if auto:
                self.advance(ev.ts - self.lateness)

    def advance(self, watermark: int) -> None:
        """Move the watermark forward (never back): apply buffered events at or
        before it, in order, and fire timers due by then. The live worker also
        calls this from the wall clock when a partition is quiet."""
        if self.watermark is not None and watermark <= self.watermark:
            return
        self.watermark = watermark
        buf, engine = self.buffer, self.engine
        fire_due, apply, pop, released = engine.fire_due, engine.apply, heapq.heappop, self.released
        timers = engine.heap  # the engine's timer heap (always the same list)
        while buf and buf[0][0] <= watermark:
            ts, _id, _seq, ev, token = pop(buf)
            if timers and timers[0][0] < ts:
                fire_due(ts - 1)
            try:
                apply(ev)
            except Exception as e:
                if self.on_error is None:
                    raise
                self.on_error(ev, token, e)
            if token is not None:
                released.append(token)
        fire_due(watermark)

    def _apply(self, ev, token) -> None:
        try:
            self.engine.apply(ev)
        except Exception as e:
            if self.on_error is None:
                raise
            self.on_error(ev, token, e)

    def flush(self, until: int | None = None) -> None:
        """Apply everything buffered (end of input)."""
        if self.max_ts is not None:
            self.advance(max(self.max_ts, until or self.max_ts))
