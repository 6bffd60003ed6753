"""Faults on the wire (issue 24, item 3): the worker, ``journey produce`` and ``journey
dispatch`` reach the broker through a TCP proxy (tests/wire_proxy.py) that resets every
connection, stalls all traffic, or refuses new connections, while they work. Then the
triggers are replay's (whole records), the changelog states are replay's, and every
trigger reaches the webhook receiver.

The fault lands on progress: when a random share (10% to 90%) of replay's triggers is on
the topic (or delivered); the test checks that it did land mid-stream. A worker or a
producer that exits over a fault must say why; it is then started again (as an operator
would) and nothing may be lost or invented. Seeds are printed in failures and can be
fixed with JOURNEY_WIRE_SEED=N; JOURNEY_WIRE_RUNS=N repeats each test; JOURNEY_WIRE_STALL
and JOURNEY_WIRE_REFUSE set the fault lengths in seconds (12 and 30). The proxy passes
JOURNEY_WIRE_RATE bytes per second (2e6): a slow link, so that the work takes seconds and a
fault lands in the middle of it. The dispatcher's test runs with a stall only, unless
JOURNEY_WIRE_DISPATCH=reset,stall,refuse (or all)."""

from __future__ import annotations

import os
import random
import time

import pytest
from live_support import (
    TopicWatch as Watch,
)
from live_support import (
    Worker,
    _same_as_replay,
    read_topic,
    replayed,
    spawn_produce,
    stop_process,
    synthetic,
    wait_for,
)

from journey.core.timeutil import parse_time
from journey.io import topics

RUNS = int(os.environ.get("JOURNEY_WIRE_RUNS", "1"))
STALL = float(os.environ.get("JOURNEY_WIRE_STALL", "12"))     # longer than a session timeout (10 s)
REFUSE = float(os.environ.get("JOURNEY_WIRE_REFUSE", "30"))
# the dispatcher's test runs with these faults (comma-separated; "all": the three): one in CI, for time
DISPATCH_FAULTS = os.environ.get("JOURNEY_WIRE_DISPATCH", "stall").split(",")
# the worker's faults run by default (CI): a reset and a refusal; the stall runs with the dispatcher
# (JOURNEY_WIRE_FAULTS=all runs the three, as the loops counted in the issue notes did)
WORKER_FAULTS = os.environ.get("JOURNEY_WIRE_FAULTS", "reset,refuse").split(",")
DEADLINE = 240    # seconds from the fault to every trigger, whatever happens
RATE = float(os.environ.get("JOURNEY_WIRE_RATE", "2e6"))  # bytes/s through the proxy: about 8 s of work
CHUNK = 1000      # records between two markers of the publication: triggers come out in 30 steps, not 3


def _seed() -> int:
    return int(os.environ.get("JOURNEY_WIRE_SEED") or random.SystemRandom().randrange(1 << 30))


class Run:
    """Workers and producers of one test, restarted when a fault made them exit (each exit
    must be explained in its log)."""

    def __init__(self, wire, tmp_path, log, seed):
        self.wire, self.tmp_path, self.log, self.seed = wire, tmp_path, log, seed
        self.workers: list[Worker] = []
        self.producers: list = []
        self.exits: list[str] = []      # what each exit said

    def worker(self) -> Worker:
        w = Worker(self.wire.url, self.tmp_path, name=f"w{len(self.workers)}")
        self.workers.append(w)
        return w

    def produce(self):
        n = len(self.producers)
        p = spawn_produce(self.wire.url, self.log, self.tmp_path / f"produce{n}.log", chunk=CHUNK)
        p.log = self.tmp_path / f"produce{n}.log"
        self.producers.append(p)
        return p

    def _explained(self, what, log_path, code) -> None:
        text = log_path.read_text(errors="replace")
        said = [ln for ln in text.splitlines() if "CRITICAL" in ln or "ERROR" in ln or ln.startswith("journey ")]
        assert said, f"seed {self.seed}: {what} exited ({code}) without saying why:\n{text[-3000:]}"
        self.exits.append(f"{what} exited ({code}): {said[-1][:300]}")
        print(self.exits[-1])

    def check(self) -> None:
        """Restart a worker or a producer that exited over the fault."""
        w = self.workers[-1]
        if w.proc.poll() is not None:
            self._explained(w.log.name, w.log, w.proc.returncode)
            self.worker()
        p = self.producers[-1]
        if p.poll() not in (None, 0):
            self._explained(p.log.name, p.log, p.returncode)
            self.produce()

    def produced(self) -> bool:
        return self.producers[-1].poll() == 0

    def stop(self) -> None:
        for p in self.producers:
            stop_process(p)
        for w in self.workers:
            w.stop()

    def logs(self) -> str:
        return " ".join(str(x.log) for x in self.workers + self.producers)


