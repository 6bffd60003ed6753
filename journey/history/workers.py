"""``journey replay --workers N`` and ``journey backtest --workers N``: the same engine on N
processes, one shard of the customers each, with outputs byte-identical to one worker.

Sharding. A customer goes to ``partition_of(key, N)`` (Kafka's murmur2, as the live worker
places customer ids on partitions). Anonymous visitors are the exception that needs care:
an event with an anonymous id and a customer id links them, and the visitor's state
(``anon:<id>``) is absorbed into the customer's; ``customer.erased`` drops the customer's
aliases. Rather than replaying that alias timeline, the workers put whole *link
components* on one shard: every (anonymous id, customer id) pair seen on any event joins
the two in a union-find; a component's events all go to the partition of its smallest
customer id (so a visitor linked to one customer goes where that customer goes, as live),
and a visitor never linked goes to the partition of ``anon:<id>``. No state or alias in
the engine ever refers outside its component, so each shard's engine does, for its
customers, exactly what the single engine does: exact also where the alias timeline is
not (an erasure that the engine drops as a duplicate, links to erased customers).

Passes. Pass 1 (N processes, line ``seq`` to process ``seq % N``): the cheap routing key
of each line (``intake.routing_key``: one ``orjson.loads``, no validation) and the link
pairs; the lines go to bucket files by the key's partition (visitors' and unreadable
lines to a bucket of their own). The parent builds the components. Pass 2 (N processes):
each reads its bucket from every pass-1 process, the visitors' buckets and any bucket
holding a customer whose component moved to it, keeps the lines routed to it and parses
them with the same Reader (its rejected lines, its external sort in ``sort_buffer // N``
events; bucket order does not matter, the sort orders by time, id and line). It checks
``parse``'s ids against the routing (any disagreement: the run falls back to one
worker), waits for the others' last event time (the final watermark must be the global
one), and runs the engine on one timeline (``drive``), its outputs tagged with their
place in the single run:

* made while applying the event at (ts, id, line): ``(ts, 0, id, line, n)``;
* made by the timers of customer K due at D: ``(max(D, t), 1, D, K, n)`` where t is the
  last event time applied before (a timer set already due fires at the next fire point:
  after the events at t). ``drive`` fires timers due before an event's time first, in
  (due, customer) order, the customer's due timers together, and timers due at T after
  the events at T: the tags sort exactly as the single run emits.

The parent merges the shards' tagged files (each in tag order) with ``heapq.merge`` and
writes the final files; rejected lines come first in line order, as one worker writes
them while reading. Memory: each process holds its shard's states and sort buffer, the
parent only the link components.
"""

from __future__ import annotations

import gc
import heapq
import multiprocessing
import os
import pickle
import shutil
import signal
import tempfile
import time
from collections import Counter
from multiprocessing.connection import wait as wait_any

import orjson

from ..core import privacy
from ..core.engine import Engine, Stats
from ..core.intake import routing_key
from ..core.timeline import drive
from ..io.logs import ExternalSort, Reader

_BATCH = 4096
NO_TS = -(1 << 62)


