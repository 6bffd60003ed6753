"""Live throughput and latency of one worker process through the embedded broker.

    python benchmarks/live_bench.py [--customers N] [--events N] [--rate N] [--seconds S]
                                    [--skip-baselines] [--skip-latency]

Prints, measured in one run against one Tansu broker on loopback:
  * raw aiokafka getmany + orjson.loads over the source topics (the client's ceiling),
  * a Faust agent that does nothing per message (Faust's per-message ceiling),
  * a Faust agent that writes its table once per event (the naive stateful app),
  * Quix Streams 3 doing a per-customer state update with changelog (benchmarks/quix_app.py),
  * journey worker with the product as it ships: the built-in rules and the example journeys
    (multi-step ones and experiments included; batched hand-off, one table write per customer per
    checkpoint), on a log whose customers answer their messages (engagement events),
and trigger latency (produce -> trigger on journey.triggers, p50/p99) at a steady offered load,
with the default allowed lateness and with none; and how fast events get in: ``journey produce``
publishing the log, and the HTTP intake (Segment batches of 100 from 16 connections, each answered
once Kafka acknowledged it) on a broker of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from intake_bench import bodies_of, full_load_rate, start_intake, stop  # noqa: E402  (beside this file)

from journey.history.bench import EXAMPLE_RULES  # noqa: E402
from journey.history.synth import write_log  # noqa: E402
from journey.intake.segment import as_segment  # noqa: E402
from journey.io import topics  # noqa: E402
from journey.io.kafka import bootstrap  # noqa: E402
from journey.live.broker import EmbeddedBroker, die_with_parent, free_port, spawn_worker  # noqa: E402
from journey.live.produce import produce  # noqa: E402

FAUST_APP = textwrap.dedent('''
    import os, sys, time, faust
    mode, broker, n, port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    app = faust.App("bench-" + mode, broker=broker, store="memory://", topic_partitions=6, autodiscover=False,
                    key_serializer="raw", value_serializer="raw", web_port=port, web_bind="127.0.0.1",
                    web_host="127.0.0.1", consumer_auto_offset_reset="earliest", broker_session_timeout=10,
                    broker_rebalance_timeout=10, broker_heartbeat_interval=2)
    src = app.topic("journey.clickstream", "journey.purchases", "journey.support", key_type=bytes, value_type=bytes)
    table = app.Table("counts", default=int, partitions=6)
    seen = [0, 0.0]
    @app.agent(src)
    async def run(stream):
        async for key, value in stream.items():
            if mode == "table":
                table[key] += 1
            seen[0] += 1
            now = time.monotonic()
            if now - seen[1] >= 0.5 or seen[0] >= n:
                seen[1] = now
                os.write(1, f"PROGRESS {seen[0]} {now:.6f}\\n".encode())
    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()
''')


def ready(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
            return orjson.loads(r.read())
    except Exception:
        return None


async def raw_consume(url, n):
    from aiokafka import AIOKafkaConsumer
    c = AIOKafkaConsumer(*topics.SOURCES, bootstrap_servers=bootstrap(url), group_id=None,
                         auto_offset_reset="earliest", fetch_max_bytes=16 << 20, max_partition_fetch_bytes=8 << 20)
    await c.start()
    got, t0 = 0, None
    while got < n:
        b = await c.getmany(timeout_ms=1000, max_records=10000)
        if t0 is None and b:
            t0 = time.monotonic()
        for recs in b.values():
            for r in recs:
                orjson.loads(r.value)
            got += len(recs)
    await c.stop()
    return n / (time.monotonic() - t0)


def progress_rate(cmd, n, workdir, name, timeout=240.0):
    """Run a baseline that prints ``PROGRESS <count> <monotonic s>`` lines; its rate from its
    first progress line to its last (startup and recovery excluded). Stops at ``n`` events,
    or 15 s without progress."""
    log = open(Path(workdir) / f"{name}.log", "wb")
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, cwd=workdir, preexec_fn=die_with_parent)
    first = last = None
    try:
        deadline = time.monotonic() + timeout
        os.set_blocking(p.stdout.fileno(), False)
        buf, quiet_since = b"", time.monotonic()
        while time.monotonic() < deadline:
            chunk = p.stdout.read() or b""
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                parts = line.split()
                if len(parts) == 3 and parts[0] == b"PROGRESS":
                    point = (int(parts[1]), float(parts[2]))
                    first = first or point
                    last = point
                    quiet_since = time.monotonic()
            if last and last[0] >= n:
                break
            if p.poll() is not None and not chunk:
                break
            if first and time.monotonic() - quiet_since > 15:
                break
            time.sleep(0.05)
    finally:
        stop(p, 20)
        log.close()
    if not first or last[1] <= first[1]:
        return float("nan"), 0
    return (last[0] - first[0]) / (last[1] - first[1]), last[0]


def faust_baseline(url, mode, n, workdir):
    script = Path(workdir) / "faust_bench.py"
    script.write_text(FAUST_APP)
    return progress_rate([sys.executable, str(script), mode, url, str(n), str(free_port())], n, workdir,
                         f"faust-{mode}")


def quix_baseline(url, n, workdir):
    app = Path(__file__).resolve().parent / "quix_app.py"
    return progress_rate([sys.executable, str(app), bootstrap(url), str(Path(workdir) / "quix-state"), str(n)],
                         n, workdir, "quix")


def journey_throughput(url, n, workdir, lateness=None):
    port = free_port()
    args = ("--rules", EXAMPLE_RULES) + (("--lateness", lateness) if lateness else ())
    w = spawn_worker(url, web_port=port, log_path=str(Path(workdir) / "worker.log"), args=args)
    try:
        t0 = None
        while True:
            r = ready(port)
            if r and r.get("ready"):
                done = r["counts"]["events"] + r["counts"]["deadletters"] + r["counts"]["rekeyed"]
                if t0 is None and done > 0:
                    t0, first = time.monotonic(), done
                if done >= n:
                    return (done - first) / (time.monotonic() - t0)
            if w.poll() is not None:
                raise SystemExit("worker died; see " + str(Path(workdir) / "worker.log"))
            time.sleep(0.05)
    finally:
        w.terminate()
        w.wait(30)


WARMUP = 3.0


async def latency(url, rate, seconds, workdir, lateness):
    """Offer `rate` events/s with event time = now; latency = trigger record time - produce time of the
    event that caused it (the last id in its evidence)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    port = free_port()
    w = spawn_worker(url, web_port=port, log_path=str(Path(workdir) / f"worker-lat-{lateness}.log"),
                     args=("--lateness", lateness))
    # offer load once the worker has caught up: assigned, and no input of any partition with unread
    # records (a backlog left by an earlier run would otherwise be measured as latency)
    while True:
        r = ready(port) or {}
        if r.get("ready") and r.get("detail") and not any(d["behind"] for d in r["detail"].values()):
            break
        await asyncio.sleep(0.2)
    c = AIOKafkaConsumer(topics.TRIGGERS, bootstrap_servers=bootstrap(url), group_id=None, auto_offset_reset="latest",
                         fetch_max_wait_ms=20)  # the measuring side must not add a long fetch wait
    await c.start()
    # the broker alone: the same events read back from the source topics by a plain consumer
    # with the worker's fetch wait (Tansu's produce -> fetch time grows with the batches in a log)
    src = AIOKafkaConsumer(topics.PURCHASES, topics.CLICKSTREAM, bootstrap_servers=bootstrap(url), group_id=None,
                           auto_offset_reset="latest", fetch_max_wait_ms=50)
    await src.start()
    plain: list[float] = []
    prod = AIOKafkaProducer(bootstrap_servers=bootstrap(url), linger_ms=2)
    await prod.start()
    for t in (topics.PURCHASES, topics.CLICKSTREAM):
        await prod.partitions_for(t)  # the producer's metadata, fetched before the clock starts
    sent: dict[str, float] = {}
    lat: list[float] = []       # produce -> trigger read back by this process
    made: list[float] = []      # produce -> the trigger record's CreateTime (set by the worker's producer)
    trace: list = []

    async def collect():
        while True:
            b = await c.getmany(timeout_ms=200)
            now = time.time()
            for recs in b.values():
                for r in recs:
                    ev = orjson.loads(r.value)["data"]["evidence"]
                    t = sent.get(ev[-1]) if ev else None
                    if t is not None:
                        lat.append(now - t)
                        made.append(r.timestamp / 1000.0 - t)
                        trace.append((t, r.timestamp / 1000.0 - t))

    async def collect_sources():
        while True:
            b = await src.getmany(timeout_ms=200)
            now = time.time()
            for recs in b.values():
                # records of this run only (Tansu answers ListOffsets(latest) with the last batch's
                # base offset + 1, so "latest" can start inside an older batch)
                plain.extend(now - r.timestamp / 1000.0 for r in recs if r.timestamp >= run_start_ms)

    run_start_ms = int(time.time() * 1000)
    task = asyncio.create_task(collect())
    task_src = asyncio.create_task(collect_sources())
    i, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        i += 1
        cust = f"lat-{lateness}-{i % 50000}"
        eid = f"{cust}-{i}"
        now_ms = int(time.time() * 1000)
        # order.completed: a first order is recognized at once (first_purchase), nothing deferred
        d = {"id": eid, "customer_id": cust, "type": "order.completed" if i % 5 == 0 else "page.viewed",
             "ts": now_ms, "props": {"order_id": "o" + eid, "revenue": 1999}}
        sent[eid] = time.time()
        await prod.send(topics.PURCHASES if i % 5 == 0 else topics.CLICKSTREAM, orjson.dumps(d),
                        key=cust.encode(), timestamp_ms=now_ms)
        ahead = i / rate - (time.monotonic() - t0)
        if ahead > 0.001:
            await asyncio.sleep(ahead)
    await asyncio.sleep(float(lateness.rstrip("s")) + 3)
    task.cancel()
    task_src.cancel()
    await prod.stop()
    await c.stop()
    await src.stop()
    w.terminate()
    w.wait(30)
    if os.environ.get("BENCH_TRACE"):
        Path(os.environ["BENCH_TRACE"]).write_bytes(orjson.dumps(trace))
    # steady state: events produced after the first WARMUP seconds (the worker's first fetches, checkpoint
    # and any backlog left by an earlier run fall in the warm-up)
    start = min((t for t, _ in trace), default=0.0)
    steady = sorted(m for t, m in trace if t - start >= WARMUP)
    lat.sort()
    made.sort()
    plain.sort()
    q = lambda xs, f: xs[min(len(xs) - 1, int(f * len(xs)))] * 1000 if xs else float("nan")  # noqa: E731
    return len(lat), q(lat, 0.5), q(lat, 0.99), i / seconds, q(made, 0.5), q(made, 0.99), q(steady, 0.5), q(
        steady, 0.99), q(plain, 0.5), q(plain, 0.99)


