"""Webhook delivery rate of one ``journey dispatch`` process.

    python benchmarks/dispatch_bench.py [--triggers N] [--concurrency C] [--delay SECONDS]

Puts N live triggers on journey.triggers of an embedded broker, starts a
receiver on loopback that answers 200 after ``--delay`` (default 0), and runs
the dispatcher with one endpoint. Prints deliveries per second (first request
to last), the signature and request overhead per delivery, and what Little's
law allows at that concurrency and delay, measured in one run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from dispatch_support import Receiver  # noqa: E402
from test_dispatch import SECRET, Dispatch, _committed_all, _produce, _trigger  # noqa: E402

from journey.live.broker import EmbeddedBroker  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--triggers", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--delay", type=float, default=0.0, help="receiver's answer time in seconds")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dispatch-bench-"))
    broker = EmbeddedBroker(log_path=str(tmp / "broker.log")).start()
    rx = Receiver(delay=a.delay)
    d = None
    try:
        triggers = [_trigger(f"b-{i:06d}", cid=f"c{i}") for i in range(a.triggers)]
        _produce(broker.url, triggers)
        config = (f'[dispatch]\nmax_in_flight = {max(2000, a.triggers + 1)}\n'
                  f'[endpoints.hooks]\nurl = "{rx.url("hooks")}"\nsecrets = ["{SECRET}"]\n'
                  f'concurrency = {a.concurrency}\nmax_pending = {a.triggers}\n[[routes]]\nendpoints = ["hooks"]\n')
        t0 = time.monotonic()
        d = Dispatch(broker.url, tmp, config)
        while len(rx.requests) < a.triggers:
            if d.proc.poll() is not None:
                raise SystemExit(f"dispatcher exited:\n{d.log.read_text()[-2000:]}")
            time.sleep(0.05)
        first, last = rx.requests[0]["at"], rx.requests[-1]["at"]
        rate = (a.triggers - 1) / (last - first)
        while not _committed_all(broker.url, "journey-dispatch"):
            time.sleep(0.2)
        total = time.monotonic() - t0
        print(f"triggers          {a.triggers:,}")
        print(f"concurrency       {a.concurrency}, receiver delay {a.delay * 1000:.0f} ms")
        print(f"deliveries/s      {rate:,.0f} (first request to last)")
        if a.delay:
            print(f"Little's law cap  {a.concurrency / a.delay:,.0f}/s  -> {rate / (a.concurrency / a.delay):.2f} of it")
        print(f"start to all committed  {total:.1f} s (process start and group join included)")
        print(f"repeats           {len(rx.requests) - len(set(rx.ids()))}")
    finally:
        if d:
            d.stop()
        rx.stop()
        broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
