"""A real HTTP receiver on loopback for the dispatcher tests (aiohttp, in a thread).

Answers are scripted per trigger id (the webhook-id): a list of steps, each

* a status, ``(status, headers)`` or ``(status, headers, text)``;
* ``("sleep", seconds, status)``;
* ``("body", status, nbytes)``: a chunked body of ``nbytes`` generated on the
  fly (1 MiB writes, at most 120 s); the bytes actually written (the
  client may hang up) are in :attr:`Receiver.sent`;
* ``("disconnect",)``: the connection is dropped without an answer.

After the script, ``default`` (200). Any method on any ``/{name}`` is
answered (so a redirect that is followed shows as a request to its target).
Every request is recorded with its arrival time, method, path (``endpoint``:
the ``{name}``), query, headers and body.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import urllib.request

import orjson
from aiohttp import web
from live_support import read_topic, stop_process

from journey.core.timeutil import format_time
from journey.dispatch.signing import new_secret
from journey.io import topics
from journey.io.kafka import bootstrap
from journey.live.broker import die_with_parent, free_port

SECRET, OLD_SECRET = new_secret(), new_secret()

CHUNK = 1 << 20
BODY_SECONDS = 120


class Receiver:
    def __init__(self, scripts: dict | None = None, delay: float = 0.0, default=200):
        self.scripts = {k: list(v) for k, v in (scripts or {}).items()}
        self.delay = delay
        self.default = default
        self.requests: list[dict] = []
        self.sent: dict[str, list[int]] = {}      # webhook-id -> bytes written per ("body", ...) answer
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_route("*", "/{name}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    async def _handle(self, request: web.Request):
        body = await request.read()
        msg_id = request.headers.get("webhook-id", "")
        with self.lock:
            self.requests.append({"at": time.monotonic(), "endpoint": request.match_info["name"],
                                  "method": request.method, "query": request.query_string,
                                  "headers": dict(request.headers), "body": body, "id": msg_id})
            script = self.scripts.get(msg_id)
            step = script.pop(0) if script else self.default
        if self.delay:
            await asyncio.sleep(self.delay)
        headers, text = {}, None
        if isinstance(step, tuple) and step[0] == "sleep":
            await asyncio.sleep(step[1])
            step = step[2]
        if isinstance(step, tuple) and step[0] == "body":
            return await self._stream(request, msg_id, step[1], step[2])
        if isinstance(step, tuple) and step[0] == "disconnect":
            request.transport.abort()
            return web.Response(status=500)
        if isinstance(step, tuple):
            step, headers, *more = step
            text = more[0] if more else None
        if text is None:
            text = "ok" if step < 300 else "no"
        return web.Response(status=step, headers=headers, text=text)

    async def _stream(self, request, msg_id: str, status: int, nbytes: int):
        resp = web.StreamResponse(status=status, headers={"content-type": "text/plain"})
        resp.enable_chunked_encoding()
        sent = 0
        chunk = b"x" * CHUNK
        try:
            await resp.prepare(request)
            deadline = time.monotonic() + BODY_SECONDS
            while sent < nbytes and time.monotonic() < deadline:
                part = chunk[:min(CHUNK, nbytes - sent)]
                await resp.write(part)
                sent += len(part)
            await resp.write_eof()
        except (ConnectionError, OSError, RuntimeError):
            pass                        # the client hung up
        finally:
            with self.lock:
                self.sent.setdefault(msg_id, []).append(sent)
        return resp

    def of(self, msg_id: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["id"] == msg_id]

    def ids(self) -> list[str]:
        with self.lock:
            return [r["id"] for r in self.requests]

    def stop(self):
        async def down():
            await self.runner.cleanup()
        asyncio.run_coroutine_threadsafe(down(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


# -- triggers, the dispatcher, its endpoints -------------------------------------------------------------

def _trigger(tid: str, rule="cart_abandoned", kind="recovery", channel="email", cid="c1", at=None) -> dict:
    at = at if at is not None else int(time.time() * 1000) - 60_000
    return {"specversion": "1.0", "id": tid, "source": "journey", "type": f"journey.{kind}.{rule}",
            "subject": cid, "time": format_time(at), "datacontenttype": "application/json",
            "data": {"customer_id": cid, "rule": rule, "kind": kind, "reason": "test", "evidence": [],
                     "channel": channel, "priority": "normal"}}


LIVE = [("content-type", b"application/cloudevents+json"), ("journey-origin", b"live")]


def _produce(broker: str, triggers: list, headers=LIVE, raw: list[bytes] = ()) -> None:
    from aiokafka import AIOKafkaProducer

    from journey.io.kafka import ensure_topics

    async def go():
        await ensure_topics(broker)
        p = AIOKafkaProducer(bootstrap_servers=bootstrap(broker))
        await p.start()
        try:
            for t in triggers:
                await p.send(topics.TRIGGERS, orjson.dumps(t), key=t["subject"].encode(), headers=headers)
            for r in raw:
                await p.send(topics.TRIGGERS, r, key=b"x", headers=headers)
            await p.flush()
        finally:
            await p.stop()
    asyncio.run(go())


class Dispatch:
    """A ``journey dispatch`` child process (``code``: a Python program run instead, given the
    configuration file, the broker and the web port as arguments)."""

    def __init__(self, broker, tmp_path, config: str, name="d", args=(), code=None):
        self.port = free_port()
        self.log = tmp_path / f"{name}.log"
        self.config = tmp_path / f"{name}.toml"
        self.config.write_text(config)
        cmd = ([sys.executable, "-c", code, str(self.config), broker, str(self.port)] if code else
               [sys.executable, "-m", "journey", "dispatch", "--config", str(self.config), "--broker", broker,
                "--web-port", str(self.port), *args])
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)

    def metrics(self) -> dict:
        from prometheus_client.parser import text_string_to_metric_families
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        out = {}
        for f in text_string_to_metric_families(text):
            for s in f.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def value(self, name, **labels) -> float | None:
        """The sum of the metric's samples with these labels; None when no sample of that name is
        exported at all (a renamed metric must fail `== 0`, not pass it), -1 when /metrics is down."""
        try:
            m = self.metrics()
        except OSError:
            return -1
        if not any(n == name for n, _ls in m):
            return None
        return sum(v for (n, ls), v in m.items() if n == name and all(dict(ls).get(k) == x for k, x in labels.items()))

    def stop(self) -> int:
        return stop_process(self.proc)


def _committed_all(broker, group: str) -> bool:
    """The group's committed offsets reach the end of journey.triggers on every partition."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    ends: dict = {}
    for _k, _v, p, off, _h in read_topic(broker, topics.TRIGGERS, idle_ms=300):
        ends[p] = max(ends.get(p, 0), off + 1)

    async def go():
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap(broker), group_id=group, enable_auto_commit=False)
        await c.start()
        try:
            tps = [TopicPartition(topics.TRIGGERS, p) for p in (c.partitions_for_topic(topics.TRIGGERS) or ())]
            if not tps:
                return False
            n = {tp: ends.get(tp.partition, 0) for tp in tps}
            for tp in tps:
                if ((await c.committed(tp)) or 0) < n[tp]:
                    return False
            return True
        finally:
            await c.stop()
    return asyncio.run(go())


def _endpoint(name, url, **kw) -> str:
    lines = [f"[endpoints.{name}]", f'url = "{url}"', f'secrets = ["{SECRET}", "{OLD_SECRET}"]']
    toml = lambda v: ("{" + ", ".join(f"{orjson.dumps(k).decode()} = {orjson.dumps(x).decode()}"  # noqa: E731
                                     for k, x in v.items()) + "}") if isinstance(v, dict) else orjson.dumps(v).decode()
    lines += [f"{k} = {toml(v)}" for k, v in kw.items()]
    return "\n".join(lines) + "\n"
