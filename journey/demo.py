"""``journey demo``: the whole live path on one machine, in accelerated time.

An embedded broker (unless ``--broker``), the topics, one worker (a child
process running ``journey worker``), and a feeder that publishes a synthetic
population (visitors who abandon carts, loyal repeat buyers, customers with
support trouble, promoters, detractors) with event times running
``--speed`` times faster than the wall clock. Triggers and held-back
triggers are printed as they appear on ``journey.triggers`` and
``journey.audit``. The example rule file runs experiments (holdouts on two rules):
the outcomes the worker writes to ``journey.outcomes`` are tallied as they come,
and the demo ends, at the end of the population or on Ctrl-C, with the experiment
report: the measured effect of each arm by relationship stage. Ctrl-C stops the
feeder, the worker and the broker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time

import orjson

from .core.uplift import Tally
from .examples import JOURNEYS
from .history.synth import generate
from .io import topics
from .io.kafka import bootstrap, ensure_topics
from .live.broker import EmbeddedBroker, free_port, spawn_worker

BOLD, DIM, RED, GREEN, YELLOW, RESET = "\033[1m", "\033[2m", "\033[31m", "\033[32m", "\033[33m", "\033[0m"


def _paint(enabled: bool):
    def paint(code: str, text: str) -> str:
        return f"{code}{text}{RESET}" if enabled else text
    return paint


def run_demo(a) -> int:
    workdir = tempfile.mkdtemp(prefix="journey-demo-")
    broker = None
    worker = None
    paint = _paint(sys.stdout.isatty())
    tally = Tally()
    try:
        if a.broker:
            url = a.broker
        else:
            print(paint(DIM, "starting the embedded broker (Tansu) ..."), flush=True)
            broker = EmbeddedBroker(log_path=os.path.join(workdir, "broker.log")).start()
            url = broker.url
        asyncio.run(ensure_topics(url))
        port = free_port()
        worker = spawn_worker(url, web_port=port, store="memory://", rules=a.rules or str(JOURNEYS),
                              log_path=os.path.join(workdir, "worker.log"))
        print(paint(DIM, f"broker {url} · worker health http://127.0.0.1:{port}/ready · logs in {workdir}"))
        print(paint(DIM, f"feeding {a.customers} customers, {a.speed:,.0f}x real time; Ctrl-C to stop"), flush=True)
        counts = asyncio.run(_run(url, a, paint, worker, tally))
        _summary(counts, paint)
        _report(tally, paint)
        return 0
    except KeyboardInterrupt:
        print(paint(DIM, "\nstopping ..."), file=sys.stderr)
        _report(tally, paint)
        return 0
    except RuntimeError as e:
        print(f"journey demo: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
        if worker is not None and worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(20)
            except Exception:
                worker.kill()
                worker.wait(5)
        if broker is not None:
            broker.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)


async def _run(url: str, a, paint, worker, tally: Tally) -> dict:
    counts = {"events": 0, "triggers": 0, "held back": 0}
    stop = asyncio.Event()
    feeder = asyncio.create_task(_feed(url, a, counts, stop))
    printer = asyncio.create_task(_print(url, paint, counts, stop, tally))
    started = time.monotonic()
    try:
        while not stop.is_set():
            await asyncio.sleep(0.5)
            if worker.poll() is not None:
                raise RuntimeError(f"the worker stopped (exit code {worker.returncode}); see its log")
            if a.duration and time.monotonic() - started > a.duration:
                break
            if feeder.done() and time.monotonic() - counts.get("fed_at", started) > 15:
                break  # everything fed and shown
    finally:
        stop.set()
        for t in (feeder, printer):
            t.cancel()
        await asyncio.gather(feeder, printer, return_exceptions=True)
    return counts


async def _feed(url: str, a, counts: dict, stop: asyncio.Event) -> None:
    from aiokafka import AIOKafkaProducer

    # the population's half year ends about now: events stamped ahead of the clock would be
    # dead-lettered as future_time (the worker trusts no clock ahead of its own)
    start = int(time.time() * 1000) - 200 * 86_400_000
    items = sorted(generate(a.customers, a.customers * 30, a.seed, start), key=lambda x: x[0])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap(url), linger_ms=5)
    await producer.start()
    t0 = time.monotonic()
    try:
        for ts, stream, rec in items:
            if stop.is_set():
                break
            due = (ts - start) / 1000.0 / a.speed
            wait = due - (time.monotonic() - t0)
            if wait > 0.005:
                await asyncio.sleep(wait)
            key = rec.get("customer_id") or rec.get("userId") or rec.get("anonymousId")
            await producer.send(stream, orjson.dumps(rec), key=key.encode() if key else None, timestamp_ms=ts)
            counts["events"] += 1
        counts["fed_at"] = time.monotonic()
    finally:
        await producer.stop()


async def _print(url: str, paint, counts: dict, stop: asyncio.Event, tally: Tally) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topics.TRIGGERS, topics.AUDIT, topics.OUTCOMES, bootstrap_servers=bootstrap(url),
                                group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500)
            for tp, recs in batch.items():
                for r in recs:
                    rec = orjson.loads(r.value)
                    if tp.topic == topics.OUTCOMES:
                        tally.add(rec)
                    elif tp.topic == topics.TRIGGERS:
                        counts["triggers"] += 1
                        print(_trigger_line(rec, paint), flush=True)
                    else:
                        counts["held back"] += 1
                        print(_audit_line(rec, paint), flush=True)
    finally:
        await consumer.stop()


def _trigger_line(ce: dict, paint) -> str:
    d = ce["data"]
    colour = RED if d["kind"] == "recovery" else GREEN
    rel = d.get("relationship") or {}
    return (f"{ce['time'][:16].replace('T', ' ')}  {paint(colour, d['kind']):<20} "
            f"{paint(BOLD, d['rule']):<28} {d['customer_id']:<14} {d['channel']:<6} "
            f"{d['reason']}  {paint(DIM, '[' + str(rel.get('stage')) + ', health ' + str(rel.get('health')) + ']')}")


def _audit_line(a: dict, paint) -> str:
    what = "deferred" if a.get("deferred_until") else "held back"
    return paint(YELLOW, f"{a['time'][:16].replace('T', ' ')}  {what:<11} {a['rule']:<19} {a['customer_id']:<14} "
                         f"{a['reason']}: {a.get('detail', '')}")


def _summary(counts: dict, paint) -> None:
    print(paint(BOLD, f"\n{counts['events']:,} events fed · {counts['triggers']:,} triggers · "
                      f"{counts['held back']:,} held back or deferred"))



def _report(tally: Tally, paint) -> None:
    from .history.report import format_report

    if not tally.cells:
        print(paint(DIM, "no experiment outcomes yet: an exposure closes when its goal window (3 to 7 days of "
                         "event time) has passed; let the demo run longer"))
        return
    print(paint(BOLD, "\nexperiments: the measured effect of each arm, by relationship stage "
                      "(journey experiments report)"))
    print(format_report(tally.rows(), "stage", tally.bad))