def _worker_through_a_fault(wire, tmp_path, seed, fault):
    """A worker and ``journey produce`` through the proxy; ``fault(wire, rnd)`` when a random
    share of replay's triggers is out; then triggers and states as replay's."""
    rnd = random.Random(seed)
    log = synthetic(tmp_path, customers=1500, events=30000, seed=rnd.randrange(1000))
    keep = []
    want_t, _a, _d = replayed(tmp_path, log, keep=keep)
    want = {t["id"] for t in want_t}
    # the fault comes once a random share of the triggers due before the log's last event is out
    # (those after come out at once, with the publication's final marker)
    target = rnd.uniform(0.1, 0.9) * _due_before_the_end(log, want_t)
    run = Run(wire, tmp_path, log, seed)
    wire.rate = RATE
    watch = None
    try:
        run.worker().wait_ready(90)
        watch = Watch(wire.url, topics.TRIGGERS)
        run.produce()
        wait_for(lambda: len(watch.ids() & want) >= target or run.check(), 120,
                 f"{target:.0f} of the triggers (seed {seed})", every=0.05)
        before = len(watch.ids() & want)
        at_fault = []
        fault(wire, rnd, lambda: at_fault.append(len(watch.ids(fresh=True) & want)))
        print(f"seed {seed}: fault at {before}..{at_fault[0]} of {len(want)} triggers; {wire.describe()}")
        assert 0 < before and at_fault[0] < len(want), f"seed {seed}: the fault must land mid-stream"

        def done():
            run.check()
            return run.produced() and watch.ids() >= want
        wait_for(done, DEADLINE, f"every trigger after the fault (seed {seed}; {wire.describe()}; logs {run.logs()})",
                 every=0.5)
        run.check()
        _same_as_replay(wire.url, want_t, keep[0], seed, timeout=60, tmp_path=tmp_path)
        print(f"seed {seed}: {wire.describe()}; exits: {run.exits or 'none'}")
        return run
    finally:
        if watch is not None:
            watch.stop()
        run.stop()


def _due_before_the_end(log, want_t) -> int:
    from journey.core import intake

    last = None
    with open(log, "rb") as f:
        for line in f:
            try:
                ts = intake.parse(line.rstrip(b"\n")).ts
            except intake.Rejected:
                continue
            last = ts if last is None else max(last, ts)
    return sum(1 for t in want_t if parse_time(t["time"]) < last)


# a fault: (proxy, random, measure); ``measure()`` is called as soon as the fault is on (the
# triggers then on the topic: it must be fewer than all)

def _reset(wire, rnd, measure):
    # every connection at once, and again while the clients reconnect and rejoin
    assert wire.reset() > 0
    measure()
    time.sleep(rnd.uniform(0.2, 3.0))
    wire.reset()


def _stall(wire, _rnd, measure):
    wire.stall(STALL)
    t = time.monotonic()
    measure()
    time.sleep(max(0.0, STALL - (time.monotonic() - t)))
    wire.wait_over()


def _refuse(wire, rnd, measure):
    # new connections refused; the open ones dropped at once or after a while (a broker gone),
    # or kept (a listener gone)
    drop_after = rnd.choice([0.0, rnd.uniform(1, REFUSE / 2), None])
    wire.refuse(REFUSE, drop_after=drop_after)
    t = time.monotonic()
    measure()
    time.sleep(max(0.0, REFUSE - (time.monotonic() - t)))
    wire.wait_over()


FAULTS = [_reset, _stall, _refuse]


@pytest.mark.parametrize("run", range(RUNS))
@pytest.mark.parametrize("fault", [f for f in FAULTS if f.__name__[1:] in WORKER_FAULTS or "all" in WORKER_FAULTS],
                         ids=lambda f: f.__name__[1:])
def test_worker_and_producer_through_a_fault_on_the_wire(wire, tmp_path, fault, run):
    _worker_through_a_fault(wire, tmp_path, _seed(), fault)


# -- the dispatcher ------------------------------------------------------------------------------------------

