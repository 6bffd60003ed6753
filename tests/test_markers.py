"""Watermark markers in the worker's runtime, without Kafka: the consumer is a stand-in whose
high watermarks and fetch times the test sets, so a stale high watermark (the client does not
fetch a partition again while it holds unread records of it) is reproduced exactly."""

import orjson
import pytest
from conftest import T, ev
from faust.types import TP

from journey.core.config import Config
from journey.io import topics
from journey.live import runtime as runtime_mod
from journey.live.outputs import CONTROL_HEADER
from journey.live.processor import PartitionProcessor
from journey.live.runtime import MARKER_FRESH_MS, Runtime
from journey.live.settings import Settings

SEC = 1000
CLICK = TP(topics.CLICKSTREAM, 0)
INTERNAL = TP(topics.INTERNAL, 0)


class _Rec:
    def __init__(self, offset, value, headers=()):
        self.offset, self.value, self.headers, self.key = offset, value, list(headers), None


class _Batch:
    def __init__(self, into):
        self.into = into

    def append(self, timestamp, key, value, headers):
        self.into.append(value)
        return True


class _Fake:
    """app.consumer (highwater; the aiokafka consumer's last_poll_timestamp behind faust's thread)
    and app.producer (batches that keep what was appended)."""

    def __init__(self):
        self.hw, self.polled, self.sent = {}, {}, []
        self.consumer = self
        self.producer = self
        self._thread = self

    def highwater(self, tp):
        return self.hw.get(tp)

    def last_poll_timestamp(self, tp):
        return self.polled.get(tp)

    def _ensure_consumer(self):
        return self

    def _ensure_producer(self):
        return self

    def create_batch(self):
        return _Batch(self.sent)


@pytest.fixture
def clock(monkeypatch):
    now = [1_800_000_000_000]
    monkeypatch.setattr(runtime_mod.time, "time", lambda: now[0] / 1000)
    return now


def _runtime():
    rt = Runtime(Settings(), Config({"engine": {"idle_timeout": "5s"}}))
    rt.app = fake = _Fake()
    rt.next_checkpoint = float("inf")
    rt.procs[0] = PartitionProcessor(rt.config, 0, rt.lateness, rt.idle, partition_of=rt.partition)
    for t in (*topics.SOURCES, topics.INTERNAL):
        rt.start_pos[TP(t, 0)] = 0
        fake.hw[TP(t, 0)] = 0
    return rt, fake


def _customers(rt, n):
    out, i = [], 0
    while len(out) < n:
        i += 1
        if rt.partition(f"c{i}") == 0:
            out.append(f"c{i}")
    return out


def _events(rt, start, n):
    cids = _customers(rt, n)
    return [_Rec(start + i, orjson.dumps(ev("page.viewed", cids[i], f"2026-03-01T10:0{i}:00Z")))
            for i in range(n)]


def _marker(offset, until, end):
    return _Rec(offset, orjson.dumps({"until": until, "ends": {topics.CLICKSTREAM: end}}),
                [(CONTROL_HEADER, b"watermark")])


def test_a_marker_behind_a_stale_high_watermark_is_reached_not_dropped(clock):
    rt, fake = _runtime()
    proc = rt.procs[0]
    until = T("2026-08-01T00:00:00Z")
    # the last Fetch that included clickstream/0 answered high watermark 5 (fetched before the
    # producer's last records): the client holds 5 records and fetches that partition no more
    fake.hw[CLICK], fake.polled[CLICK] = 5, clock[0]
    rt.handle({CLICK: _events(rt, 0, 5)})
    # the marker, written after the broker acknowledged offsets up to 8, is read on internal
    fake.hw[INTERNAL], fake.polled[INTERNAL] = 1, clock[0]
    rt.handle({INTERNAL: [_marker(0, until, 8)]})
    assert proc.marker is not None and fake.sent == []        # waits: not dead-lettered
    # long past the idle timeout, and still no Fetch of clickstream since the marker was read
    clock[0] += 60 * SEC
    rt.tick()
    assert proc.marker is not None and fake.sent == []
    # the next Fetch brings the rest: the marker is reached and event time moves to its until
    fake.hw[CLICK], fake.polled[CLICK] = 8, clock[0]
    rt.handle({CLICK: _events(rt, 5, 3)})
    assert proc.marker is None and proc.watermark == until
    assert rt.control_deadletters == {} and fake.sent == []