def intake_rate(log: Path, workdir: str, seconds: float = 10.0) -> float:
    """The HTTP intake's acknowledged messages/s at full load, the log's records as Segment messages, on
    a broker of its own (so the worker runs above never see them)."""
    msgs = [as_segment(orjson.loads(line)) for line in log.read_bytes().splitlines()[:100_000]]
    tmp = Path(workdir) / "intake"
    tmp.mkdir(exist_ok=True)
    bodies_path = tmp / "bodies.json"
    bodies_path.write_bytes(orjson.dumps(bodies_of(msgs)))
    with EmbeddedBroker(log_path=str(tmp / "broker.log")) as b:
        proc, port = start_intake(b.url, tmp)
        try:
            return full_load_rate(port, str(bodies_path), 16, seconds)["rate"]
        finally:
            stop(proc)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=20000)
    ap.add_argument("--events", type=int, default=200000)
    ap.add_argument("--rate", type=float, default=5000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--skip-baselines", action="store_true", help="journey only (no aiokafka, Faust or Quix runs)")
    ap.add_argument("--skip-latency", action="store_true", help="throughput only")
    ap.add_argument("--latency-only", action="store_true", help="no throughput runs")
    ap.add_argument("--skip-intake", action="store_true", help="no HTTP intake run")
    ap.add_argument("--journey-first", action="store_true",
                    help="run the journey worker before the baselines (alternate it between runs, so that a broker "
                         "that slows as its log is read hits both alike)")
    ap.add_argument("--intake-seconds", type=float, default=10.0, help="seconds of the intake's full load")
    ap.add_argument("--lateness", default="0s,10s", help="allowed lateness values of the latency runs")
    a = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="journey-bench-")
    log = Path(workdir) / "log.jsonl"
    info: dict = {}
    n = write_log(str(log), a.customers, a.events, seed=7, noise=False, engagement=True, info=info)
    print(f"log: {n:,} events ({info['engagement']:,} of them answers to messages), {a.customers:,} customers; "
          f"rules {EXAMPLE_RULES}; workdir {workdir}", flush=True)
    with EmbeddedBroker(log_path=str(Path(workdir) / "broker.log")) as b:
        if not a.latency_only:
            t = time.perf_counter()
            asyncio.run(produce([log], b.url, progress=None))
            produced = n / (time.perf_counter() - t)
        rows = []

        def row(name, result):
            rate, done = result if isinstance(result, tuple) else (result, n)
            rows.append((name, rate, done))
            print(f"  {name:<44} {rate:>10,.0f} events/s  ({done:,} events)", flush=True)

        if a.latency_only:
            a.skip_baselines = True
        print("\nthroughput, one process each, same broker and log (from first to last progress report):",
              flush=True)
        mine = "journey worker, rules + example journeys"
        if a.journey_first and not a.latency_only:
            row(mine, journey_throughput(b.url, n, workdir))
        if not a.skip_baselines:
            row("aiokafka getmany + orjson (no state)", asyncio.run(raw_consume(b.url, n)))
            row("Faust agent, no-op per message", faust_baseline(b.url, "noop", n, workdir))
            row("Faust agent, table write per event", faust_baseline(b.url, "table", n, workdir))
            try:
                import quixstreams  # noqa: F401  (a test-only dependency)
                row("Quix Streams 3, per-customer state + changelog", quix_baseline(b.url, n, workdir))
            except ImportError:
                print("  (Quix Streams not installed: pip install -e '.[test]')")
        if not a.journey_first and not a.latency_only:
            row(mine, journey_throughput(b.url, n, workdir))
        top = next((v for name, v, _done in rows if name == mine), 0)
        rows = [r for r in rows if r[0] != mine] + [r for r in rows if r[0] == mine]
        print("\nratios (journey / other, same run):")
        for name, v, _done in rows[:-1]:
            print(f"  journey / {name:<44} {top / v:6.2f}x" if v == v and v else f"  {name}: no figure")
        if not a.latency_only and not a.skip_intake:
            print("\ngetting events in (one process each):", flush=True)
            print(f"  {'journey produce (the log, acks=all)':<44} {produced:>10,.0f} events/s", flush=True)
            print(f"  {'journey intake (HTTP, Segment batches of 100)':<44} {intake_rate(log, workdir, a.intake_seconds):>10,.0f} "
                  "events/s", flush=True)
        if a.skip_latency:
            return
        print(f"\nlatency at {a.rate:,.0f} events/s offered for {a.seconds:.0f} s (produce -> trigger on the topic):",
              flush=True)
        for lateness in a.lateness.split(","):
            k, p50, p99, offered, m50, m99, s50, s99, b50, b99 = asyncio.run(
                latency(b.url, a.rate, a.seconds, workdir, lateness))
            print(f"  allowed lateness {lateness:>4}: {k:,} triggers (offered {offered:,.0f}/s)\n"
                  f"    read back by the benchmark:        p50 {p50:,.0f} ms, p99 {p99:,.0f} ms\n"
                  f"    to the trigger record's timestamp: p50 {m50:,.0f} ms, p99 {m99:,.0f} ms\n"
                  f"    same, after the first {WARMUP:.0f} s:        p50 {s50:,.0f} ms, p99 {s99:,.0f} ms\n"
                  f"    the broker alone (produce -> a plain consumer): p50 {b50:,.0f} ms, p99 {b99:,.0f} ms",
                  flush=True)


if __name__ == "__main__":
    main()
