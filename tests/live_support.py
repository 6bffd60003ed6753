"""Helpers for the tests against a real broker (Tansu, started per test)."""

from __future__ import annotations

import asyncio
import subprocess
import time
import urllib.error
import urllib.request

import orjson

from journey.io import topics
from journey.io.kafka import bootstrap
from journey.live.broker import free_port, spawn_worker
from journey.live.produce import produce


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