def default_workers() -> int:
    return os.cpu_count() or 1


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's ``Utils.murmur2``), here so that replay needs no
    Kafka client; ``io.kafka.partition_of`` (aiokafka's) gives the same partitions."""
    m, length = 0x5BD1E995, len(data)
    h = 0x9747B28C ^ length
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    rest = length % 4
    base = length & ~3
    if rest >= 3:
        h ^= data[base + 2] << 16
    if rest >= 2:
        h ^= data[base + 1] << 8
    if rest >= 1:
        h ^= data[base]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_of(key: str, partitions: int) -> int:
    """The live worker's partition of a key (Kafka's default partitioner)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


class Mismatch(Exception):
    """The pre-filter's ids and the parser's disagree on a record: fall back to one worker."""


class _Tagged:
    """One tagged output stream of a shard: (tag, line bytes) in pickled batches."""

    def __init__(self, path: str):
        self.f = open(path, "wb", buffering=1 << 20)
        self.buf: list = []

    def add(self, tag, rec: dict) -> None:
        self.buf.append((tag, orjson.dumps(rec)))
        if len(self.buf) >= _BATCH:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            pickle.dump(self.buf, self.f, protocol=pickle.HIGHEST_PROTOCOL)
            self.buf = []

    def close(self) -> None:
        self.flush()
        self.f.close()


def _read_tagged(path: str):
    with open(path, "rb") as f:
        while True:
            try:
                batch = pickle.load(f)
            except EOFError:
                return
            yield from batch


class _Unit:
    """Knows the unit of the single run that the engine is in (an event, or a customer's
    timers at one due time) and numbers the outputs within it."""

    def __init__(self):
        self.tag = None
        self.n = 0
        self.last = NO_TS

    def next(self):
        self.n += 1
        return self.tag + (self.n,)


class TagSink:
    def __init__(self, unit: _Unit, streams: dict):
        self.unit = unit
        self.streams = streams
        self.trigger = self.audit = self.transition = _ignore
        for kind, s in streams.items():
            setattr(self, kind, self._writer(s))  # outcome only when asked for (the engine looks)
        self.wants_transitions = "transition" in streams

    def _writer(self, stream):
        unit = self.unit

        def write(rec):
            stream.add(unit.next(), rec)
        return write


def tag_engine(engine: Engine, unit: _Unit) -> None:
    """Make ``engine`` set ``unit.tag`` for each customer's timers (the events: ``TaggedDrive``)."""
    run = engine._run_timers

    def run_timers(st, due):
        last = unit.last
        unit.tag = (due if due > last else last, 1, due, engine.key)
        run(st, due)
    engine._run_timers = run_timers


class TaggedDrive:
    """What ``drive`` drives: the engine(s), with the unit of each event set first."""

    def __init__(self, target, unit: _Unit, reader: Reader, heap):
        self.target, self.unit, self.reader, self.heap = target, unit, reader, heap
        self.fire_due = target.fire_due

    def apply(self, ev):
        u = self.unit
        u.tag = (ev.ts, 0, ev.id, self.reader.current)
        u.last = ev.ts
        self.target.apply(ev)


# -- components -------------------------------------------------------------------------
def components(pairs) -> dict:
    """state key -> the key its component is routed by (only keys routed by another)."""
    parent: dict[str, str] = {}

    def find(x):
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:
            parent[x], x = root, parent[x]
        return root

    for anon, cid in pairs:
        a, b = find("anon:" + anon), find(cid)
        if a != b:
            parent[max(a, b)] = min(a, b)
    groups: dict[str, list] = {}
    for k in list(parent):
        groups.setdefault(find(k), []).append(k)
    rep = {}
    for root, members in groups.items():
        members.append(root)
        customers = [m for m in members if not m.startswith("anon:")]
        r = min(customers) if customers else min(members)
        for m in members:
            if m != r:
                rep[m] = r
    return rep


class Router:
    def __init__(self, rep: dict, n: int):
        self.rep, self.n, self.memo = rep, n, {}

    def __call__(self, key: str) -> int:
        p = self.memo.get(key)
        if p is None:
            if len(self.memo) > 1 << 20:
                self.memo.clear()
            p = self.memo[key] = partition_of(self.rep.get(key, key), self.n)
        return p


# -- the processes ----------------------------------------------------------------------
def _pass1(i: int, n: int, paths, d: str, shared) -> dict:
    """Lines seq % n == i: their routing key, the link pairs they carry, and the lines
    themselves, as (seq, key, line) in bucket files by the key's partition (n: visitors'
    and unreadable lines, whose shard the links decide)."""
    c0 = time.process_time()
    pairs = set()
    part = Router({}, n)
    outs = [_Tagged(os.path.join(d, f"b{i}.{b}")) for b in range(n + 1)]
    bufs = [o.buf for o in outs]
    reader = Reader(paths)
    reader.progress = _SharedProgress(shared, i)
    for seq, line in reader._numbered():
        if seq % n != i:
            continue
        line = line.rstrip(b"\r\n")
        if not line or line.isspace():  # blank (isspace: no copy, the same whitespace as strip)
            continue  # not a line (Reader skips it uncounted)
        ids = routing_key(line)
        if ids is None:
            key, b = None, n
        else:
            cid, anon = ids
            if cid is None:
                key, b = "anon:" + anon, n
            else:
                key, b = cid, part(cid)
                if anon is not None:
                    pairs.add((anon, cid))
        buf = bufs[b]
        buf.append((seq, key, line))
        if len(buf) >= _BATCH:
            outs[b].flush()
            bufs[b] = outs[b].buf
    for o in outs:
        o.close()
    return {"pairs": pairs, "starts": reader.starts, "cpu": time.process_time() - c0}


class _ShardReader(Reader):
    """The Reader of one shard: the lines routed to it, from the bucket files of pass 1 (in
    line order); checks the routing against the parser."""

    def setup(self, j: int, n: int, route: Router, d: str, starts, buckets):
        self.shard, self.route, self.max_ts = j, route, None
        self.n = n
        self.sources = [(b, _read_tagged(os.path.join(d, f"b{i}.{b}"))) for i in range(n) for b in buckets]
        self.starts = list(starts)

    def _numbered(self):
        """The lines routed here, bucket after bucket: their order does not matter (the sort
        orders by time, id and line; dead letters are tagged with their line)."""
        route, j, n, rep = self.route, self.shard, self.n, self.route.rep
        shared, slot = self.progress.shared, self.progress.slot
        k = 0
        for b, source in self.sources:
            for seq, key, line in source:
                k += 1
                if not k & 4095:
                    shared[slot] = k
                if b == j:  # this shard's customers, but for those moved to another's component
                    if key not in rep or route(key) == j:
                        yield seq, line
                elif b == n:  # visitors and unreadable lines
                    if (route(key) if key is not None else 0) == j:
                        yield seq, line
                elif key in rep and route(key) == j:  # customers moved here with their component
                    yield seq, line
        shared[slot] = k

    def locate(self, seq: int) -> tuple[str, int]:
        self.locate_seq = seq  # the dead letter of a rejected line is tagged with it
        return super().locate(seq)

    def _parsed(self):
        route, j = self.route, self.shard
        for item in super()._parsed():
            ev = item[3]
            cid, anon = ev.cid, ev.anon
            key = cid if cid is not None else "anon:" + anon
            if route(key) != j or (cid is not None and anon is not None
                                   and route.rep.get("anon:" + anon, "anon:" + anon) != route.rep.get(cid, cid)):
                raise Mismatch(f"line {item[2]}")
            if self.max_ts is None or ev.ts > self.max_ts:
                self.max_ts = ev.ts
            yield item


def _pass2(j: int, n: int, job: dict, route: Router, d: str, shared, barrier, starts, buckets) -> dict:
    c0 = time.process_time()
    cfg_list = job["configs"]
    reader = _ShardReader(job["paths"], None, job["max_bytes"], None, max(1, job["sort_buffer"] // n),
                          job["future_limit"], job["keep"])
    reader.progress = _SharedProgress(shared, j)
    reader.setup(j, n, route, d, starts, buckets)
    kinds = job["kinds"]
    unit = _Unit()
    streams = {k: _Tagged(os.path.join(d, f"{k}{j}")) for k in kinds}
    rejects = None
    if "deadletter" in streams:
        rejects = _Tagged(os.path.join(d, f"rejects{j}.unsorted"))
        reader.deadletter = lambda rec: rejects.add((reader.locate_seq,), rec)
    engines = []
    erased = job.get("erased")
    if erased:  # replay --erased: the same ids dropped from the start in every shard (each has its own)
        salt = cfg_list[0].privacy.erasure_salt
        reader.erased = privacy.line_filter(salt, privacy.digests(salt, erased))
    for c, cfg in enumerate(cfg_list):
        sub = {k.split(".", 1)[1]: s for k, s in streams.items() if k.startswith(f"{c}.")}
        eng = Engine(cfg, TagSink(unit, sub))
        if erased:
            eng.erased.update(privacy.digests(cfg.privacy.erasure_salt, erased))
        tag_engine(eng, unit)
        eng.on_timer_error = _ignore
        engines.append(eng)
    target = job["target"](engines)
    events = reader.events()
    first = next(events, None)  # reading and sorting happen here
    c1 = time.process_time()
    shared[n + j] = reader.max_ts if reader.max_ts is not None else NO_TS
    barrier.wait()
    last = max(shared[n:2 * n])
    last = None if last == NO_TS else last
    until = job["until"]
    final = last if until is None or (last is not None and until < last) else until
    deadletter = streams.get("deadletter")
    processed = Counting(_chain(first, events), shared, 2 * n + j)
    on_error = None
    if job.get("on_error") is not None:
        def write(rec):
            if deadletter is not None:
                deadletter.add(unit.next(), rec)
        on_error = job["on_error"](reader, write)
    drive(TaggedDrive(target, unit, reader, getattr(target, "heap", None)), processed, final, on_error=on_error)
    for s in streams.values():
        s.close()
    if rejects is not None:  # read bucket after bucket: put them in line order
        rejects.close()
        out = _Tagged(os.path.join(d, f"rejects{j}"))
        sort = ExternalSort(reader.sort_buffer)
        for item in sort(_read_tagged(rejects.f.name)):
            out.buf.append(item)
            if len(out.buf) >= _BATCH:
                out.flush()
        out.close()
    return {"lines": reader.lines, "valid": reader.valid, "rejected": reader.rejected, "runs": reader.runs,
            "erased_rejects": reader.erased_rejects,
            "stats": [e.stats for e in engines], "customers": [e.customers() for e in engines],
            "failed": getattr(target, "failed", None), "watermark": final,
            "cpu": (c1 - c0, time.process_time() - c1)}


class _SharedProgress:
    def __init__(self, shared, slot):
        self.shared, self.slot = shared, slot

    def update(self, _label, done, _total=None, *_a, **_k):
        self.shared[self.slot] = int(done)

    def done(self):
        pass


class Counting:
    def __init__(self, it, shared, slot):
        self.it, self.shared, self.slot = it, shared, slot

    def __iter__(self):
        n = 0
        shared, slot = self.shared, self.slot
        for ev in self.it:
            n += 1
            if not n & 4095:
                shared[slot] = n
            yield ev
        shared[slot] = n


def _chain(first, rest):
    if first is None:
        return
    yield first
    yield from rest


def _ignore(*_a) -> None:
    pass


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _child(fn, args, result_path):
    # the parent forked with these signals blocked: set our own handlers first, then let a
    # pending one in (a SIGTERM during the fork must not run the parent's handler here)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us (Ctrl-C goes to the whole group)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    gc.disable()  # as replay: millions of long-lived objects, no cycles
    try:
        r = fn(*args)
        code = 0
    except BaseException as e:  # reported to the parent, which re-raises it
        r, code = e, 1
    try:
        with open(result_path, "wb") as f:
            pickle.dump(r, f, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:  # an exception that does not pickle
        with open(result_path, "wb") as f:
            pickle.dump(RuntimeError(f"{type(r).__name__}: {r}; {e}"), f)
        code = 1
    os._exit(code)


def _run_all(ctx, fn, argss, d, tag, on_tick=None) -> list:
    """Run fn(*args) for each args in a forked process; results in order; an error in any
    stops all and is raised here."""
    procs = []
    try:
        for k, args in enumerate(argss):
            p = ctx.Process(target=_child, args=(fn, args, os.path.join(d, f"{tag}{k}.result")), daemon=True)
            before = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
            try:
                p.start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, before)
            procs.append(p)
        pending = {p.sentinel: p for p in procs}
        while pending:
            for s in wait_any(list(pending), timeout=0.2):
                p = pending.pop(s)
                p.join()
                if p.exitcode != 0:
                    k = procs.index(p)
                    raise _result(os.path.join(d, f"{tag}{k}.result"), p.exitcode)
            if on_tick is not None:
                on_tick()
        return [_load(os.path.join(d, f"{tag}{k}.result")) for k in range(len(procs))]
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join()


def _load(path):
    with open(path, "rb") as f:
        return pickle.load(f)


def _result(path, code) -> BaseException:
    try:
        e = _load(path)
    except Exception:
        return RuntimeError(f"a replay worker died (exit code {code}); run again with --workers 1 to see why")
    return e if isinstance(e, BaseException) else RuntimeError(str(e))


def run_sharded(paths, n: int, job: dict, progress=None) -> list:
    """Passes 1 and 2 on n processes; returns the per-shard results and the temp dir
    (the caller merges, then removes it). Raises Mismatch for a fallback to one worker."""
    Reader(paths)  # the files exist (FileNotFoundError otherwise)
    ctx = multiprocessing.get_context("fork")
    d = tempfile.mkdtemp(prefix="journey-workers-")
    ok = False
    term = _on_sigterm()
    try:
        shared = ctx.Array("q", 3 * n, lock=False)
        total = sum(os.path.getsize(p) for p in paths) or 1

        def tick1():
            if progress is not None:
                progress.update("scanning", sum(shared[:n]) / n, total)

        r1 = _run_all(ctx, _pass1, [(i, n, list(paths), d, shared) for i in range(n)], d, "p1", tick1)
        cpu1 = [r["cpu"] for r in r1]
        pairs = set()
        for r in r1:
            pairs |= r["pairs"]
        rep = components(pairs)
        route = Router(rep, n)
        starts = r1[0]["starts"]
        # a worker reads its own bucket, the visitors' one, and any other holding a customer
        # whose component is routed to it
        buckets = [{j, n} for j in range(n)]
        plain = Router({}, n)
        for key in rep:
            if not key.startswith("anon:"):
                buckets[route(key)].add(plain(key))
        buckets = [sorted(b) for b in buckets]
        del pairs, r1
        if progress is not None:
            progress.done()
        barrier = ctx.Barrier(n)
        for k in range(3 * n):
            shared[k] = 0
        t1 = [time.perf_counter()]

        def tick2():
            if progress is None:
                return
            done = sum(shared[2 * n:3 * n])
            if done:
                el = time.perf_counter() - t1[0]
                progress.update("processing", done, None, "events", rate=done / el if el else None)
            else:
                t1[0] = time.perf_counter()
                progress.update("reading", sum(shared[:n]), None, "lines")

        results = _run_all(ctx, _pass2, [(j, n, job, route, d, shared, barrier, starts, buckets[j])
                                         for j in range(n)], d, "p2", tick2)
        if progress is not None:
            progress.done()
        for r, c in zip(results, cpu1):
            r["cpu"] = (c, *r["cpu"])  # seconds: pass 1, pass 2 reading, pass 2 processing
        ok = True
        return results, d
    finally:
        if term is not None:
            signal.signal(signal.SIGTERM, term)
        if not ok:
            shutil.rmtree(d, ignore_errors=True)


def _on_sigterm():
    """While workers run, SIGTERM stops the parent as Ctrl-C does (the workers are stopped,
    the temporary files removed). Returns the handler to put back (None off the main thread)."""
    def stop(_sig, _frame):
        raise KeyboardInterrupt
    try:
        return signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread
        return None


def merged(d: str, kind: str, n: int):
    """The lines of one output, in the single run's order."""
    for _tag, line in heapq.merge(*(_read_tagged(os.path.join(d, f"{kind}{j}")) for j in range(n)),
                                  key=_first):
        yield line


def _first(item):
    return item[0]


def merge_stats(results, c: int) -> Stats:
    s = Stats()
    for r in results:
        s.merge(r["stats"][c])
    return s


def sum_rejected(results) -> Counter:
    c = Counter()
    for r in results:
        c.update(r["rejected"])
    return c
