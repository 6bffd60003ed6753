"""Throughput and latency of one ``journey intake`` process on the embedded broker.

    python benchmarks/intake_bench.py [--events N] [--clients N] [--seconds S] [--gzip]

Prints, measured in one run against one Tansu broker on loopback:
  * the intake at full load: batches of 100 Segment messages (a synthetic population, as an SDK
    sends them) from ``--clients`` concurrent keep-alive connections in a client process of its
    own, each request answered only once Kafka acknowledged its messages: messages/s and the
    request latency (p50/p99);
  * the intake at half that rate (requests paced evenly): the request latency p50/p99/max;
  * ``journey produce`` publishing the same messages straight to Kafka: records/s, for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from journey.core import intake  # noqa: E402
from journey.history.synth import generate  # noqa: E402
from journey.intake.segment import as_segment  # noqa: E402
from journey.live.broker import EmbeddedBroker, die_with_parent, free_port, spawn_intake  # noqa: E402
from journey.live.produce import produce  # noqa: E402

KEY = "bench-key"

# the load generator: a process of its own (aiohttp client), reading its plan from argv
CLIENT = r'''
import asyncio, sys, time, orjson, aiohttp
url, bodies_path, clients, seconds, rate, gz = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), \
    float(sys.argv[5]), sys.argv[6] == "1"
bodies = orjson.loads(open(bodies_path, "rb").read())
bodies = [b.encode("latin-1") for b in bodies]
headers = {"Authorization": sys.argv[7], "Content-Type": "application/json"}
if gz:
    headers["Content-Encoding"] = "gzip"
async def main():
    lat, statuses, sent = [], {}, [0]
    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=conn) as s:
        start = time.perf_counter()
        end = start + seconds
        async def one(body):
            t = time.perf_counter()
            async with s.post(url, data=body, headers=headers) as r:
                await r.read()
                statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
            lat.append(time.perf_counter() - t)
        async def loop(i):
            n = i
            while time.perf_counter() < end:
                if rate:
                    due = start + n / rate
                    wait = due - time.perf_counter()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    n += clients
                await one(bodies[sent[0] % len(bodies)])
                sent[0] += 1
        await asyncio.gather(*(loop(i) for i in range(clients)))
        took = time.perf_counter() - start
    print(orjson.dumps({"requests": sent[0], "seconds": took, "lat": lat, "statuses": statuses}).decode())
asyncio.run(main())
'''


def _pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")


def _load(url, bodies_path, clients, seconds, rate, gz) -> dict:
    auth = "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()
    out = subprocess.run([sys.executable, "-c", CLIENT, url, bodies_path, str(clients), str(seconds), str(rate),
                          "1" if gz else "0", auth], capture_output=True, timeout=seconds + 120)
    if out.returncode:
        raise SystemExit(f"the load client failed:\n{out.stderr.decode()[-2000:]}")
    return orjson.loads(out.stdout)


def stop(proc, timeout: float = 30) -> None:
    """Terminate a child process; killed if it does not end within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def bodies_of(msgs: list, gz: bool = False) -> list:
    """Segment batch bodies of 100 messages each, as an SDK sends them (latin-1 text, for the client's argv)."""
    bodies = []
    for i in range(0, len(msgs), 100):
        body = orjson.dumps({"batch": msgs[i:i + 100], "sentAt": "2026-12-01T00:00:00Z"})
        bodies.append((gzip.compress(body) if gz else body).decode("latin-1"))
    return bodies


def start_intake(broker_url: str, tmp: Path):
    """A ``journey intake`` on the broker, once it answers /ready: (process, port)."""
    port = free_port()
    proc = spawn_intake(broker_url, port=port, write_keys=KEY, log_path=str(tmp / "intake.log"),
                        args=("--loglevel", "warning"))
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
                if r.status == 200:
                    return proc, port
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise SystemExit(f"the intake did not start; see {tmp / 'intake.log'}")
        time.sleep(0.2)


def full_load_rate(port: int, bodies_path: str, clients: int, seconds: float, gz: bool = False) -> dict:
    """The intake at full load after a 2 s warm-up: messages/s acknowledged, with the raw result."""
    url = f"http://127.0.0.1:{port}/v1/batch"
    _load(url, bodies_path, clients, 2.0, 0, gz)   # warm up: connections, metadata
    full = _load(url, bodies_path, clients, seconds, 0, gz)
    full["rate"] = full["statuses"].get("200", 0) * 100 / full["seconds"]
    return full


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000, help="distinct messages (default 100,000)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent connections (default 16)")
    ap.add_argument("--seconds", type=float, default=15.0, help="seconds of each load phase (default 15)")
    ap.add_argument("--gzip", action="store_true", help="gzip the bodies (as the Python SDKs can)")
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="journey-intake-bench-"))
    msgs = []
    for _ts, _stream, rec in sorted(generate(max(50, a.events // 30), a.events, seed=3), key=lambda x: x[0]):
        msgs.append(as_segment(rec))
    bodies = bodies_of(msgs, a.gzip)
    bodies_path = tmp / "bodies.json"
    bodies_path.write_bytes(orjson.dumps(bodies))
    log = tmp / "messages.jsonl"
    log.write_bytes(b"\n".join(orjson.dumps(m) for m in msgs) + b"\n")
    size = sum(len(orjson.dumps(m)) for m in msgs) / len(msgs)
    print(f"{len(msgs):,} messages ({size:.0f} bytes each on average) in {len(bodies):,} batches of 100"
          f"{' (gzip)' if a.gzip else ''}; {a.clients} connections; {os.cpu_count()} CPU(s)")

    broker = EmbeddedBroker(log_path=str(tmp / "broker.log")).start()
    proc, port = start_intake(broker.url, tmp)
    try:
        url = f"http://127.0.0.1:{port}/v1/batch"
        full = full_load_rate(port, str(bodies_path), a.clients, a.seconds, a.gzip)
        ok, rate = full["statuses"].get("200", 0), full["rate"]
        print(f"intake, full load      : {rate:>9,.0f} messages/s acknowledged ({ok:,} requests answered 200 "
              f"in {full['seconds']:.1f} s; statuses {full['statuses']}); latency p50 "
              f"{_pct(full['lat'], 50) * 1000:.1f} ms, p99 {_pct(full['lat'], 99) * 1000:.1f} ms")

        half = _load(url, str(bodies_path), a.clients, a.seconds, rate / 2 / 100, a.gzip)
        hrate = half["statuses"].get("200", 0) * 100 / half["seconds"]
        print(f"intake, half that rate : {hrate:>9,.0f} messages/s offered evenly; latency p50 "
              f"{_pct(half['lat'], 50) * 1000:.1f} ms, p99 {_pct(half['lat'], 99) * 1000:.1f} ms, max "
              f"{max(half['lat']) * 1000:.1f} ms (statuses {half['statuses']})")

        t = time.perf_counter()
        counts = asyncio.run(produce([log], broker.url, create=False))
        took = time.perf_counter() - t
        n = sum(v for k, v in counts.items() if k != "watermark markers")
        print(f"journey produce        : {n / took:>9,.0f} records/s (the same {n:,} messages straight to Kafka, "
              f"acks=all, in {took:.1f} s)")
        assert n == len(msgs) and all(intake.parse(orjson.dumps(m)) for m in msgs[:100])
    finally:
        stop(proc)
        broker.stop()
    return 0


if __name__ == "__main__":
    _ = die_with_parent
    sys.exit(main())