def _dispatch_through_a_fault(wire, tmp_path, seed, fault, n=800):
    """``journey dispatch`` reads journey.triggers and writes its delivered records and commits
    through the proxy; the receiver is reached directly. The fault comes once a random share
    of the triggers is delivered. Then every trigger is delivered, signed, with its id as
    webhook-id; a repeat (same webhook-id: the receiver's idempotency key) only for a delivery
    the dispatcher could not record (at most ``concurrency`` at a time), nothing dead-lettered,
    and the offsets committed to the end."""
    from dispatch_support import SECRET, Dispatch, Receiver, _committed_all, _endpoint, _produce, _trigger
    from standardwebhooks import Webhook

    rnd = random.Random(seed)
    concurrency = 4
    triggers = [_trigger(f"w-{i:04d}", cid=f"c{i}") for i in range(n)]
    want = {t["id"] for t in triggers}
    _produce(wire.url, triggers)        # from the test process: not through a fault
    rx = Receiver(delay=0.02)
    config = _endpoint("hooks", rx.url("hooks"), concurrency=concurrency) + '[[routes]]\nendpoints = ["hooks"]\n'
    target = rnd.uniform(0.1, 0.9) * n
    ds = [Dispatch(wire.url, tmp_path, config, name="d0")]
    exits = []
    try:
        wait_for(lambda: len(set(rx.ids())) >= target or ds[0].proc.poll() is not None, 90,
                 f"{target:.0f} deliveries (seed {seed})", every=0.02)
        before = len(set(rx.ids()))
        at_fault = []
        fault(wire, rnd, lambda: at_fault.append(len(set(rx.ids()))))
        print(f"seed {seed}: fault at {before}..{at_fault[0]} of {n} deliveries; {wire.describe()}")
        assert 0 < before and at_fault[0] < n, f"seed {seed}: the fault must land mid-stream"

        def done():
            d = ds[-1]
            if d.proc.poll() is not None:
                text = d.log.read_text(errors="replace")
                said = [ln for ln in text.splitlines() if "CRITICAL" in ln or "ERROR" in ln]
                assert said, f"seed {seed}: the dispatcher exited ({d.proc.returncode}) without saying why"
                exits.append(said[-1][:300])
                ds.append(Dispatch(wire.url, tmp_path, config, name=f"d{len(ds)}"))
            return set(rx.ids()) >= want
        wait_for(done, DEADLINE, f"every trigger delivered (seed {seed}; {wire.describe()})", every=0.3)
        wait_for(lambda: _committed_all(wire.url, "journey-dispatch"), 60, f"offsets committed (seed {seed})")
        time.sleep(1.0)
        ids = rx.ids()
        assert set(ids) == want, f"seed {seed}: none lost, nothing else sent"
        by_id = {t["id"]: t for t in triggers}
        for r in rx.requests:
            assert Webhook(SECRET).verify(r["body"], r["headers"]) == by_id[r["id"]]   # webhook-id = trigger id
        repeats = len(ids) - len(set(ids))
        print(f"seed {seed}: {repeats} repeat(s); dispatcher exits: {exits or 'none'}")
        assert repeats <= concurrency * len(ds), f"seed {seed}: {repeats} repeats"
        assert not read_topic(wire.url, topics.TRIGGERS_DEADLETTER, idle_ms=300), f"seed {seed}: dead letters"
    finally:
        rx.stop()
        for d in ds:
            d.stop()


@pytest.mark.parametrize("run", range(RUNS))
@pytest.mark.parametrize("fault", [f for f in FAULTS if f.__name__[1:] in DISPATCH_FAULTS or "all" in DISPATCH_FAULTS],
                         ids=lambda f: f.__name__[1:])
def test_dispatcher_through_a_fault_on_the_wire(wire, tmp_path, fault, run):
    _dispatch_through_a_fault(wire, tmp_path, _seed(), fault)


def test_produce_says_how_far_it_got_when_the_broker_stops_answering(tmp_path, monkeypatch, capsys):
    # seen with a 60 s stall (JOURNEY_WIRE_STALL=60): aiokafka gives up after its 40 s request timeout;
    # the message used to ask whether a broker was listening at all
    from aiokafka.errors import RequestTimedOutError

    import journey.live.produce
    from journey.cli import main

    async def stalled(*_a, **_k):
        e = RequestTimedOutError()
        e.records_sent = 12345
        raise e
    monkeypatch.setattr(journey.live.produce, "produce", stalled)
    log = tmp_path / "log.jsonl"
    log.write_text("")
    assert main(["produce", str(log), "--broker", "kafka://127.0.0.1:9", "-q"]) == 1
    err = capsys.readouterr().err
    assert "after 12,345 records were sent" in err and "the same log again is safe" in err, err
    assert "Is a Kafka broker listening" not in err
