"""Helpers for the tests against a real broker (Tansu, started per test)."""

from __future__ import annotations

import asyncio
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter

import orjson

from journey.core.config import Config
from journey.core.state import CustomerState
from journey.core.timeutil import parse_time
from journey.history.replay import replay
from journey.history.synth import write_log
from journey.io import topics
from journey.io.kafka import bootstrap
from journey.live.broker import free_port, spawn_worker
from journey.live.produce import produce

UNTIL = "2027-01-01T00:00:00Z"   # after every synthetic event


def replayed(tmp_path, log, until=UNTIL, keep=None, config=None):
    out, audit, dl = tmp_path / "r.jsonl", tmp_path / "ra.jsonl", tmp_path / "rd.jsonl"
    replay([log], str(out), str(audit), str(dl), until=parse_time(until), config=config or Config(),
           keep_engine=keep)
    rd = lambda p: [orjson.loads(x) for x in p.read_bytes().splitlines()]
    return rd(out), rd(audit), rd(dl)


def synthetic(tmp_path, customers=300, events=6000, seed=7):
    path = tmp_path / "log.jsonl"
    write_log(str(path), customers=customers, events=events, seed=seed)
    return path


def produce_log(broker: str, path, until: int | None = None, rate: float | None = None) -> dict:
    return asyncio.run(produce([path], broker, until=until, rate=rate))


def read_topic(broker: str, topic: str, idle_ms: int = 800, timeout: float = 60, **security) -> list:
    """Every record of a topic, read to its end: (key, value, partition, offset, headers). A broker
    that does not get it there within ``timeout`` seconds fails the test rather than hanging it.
    ``security``: aiokafka's security options (a secured broker)."""
    from aiokafka import AIOKafkaConsumer

    async def go():
        c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap(broker), auto_offset_reset="earliest",
                             group_id=None, enable_auto_commit=False, request_timeout_ms=10_000, **security)
        deadline = time.monotonic() + timeout
        await asyncio.wait_for(c.start(), timeout)
        out = []
        try:
            while True:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{topic} not read to its end within {timeout:.0f} s "
                                         f"({len(out)} records so far)")
                batch = await c.getmany(timeout_ms=idle_ms)
                if not batch:
                    # done when every partition's position reached the fetch high watermark
                    done = True
                    for tp in c.assignment():
                        hw = c.highwater(tp)
                        done = done and hw is not None and await c.position(tp) >= hw
                    if done:
                        break
                    continue
                for tp, recs in batch.items():
                    out += [(r.key, r.value, tp.partition, r.offset, r.headers) for r in recs]
        finally:
            await c.stop()
        return out

    return asyncio.run(go())


class TopicWatch:
    """A consumer of one topic kept open in a thread of its own, from the first record on, for
    watching progress cheaply (and, through the wire proxy, on a connection no fault touches)."""

    def __init__(self, broker: str, topic: str):
        import threading

        self.broker, self.topic = broker, topic
        self.records: list = []          # (key, value, partition, offset)
        self.polls = 0                   # fetch rounds completed
        self.error: BaseException | None = None
        self._stop = False
        self._lock = threading.Lock()
        self._started = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name=f"watch-{topic}", daemon=True)
        self._thread.start()
        if not self._started.wait(30):
            raise AssertionError(f"could not start watching {topic}")
        if self.error is not None:
            raise AssertionError(f"could not start watching {topic}: {self.error!r}")

    async def _run(self):
        from aiokafka import AIOKafkaConsumer

        c = AIOKafkaConsumer(self.topic, bootstrap_servers=bootstrap(self.broker), auto_offset_reset="earliest",
                             group_id=None, enable_auto_commit=False, fetch_max_wait_ms=100)
        try:
            await c.start()
        except BaseException as e:  # noqa: BLE001 - reported by __init__
            self.error = e
            self._started.set()
            return
        self._started.set()
        try:
            while not self._stop:
                batch = await c.getmany(timeout_ms=100)
                with self._lock:
                    for tp, recs in batch.items():
                        self.records += [(r.key, r.value, tp.partition, r.offset) for r in recs]
                    self.polls += 1
        except BaseException as e:  # noqa: BLE001 - seen by the test as a stale count, and in its text
            self.error = e
        finally:
            await c.stop()

    def values(self, fresh: bool = False, timeout: float = 10) -> list[bytes]:
        """The values read so far; ``fresh``: after a fetch round that began after this call."""
        if fresh:
            n = self.polls + 2
            deadline = time.monotonic() + timeout
            while self.polls < n and time.monotonic() < deadline and self.error is None:
                time.sleep(0.02)
        with self._lock:
            return [v for _k, v, *_ in self.records]

    def ids(self, fresh: bool = False) -> set[str]:
        return {orjson.loads(v)["id"] for v in self.values(fresh)}

    def stop(self) -> None:
        self._stop = True
        self._thread.join(10)


