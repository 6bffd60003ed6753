"""``journey tail TOPIC`` against a real broker (issue 31, point 9): the last records, every record,
raw JSON lines, a trigger as a summary, new records with --follow, and Ctrl-C ends it cleanly."""

from __future__ import annotations

import asyncio
import queue
import signal
import subprocess
import sys
import threading
import time

import orjson
from live_support import stop_process

from journey.io import topics
from journey.io.kafka import bootstrap, ensure_topics

T0 = 1772359200000   # 2026-03-01T10:00:00Z


def trigger(i: int) -> dict:
    return {"specversion": "1.0", "id": f"00000000-0000-5000-8000-{i:012d}", "source": "journey",
            "type": "journey.recovery.cart_abandoned", "subject": f"c{i}", "time": "2026-03-01T10:00:00Z",
            "datacontenttype": "application/json",
            "data": {"customer_id": f"c{i}", "rule": "cart_abandoned", "kind": "recovery", "occasion": f"k{i}",
                     "reason": f"checkout k{i} left open for 30m", "evidence": [], "channel": "email",
                     "priority": "normal", "offer": {"type": "discount", "pct": 10},
                     "experiment": {"name": "cart_abandoned", "variant": "discount", "salt": "s"},
                     "relationship": {"stage": "new", "health": 50, "orders": 1, "net_spend": 10.0,
                                      "open_tickets": 0, "touchpoints": {}}}}


def publish(broker: str, records: list[tuple[str, bytes, bytes, int]]) -> None:
    from aiokafka import AIOKafkaProducer

    async def go():
        await ensure_topics(broker)
        p = AIOKafkaProducer(bootstrap_servers=bootstrap(broker))
        await p.start()
        try:
            for topic, key, value, ts in records:
                await p.send_and_wait(topic, value, key=key, timestamp_ms=ts)
        finally:
            await p.stop()

    asyncio.run(go())


def tail(broker: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "journey", "tail", *args, "--broker", broker, "--timeout", "60"],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_tail_prints_the_last_records_every_record_and_raw_json(broker):
    publish(broker, [(topics.TRIGGERS, f"c{i}".encode(), orjson.dumps(trigger(i)), T0 + i * 1000) for i in range(15)]
            + [(topics.AUDIT, b"c1", orjson.dumps({"trigger_id": "t", "reason": "cap"}), T0),
               (topics.AUDIT, b"c2", b"not json at all", T0 + 1000)])
    p = tail(broker, "triggers", "-n", "3")   # a short name; the last 3 across the partitions, by time
    assert p.returncode == 0 and p.stderr == "", p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 3 and [x.split()[0] for x in lines] == [
        "2026-03-01T10:00:12Z", "2026-03-01T10:00:13Z", "2026-03-01T10:00:14Z"], p.stdout
    first = lines[0].split("  ")
    assert first[2] == "c12" and first[3] == (
        'trigger cart_abandoned (recovery, email, normal) offer discount {"pct":10} experiment '
        'cart_abandoned=discount — checkout k12 left open for 30m [id 00000000-0000-5000-8000-000000000012]')
    p = tail(broker, "journey.triggers")      # the default: the last 10
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 10 and "c5 " in p.stdout, p.stdout
    p = tail(broker, "triggers", "--from-beginning", "--json")
    values = [orjson.loads(x) for x in p.stdout.splitlines()]
    assert p.returncode == 0 and sorted(values, key=lambda v: v["subject"]) == sorted(
        (trigger(i) for i in range(15)), key=lambda v: v["subject"])
    p = tail(broker, "audit", "--from-beginning")
    assert p.returncode == 0 and '"reason":"cap"' in p.stdout and ' "not json at all"' in p.stdout, p.stdout
    # clean one-line errors
    p = tail(broker, "no.such.topic")
    assert p.returncode == 1 and p.stderr.startswith("journey tail: the broker at") and "journey.triggers" in p.stderr
    p = tail(broker, "triggers", "-n", "2", "--from-beginning")
    assert p.returncode == 2 and "not both" in p.stderr


def test_tail_follow_prints_new_records_and_ctrl_c_ends_it_cleanly(broker):
    publish(broker, [(topics.TRIGGERS, f"c{i}".encode(), orjson.dumps(trigger(i)), T0 + i * 1000) for i in range(2)])
    proc = subprocess.Popen([sys.executable, "-m", "journey", "tail", "triggers", "--follow", "--broker", broker],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    got: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [got.put(x) for x in proc.stdout], daemon=True).start()

    def lines(n: int, within: float) -> list[str]:
        out, deadline = [], time.monotonic() + within
        while len(out) < n:
            try:
                out.append(got.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"{n} line(s) not printed within {within:.0f} s; got {out}") from None
        return out

    try:
        assert [x.split("  ")[2] for x in lines(2, 60)] == ["c0", "c1"]
        publish(broker, [(topics.TRIGGERS, b"c7", orjson.dumps(trigger(7)), T0 + 7000)])
        (new,) = lines(1, 30)
        assert new.split("  ")[2] == "c7" and "trigger cart_abandoned" in new
        proc.send_signal(signal.SIGINT)   # Ctrl-C
        assert proc.wait(30) == 0
        err = proc.stderr.read()
        assert "Traceback" not in err and "interrupted" not in err, err
    finally:
        stop_process(proc)
