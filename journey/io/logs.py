"""Log files on disk: JSON lines, plain or gzip (recognized by its magic bytes),
read, validated and put in event-time order.

:class:`Reader` sorts by an external merge sort: at most ``sort_buffer``
parsed events (default 200,000) are held in memory at a time; larger inputs
are sorted in runs that spill to temporary files and are merged back.
Rejected lines go to the dead-letter callback as they are read. Used by
replay, backtest and the CLV fit (``journey.history``) and by ``journey
produce`` (``journey.live``).
"""

from __future__ import annotations

import gzip
import heapq
import os
import pickle
import tempfile
import zlib
from bisect import bisect_right
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from ..core.intake import FUTURE_TIME, Event, Rejected, parse
from ..core.timeutil import format_time
from ..core.triggers import deadletter_record
from .progress import Progress

SORT_BUFFER = 200_000
_SPILL_BATCH = 8192


def open_log(path: str | Path):
    """Open a log file for binary line reading; gzip by magic bytes. Returns (file, raw file)."""
    raw = open(path, "rb")
    magic = raw.read(2)
    raw.seek(0)
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    return raw, raw


class LogError(Exception):
    """A log file that cannot be read to its end (truncated or corrupt compression): the
    message says which file, and how far reading got."""


class Reader:
    """Reads, validates and sorts events from log files."""

    def __init__(self, paths, deadletter=None, max_bytes: int = 1 << 20, progress: Progress | None = None,
                 sort_buffer: int = SORT_BUFFER, future_limit: int | None = None, keep: frozenset = frozenset()):
        self.paths = [str(p) for p in paths]
        self.deadletter = deadletter  # callable(record dict) or None
        self.max_bytes = max_bytes
        self.progress = progress or Progress(enabled=False)
        self.sort_buffer = max(1, sort_buffer)
        # events stamped after this (epoch ms) are dead-lettered as future_time (replay --now)
        self.future_limit = future_limit
        self.keep = keep  # event types whose props are kept whole (read by user journeys)
        # replay --erased: ``erased(line)`` tells whether a rejected line carries an erased id (it is
        # then dropped and counted in ``erased_rejects``, never dead-lettered with its bytes)
        self.erased = None
        self.erased_rejects = 0
        self.lines = 0
        self.valid = 0
        self.rejected = Counter()
        self.runs = 0
        self.starts: list[tuple[int, str]] = []  # (line count before the file, file)
        self.current = 0  # the line count of the event last handed out by ``events``
        for p in self.paths:
            if not os.path.isfile(p):
                raise FileNotFoundError(f"{p}: no such file (journey replay takes JSON-lines files, .jsonl or .jsonl.gz)")

    def _numbered(self):
        """(seq, line) of every line of every file, in the order given (blank lines too)."""
        total = sum(os.path.getsize(p) for p in self.paths) or 1
        done_before = 0
        seq = 0
        for path in self.paths:
            self.starts.append((seq, path))
            f, raw = open_log(path)
            with f, raw:
                for _n, line in read_lines(f, path):
                    seq += 1
                    yield seq, line
                    if not seq & 4095:
                        self.progress.update("reading", done_before + raw.tell(), total)
            done_before += os.path.getsize(path)

    def _parsed(self):
        """(ts, id, seq, event) tuples in file order; rejects go to the dead-letter output.
        ``seq`` counts every line of every file, in the order given: ties of time and id
        (the same event twice) keep the first in file order, and ``locate`` finds a line."""
        for seq, line in self._numbered():
            self.lines += 1
            line = line.rstrip(b"\r\n")
            if not line or line.isspace():  # blank (isspace: no copy, the same whitespace as strip)
                self.lines -= 1
                continue
            try:
                ev = parse(line, self.max_bytes, self.keep)
                if self.future_limit is not None and ev.ts > self.future_limit:
                    raise Rejected(FUTURE_TIME, f"stamped {format_time(ev.ts)}, more than the future horizon "
                                                f"after --now ({format_time(self.future_limit)})")
            except Rejected as r:
                if self.erased is not None and self.erased(line):
                    self.erased_rejects += 1
                    continue
                self.rejected[r.reason] += 1
                if self.deadletter is not None:
                    path, n = self.locate(seq)
                    self.deadletter(deadletter_record(r.reason, r.detail, {"file": path, "line": n}, line))
                continue
            self.valid += 1
            yield (ev.ts, ev.id, seq, ev)

    def events(self):
        """All valid events in event-time order (ties: event id, then content)."""
        sort = ExternalSort(self.sort_buffer, _pack_events, _unpack_events)
        for item in sort(self._parsed()):
            self.current = item[2]
            yield item[3]
        self.runs = sort.runs

    def locate(self, seq: int) -> tuple[str, int]:
        """(file, line number) of the line counted ``seq``."""
        i = bisect_right([s for s, _p in self.starts], seq - 1) - 1
        start, path = self.starts[i]
        return path, seq - start

    def line(self, seq: int) -> bytes:
        """The bytes of the line counted ``seq`` (read again: for the rare dead letter of an
        event that failed after sorting)."""
        path, n = self.locate(seq)
        f, raw = open_log(path)
        with f, raw:
            for i, line in enumerate(f, 1):
                if i == n:
                    return line.rstrip(b"\r\n")
        return b""