def spawn_produce(broker: str, path, log_path, until: str | None = UNTIL, chunk: int | None = None):
    """``journey produce`` as a child process (dies with its parent), its output in ``log_path``;
    ``chunk``: records between two markers of the held publication (the command's own 10,000
    otherwise), through the same entry point with the constant changed."""
    import sys

    from journey.live.broker import die_with_parent

    args = [str(path), "--broker", broker, "-q", *(["--until", until] if until else [])]
    if chunk is None:
        cmd = [sys.executable, "-m", "journey", "produce", *args]
    else:
        code = ("import sys, journey.live.produce as p; p.produce.__defaults__ = tuple("
                f"{chunk} if d == p.CHUNK else d for d in p.produce.__defaults__); "
                "from journey.cli import main; sys.exit(main(['produce', *sys.argv[1:]]))")
        cmd = [sys.executable, "-c", code, *args]
    return subprocess.Popen(cmd, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            preexec_fn=die_with_parent)


def trigger_ids(broker: str, idle_ms: int = 800) -> list[str]:
    return [orjson.loads(v)["id"] for _k, v, *_ in read_topic(broker, topics.TRIGGERS, idle_ms)]


def wait_for(predicate, timeout: float, what: str, every: float = 1.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def ready(port: int) -> dict | None:
    """The worker's ``/ready`` body (also when it answers 503), or None if it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
            return orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            return orjson.loads(e.read())
        except Exception:
            return None
    except Exception:
        return None


def stop_process(proc, timeout: float = 30) -> int:
    """SIGTERM a child process, SIGKILL it if it has not exited within ``timeout``; its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


class Worker:
    """A ``journey worker`` child process."""

    def __init__(self, broker: str, tmp_path, name: str = "w", idle: str = "1h", **kw):
        # a long idle time by default: the wall clock must not move event time in a parity test
        self.port = free_port()
        self.log = tmp_path / f"{name}.log"
        self.proc = spawn_worker(broker, web_port=self.port, log_path=str(self.log), args=("--idle", idle, "--loglevel", "info"), **kw)

    def wait_ready(self, timeout: float = 60) -> dict:
        def ok():
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            r = ready(self.port)
            return r if r and r.get("ready") else None
        return wait_for(ok, timeout, "the worker to be ready", every=0.3)

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> int:
        return stop_process(self.proc)


def assert_trigger_ids(broker: str, want: set, timeout: float = 120) -> None:
    """Every trigger id in ``want`` reaches journey.triggers, and then no other (a second read
    after a pause, so a late extra one is seen too)."""
    wait_for(lambda: set(trigger_ids(broker, idle_ms=200)) >= want, timeout, "every trigger")
    time.sleep(1.5)
    assert sorted(trigger_ids(broker)) == sorted(want)


# -- live against replay -----------------------------------------------------------------------------

def _changelog_states(broker) -> dict[str, CustomerState]:
    latest = {}
    for key, value, *_ in read_topic(broker, topics.changelog()):
        latest[key.decode()] = value
    return {k: CustomerState.from_bytes(v) for k, v in latest.items() if v is not None and not k.startswith("\x00")}


def _comparable(st: CustomerState) -> bytes:
    st.heap_due = None
    return st.to_bytes()


def _debug_state_diff(a: bytes, b: bytes) -> str:
    da, db = orjson.loads(a), orjson.loads(b)
    return "; ".join(f"{k}: {da.get(k)!r} != {db.get(k)!r}" for k in sorted(set(da) | set(db)) if da.get(k) != db.get(k)) or f"bytes {a!r} != {b!r}"


def _dump_divergence(broker, tmp_path, want_t, engine, seed) -> str:
    """On a divergence: every missing and extra trigger, with its customer, rule, time and
    partition, and the changelog state of each customer concerned next to replay's, written
    to ``divergence.json`` beside the workers' logs (the file named in the failure)."""
    from journey.io.kafka import Partitioner

    part = Partitioner(6)
    want = {t["id"]: t for t in want_t}
    got = {}
    for _k, v, p, off, _h in read_topic(broker, topics.TRIGGERS):
        t = orjson.loads(v)
        got.setdefault(t["id"], (t, p, off))
    row = lambda t: {"id": t["id"], "subject": t["subject"], "rule": t["data"]["rule"], "time": t["time"],
                     "partition": part(t["subject"]), "reason": t["data"].get("reason")}
    missing = [row(t) for i, t in want.items() if i not in got]
    extra = [{**row(t), "offset": off} for i, (t, _p, off) in got.items() if i not in want]
    who = {r["subject"] for r in missing + extra}
    states = _changelog_states(broker)
    out = {"seed": seed, "missing": missing, "extra": extra,
           "states": {k: {"live": orjson.loads(_comparable(states[k])) if k in states else None,
                          "replay": orjson.loads(_comparable(engine.states[k])) if k in engine.states else None}
                      for k in sorted(who)[:40]}}
    path = tmp_path / "divergence.json"
    path.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
    return str(path)


def _same_as_replay(broker, want_t, engine, seed, timeout=150, tmp_path=None):
    want = {t["id"] for t in want_t}
    try:
        wait_for(lambda: set(trigger_ids(broker, idle_ms=200)) >= want, timeout, f"every trigger (seed {seed})")
    except AssertionError as e:
        got = set(trigger_ids(broker))
        lost = [t for t in want_t if t["id"] not in got]
        where = _dump_divergence(broker, tmp_path, want_t, engine, seed) if tmp_path is not None else ""
        raise AssertionError(f"{e}: {len(lost)} of {len(want)} missing, {len(got - want)} extra; first missing: "
                             f"{[(t['subject'], t['data']['rule'], t['time']) for t in lost[:5]]} {where}") from None
    time.sleep(1.5)
    records = [orjson.loads(v) for _k, v, *_ in read_topic(broker, topics.TRIGGERS)]
    got = [t["id"] for t in records]
    missing, extra = want - set(got), set(got) - want
    if (missing or extra) and tmp_path is not None:
        _dump_divergence(broker, tmp_path, want_t, engine, seed)
    assert not missing and not extra, f"seed {seed}: {len(missing)} trigger(s) lost, {len(extra)} invented"
    # the very same CloudEvents, a copy (at least once) included
    by_id = {t["id"]: t for t in want_t}
    differ = [(t, by_id[t["id"]]) for t in records if t != by_id[t["id"]]]
    assert not differ, f"seed {seed}: {len(differ)} trigger record(s) differ from replay's, first (live, replay): {differ[0]}"
    expected = {k: _comparable(s) for k, s in engine.states.items()}

    def states_equal():
        states = _changelog_states(broker)
        return set(states) == set(expected) and all(_comparable(s) == expected[k] for k, s in states.items())
    try:
        wait_for(states_equal, 30, "the changelog to settle", every=1.0)
    except AssertionError:
        states = _changelog_states(broker)
        diffs = {k: _debug_state_diff(_comparable(s), expected.get(k, b"{}")) for k, s in states.items()
                 if _comparable(s) != expected.get(k)}
        raise AssertionError(f"seed {seed}: {len(diffs)} state(s) differ from replay, "
                             f"{len(set(expected) - set(states))} missing: {list(diffs.items())[:3]}") from None


def multiset(records) -> Counter:
    """Whole records (dicts) as a multiset, key order aside: a duplicate or a changed field shows."""
    return Counter(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in records)
