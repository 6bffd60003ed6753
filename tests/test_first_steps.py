"""A newcomer's first steps on a fresh clone (issue 31): `journey broker` for a broker without Docker,
clean one-line errors for worker settings that cannot work (and a web port that is taken), and the
worker's status lines at the default log level. Each test runs the command as a person would and
reads its exit code and what it printed."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from journey.io import topics
from journey.live.broker import EmbeddedBroker, free_port

ROOT = Path(__file__).resolve().parents[1]
JOURNEY = [sys.executable, "-m", "journey"]


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Lines:
    """The lines a child writes to a pipe, read by a thread (a pipe's buffer hides lines from select)."""

    def __init__(self, stream):
        import queue
        import threading

        self.q: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=lambda: [self.q.put(line) for line in stream], daemon=True)
        self.reader.start()

    def until(self, pattern: str, timeout: float) -> re.Match:
        """Lines until one matches ``pattern``."""
        import queue

        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            try:
                line = self.q.get(timeout=0.5)
            except queue.Empty:
                continue
            self.seen.append(line.rstrip("\n"))
            m = rx.search(line)
            if m:
                return m
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s: {self.seen}")

    def rest(self, timeout: float = 10) -> list[str]:
        """The lines still to come, once the child closed the pipe (it exited)."""
        self.reader.join(timeout)
        out = []
        while not self.q.empty():
            out.append(self.q.get().rstrip("\n"))
        return out


def listening(port: int) -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


# -- journey broker ---------------------------------------------------------------------------------