class ExternalSort:
    """Sorts tuples in bounded memory: chunks of ``buffer`` items are sorted, spilled to
    temporary files (``pack`` turns a batch into something quick to pickle, ``unpack``
    back into items) and merged. Items must compare without ties beyond their first
    fields (put a unique sequence number before anything that does not compare)."""

    def __init__(self, buffer: int, pack=None, unpack=None):
        self.buffer = max(1, buffer)
        self.pack, self.unpack = pack or list, unpack or iter
        self.runs = 0

    def __call__(self, items):
        with ExitStack() as stack:
            runs, chunk = [], []
            for item in items:
                chunk.append(item)
                if len(chunk) >= self.buffer:
                    runs.append(self._spill(chunk, stack))
                    chunk = []
            chunk.sort()
            self.runs = len(runs) + (1 if chunk else 0)
            if not runs:
                yield from chunk
                return
            runs.append(iter(chunk))
            yield from heapq.merge(*runs)

    def _spill(self, chunk, stack):
        chunk.sort()
        tmp = stack.enter_context(tempfile.TemporaryFile(prefix="journey-run-"))
        for i in range(0, len(chunk), _SPILL_BATCH):
            pickle.dump(self.pack(chunk[i:i + _SPILL_BATCH]), tmp, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.seek(0)
        return self._read(tmp)

    def _read(self, f):
        while True:
            try:
                batch = pickle.load(f)
            except EOFError:
                return
            yield from self.unpack(batch)


def _pack_events(chunk) -> list:
    """(ts, id, seq, Event) items as plain tuples (fast to pickle)."""
    return [(ts, i_, q, e.cid, e.anon, e.type, e.f, e.touch, e.known, e.traits, e.props) for ts, i_, q, e in chunk]


def _unpack_events(batch):
    for ts, eid, seq, cid, anon, typ, fields, touch, known, traits, props in batch:
        e = Event(eid, cid, anon, typ, ts, fields, touch, known, traits)
        e.props = props
        yield ts, eid, seq, e


def read_lines(f, path: str):
    """(line number, line) of a log; a truncated or corrupt compressed file is a LogError."""
    n = 0
    it = iter(f)
    while True:
        try:
            line = next(it)
        except StopIteration:
            return
        except (EOFError, OSError, zlib.error) as e:
            raise LogError(f"{path}: the file is truncated or corrupt after line {n:,} ({e}). Check it with "
                           "gzip -t; `zcat FILE 2>/dev/null > part.jsonl` keeps the readable part") from None
        n += 1
        yield n, line