def test_a_forged_marker_is_dropped_once_fresh_fetches_show_its_offsets_never_came(clock):
    rt, fake = _runtime()
    proc = rt.procs[0]
    fake.hw[CLICK], fake.polled[CLICK] = 5, clock[0]
    rt.handle({CLICK: _events(rt, 0, 5)})
    fake.hw[INTERNAL], fake.polled[INTERNAL] = 1, clock[0]
    rt.handle({INTERNAL: [_marker(0, T("2026-08-01T00:00:00Z"), 1000)]})
    read_at = clock[0]
    # fresh fetches keep answering 5, but the idle timeout has not passed: it waits
    clock[0] += 4 * SEC
    fake.polled[CLICK] = clock[0]
    rt.tick()
    assert proc.marker is not None and fake.sent == []
    # idle timeout passed, and a Fetch answered after the marker was read still ends at 5
    clock[0] = read_at + 6 * SEC
    fake.polled[CLICK] = read_at + MARKER_FRESH_MS + 1
    rt.tick()
    assert proc.marker is None
    assert rt.control_deadletters == {"watermark": 1}
    [dead] = [orjson.loads(v) for v in fake.sent]
    assert "past the end of its inputs" in dead["detail"]
    assert (dead["topic"], dead["partition"], dead["offset"]) == (topics.INTERNAL, 0, 0)


def test_a_marker_is_not_dropped_on_a_fetch_answered_before_it_could_be_seen(clock):
    rt, fake = _runtime()
    proc = rt.procs[0]
    fake.hw[CLICK], fake.polled[CLICK] = 5, clock[0]
    rt.handle({CLICK: _events(rt, 0, 5)})
    fake.hw[INTERNAL], fake.polled[INTERNAL] = 1, clock[0]
    rt.handle({INTERNAL: [_marker(0, T("2026-08-01T00:00:00Z"), 8)]})
    # a Fetch answered just after the marker was read may have been sent before it was written
    clock[0] += 30 * SEC
    fake.polled[CLICK] = clock[0] - 30 * SEC + MARKER_FRESH_MS - 1
    rt.tick()
    assert proc.marker is not None and fake.sent == []


def test_a_partition_whose_event_time_stands_still_while_it_waits_is_stuck_until_it_moves(clock):
    rt, fake = _runtime()
    rt.stuck_ms = 30 * SEC
    proc = rt.procs[0]
    until = T("2026-08-01T00:00:00Z")
    fake.hw[CLICK], fake.polled[CLICK] = 5, clock[0]
    rt.handle({CLICK: _events(rt, 0, 5)})
    rt.tick()
    assert rt.stuck == {}                                     # nothing awaited: never stuck, however long
    clock[0] += 120 * SEC
    rt.tick()
    assert rt.stuck == {} and rt.stalls == 0
    fake.hw[INTERNAL], fake.polled[INTERNAL] = 1, clock[0]
    rt.handle({INTERNAL: [_marker(0, until, 8)]})
    rt.tick()
    clock[0] += 29 * SEC
    rt.tick()
    assert rt.stuck == {}                                     # within the bound
    clock[0] += 2 * SEC
    rt.tick()
    assert list(rt.stuck) == [0] and "marker" in rt.stuck[0] and rt.stalls == 1
    assert rt.describe()["0"]["stuck"] == rt.stuck[0]
    # its records show up but are not read for the bound either: still stuck, now for that reason
    fake.hw[CLICK] = 8
    rt.tick()
    clock[0] += 31 * SEC
    rt.tick()
    assert "not yet read on journey.clickstream" in rt.stuck[0] and rt.stalls == 1
    fake.polled[CLICK] = clock[0]
    rt.handle({CLICK: _events(rt, 5, 3)})                    # read: the marker is reached, event time moves
    rt.tick()
    assert rt.stuck == {} and proc.watermark == until and rt.stalls == 1