@pytest.mark.live
def test_journey_broker_runs_until_sigterm_and_leaves_nothing(tmp_path):
    p = subprocess.Popen([*JOURNEY, "broker", "--port", "0", "--create-topics"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    out = Lines(p.stdout)
    try:
        m = out.until(r"listening at (kafka://127\.0\.0\.1:(\d+))\s*$", 60)
        url = m.group(1)
        out.until(r"Ctrl-C \(or SIGTERM\) stops it", 10)
        text = "\n".join(out.seen)
        assert f"journey worker --broker {url}" in text and "the topics are created" in text, text
        kids = children(p.pid)
        assert len(kids) == 1 and alive(kids[0]), kids
        # the topics are there (--create-topics), and a record goes through
        r = subprocess.run([*JOURNEY, "topics", "create", "--broker", url], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        assert {line.split()[0] for line in r.stdout.splitlines() if line.split()[1] == "exists"} == \
            {t["name"] for t in topics.catalog()}, r.stdout
        from live_support import read_topic

        from journey.io.kafka import bootstrap

        async def send():
            from aiokafka import AIOKafkaProducer

            prod = AIOKafkaProducer(bootstrap_servers=bootstrap(url))
            await prod.start()
            try:
                await prod.send_and_wait(topics.CLICKSTREAM, b'{"hello": 1}', key=b"k")
            finally:
                await prod.stop()

        import asyncio

        asyncio.run(send())
        assert [v for _k, v, *_ in read_topic(url, topics.CLICKSTREAM)] == [b'{"hello": 1}']
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0, p.stderr.read()
        assert out.rest() == ["journey broker: stopped"]
        assert p.stderr.read() == ""
        time.sleep(0.5)
        assert not any(alive(k) for k in kids), "the broker's process outlived the command"
        with socket.socket() as s:  # and its port is free again
            s.bind(("127.0.0.1", int(m.group(2))))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def test_journey_broker_on_a_taken_port_says_what_to_pass():
    port = free_port()
    with listening(port):
        r = subprocess.run([*JOURNEY, "broker", "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert r.stderr.splitlines() == [f"journey broker: port {port} on 127.0.0.1 is taken (a Kafka broker already "
                                     "running?): pass --port N for a free port N, or --port 0 for any free one"]


def test_journey_broker_without_its_binary_says_so_in_one_line():
    r = subprocess.run([*JOURNEY, "broker", "--port", "0"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "CALF_TANSU_BIN": "/nonexistent/tansu"})
    assert r.returncode == 1 and r.stdout == "", r.stderr
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("journey broker: no broker binary: "), r.stderr
    assert "CALF_TANSU_BIN" in r.stderr and "Traceback" not in r.stderr


# -- worker settings: one line, exit 2, before anything connects ----------------------------------

NOWHERE = "kafka://127.0.0.1:1"


@pytest.mark.parametrize("args,env,line", [
    (["--lateness", "10"], {}, "journey worker: --lateness 10: not a duration; give a number with a unit, e.g. "
                               "--lateness 10s (s, m, h, d)"),
    ([], {"JOURNEY_LATENESS": "abc"}, "journey worker: JOURNEY_LATENESS=abc: not a duration; give a number with a "
                                      "unit, e.g. --lateness 10s (s, m, h, d)"),
    (["--idle", "soon"], {}, "journey worker: --idle soon: not a duration; give a number with a unit, e.g. "
                             "--idle 5s (s, m, h, d)"),
    (["--store", "redis://"], {}, "journey worker: --store redis://: use --store rocksdb:// (state on disk under "
                                  "--data-dir, the default) or --store memory:// (rebuilt from the changelog at "
                                  "every start)"),
    ([], {"JOURNEY_WEB_PORT": "abc"}, "journey worker: JOURNEY_WEB_PORT=abc: expected a whole number"),
    (["--web-port", "70000"], {}, "journey worker: --web-port 70000: a port is 1 to 65535 (or 0 for a free one)"),
    (["--partitions", "0"], {}, "journey worker: --partitions 0: must be at least 1"),
    (["--loglevel", "loud"], {}, "journey worker: --loglevel loud: use debug, info, warning, error, critical"),
    ([], {"JOURNEY_CHECKPOINT": "0"}, "journey worker: JOURNEY_CHECKPOINT=0: must be more than 0 (seconds)"),
])
def test_a_worker_setting_that_cannot_work_is_one_line(tmp_path, args, env, line):
    t0 = time.monotonic()
    r = subprocess.run([*JOURNEY, "worker", "--broker", NOWHERE, "--data-dir", str(tmp_path / "d"), *args],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path,
                       env={**os.environ, "JOURNEY_BROKER_WAIT": "20", **env})
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [line], r.stderr
    assert time.monotonic() - t0 < 15  # it did not wait for the broker first


def test_a_taken_web_port_is_one_line_saying_what_to_pass(tmp_path):
    port = free_port()
    with listening(port):
        for args, env, given in ((["--web-port", str(port)], {}, f"--web-port {port}"),
                                 ([], {"JOURNEY_WEB_PORT": str(port)}, f"JOURNEY_WEB_PORT={port}")):
            r = subprocess.run([*JOURNEY, "worker", "--broker", NOWHERE, "--store", "memory://", *args],
                               capture_output=True, text=True, timeout=60, cwd=tmp_path, env={**os.environ, **env})
            assert r.returncode == 2, r.stderr
            assert r.stderr.splitlines() == [f"journey worker: port {port} on 127.0.0.1 is taken ({given}): pass "
                                             "--web-port N for a free port N, or --web-port 0 for any free one"]


def test_faust_s_default_port_taken_is_named_as_such(tmp_path):
    """6066 is the worker's default and Faust's: another Faust app on the machine holds it."""
    try:
        held = listening(6066)
    except OSError:
        held = None  # something holds it already: the worker must say the same
    try:
        env = {k: v for k, v in os.environ.items() if k != "JOURNEY_WEB_PORT"}
        r = subprocess.run([*JOURNEY, "worker", "--broker", NOWHERE, "--store", "memory://"], capture_output=True,
                           text=True, timeout=60, cwd=tmp_path, env=env)
    finally:
        if held is not None:
            held.close()
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == ["journey worker: port 6066 on 127.0.0.1 is taken (the default web_port 6066; "
                                     "6066 is Faust's default too, so another Faust app may hold it): pass "
                                     "--web-port N for a free port N, or --web-port 0 for any free one"]


# -- the worker's status lines ------------------------------------------------------------------------

@pytest.mark.live
def test_the_worker_says_when_it_starts_is_assigned_and_is_ready(tmp_path):
    rules = ROOT / "deploy" / "journeys.example.toml"
    secret_id = "cust-7f3a-do-not-print"
    with EmbeddedBroker(log_path=str(tmp_path / "b.log")) as b:
        log = tmp_path / "w.log"
        w = subprocess.Popen([*JOURNEY, "worker", "--broker", b.url, "--store", "memory://", "--web-port", "0",
                              "--rules", str(rules)], stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
                             stdin=subprocess.DEVNULL, cwd=tmp_path,
                             env={k: v for k, v in os.environ.items() if not k.startswith("JOURNEY_")})
        try:
            deadline = time.monotonic() + 120
            while "ready: caught up" not in log.read_text() and time.monotonic() < deadline:
                assert w.poll() is None, log.read_text()
                time.sleep(0.3)
            lines = log.read_text().splitlines()
            assert len(lines) == 3, lines
            start, assigned, ready = lines
            m = re.fullmatch(rf"journey worker: starting: broker {re.escape(b.url)} \(PLAINTEXT\), group journey, "
                             rf"rules {re.escape(str(rules))} \(fingerprint [0-9a-f]{{12}}: 13 built-in rule\(s\) enabled, "
                             r"7 journey\(s\)\), "
                             r"store memory://, health and metrics on http://127\.0\.0\.1:(\d+)", start)
            assert m, start
            assert assigned == ("journey worker: assigned 6 of 6 partition(s) (0-5), 0 customer(s) loaded; "
                                "catching up on the input"), assigned
            assert ready == ("journey worker: ready: caught up with the input on 6 partition(s); processing events "
                             "as they come"), ready
            # --web-port 0 chose a free port, and it is the one printed
            with urllib.request.urlopen(f"http://127.0.0.1:{m.group(1)}/health", timeout=10) as r:
                assert r.status == 200
            # events flow; no customer id is ever printed
            ev = tmp_path / "e.jsonl"
            ev.write_text(f'{{"id":"e1","customer_id":"{secret_id}","type":"order.completed",'
                          f'"ts":"2026-03-01T10:00:00Z","props":{{"order_id":"o1","revenue":10}}}}\n')
            r2 = subprocess.run([*JOURNEY, "produce", str(ev), "--broker", b.url, "-q"], capture_output=True,
                                text=True, timeout=120)
            assert r2.returncode == 0, r2.stderr
            time.sleep(3)
            w.send_signal(signal.SIGTERM)
            assert w.wait(60) == 0, log.read_text()
        finally:
            if w.poll() is None:
                w.kill()
                w.wait(10)
    out = log.read_text()
    assert secret_id not in out and "Traceback" not in out, out
    assert all(line.startswith("journey worker: ") for line in out.splitlines()), out
