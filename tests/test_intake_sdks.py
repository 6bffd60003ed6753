"""``journey intake`` driven by two tracking SDKs we did not write (domain.md section 10).

* RudderStack's Python SDK (``rudder-sdk-python``), in a virtual environment of its own: its pins clash
  with the project's python-dateutil. It is made once, in a cache outside the repository
  (``$JOURNEY_TEST_CACHE``, else ``~/.cache/journey-tests``), keyed by the pinned version.
* Segment's Node SDK (``@segment/analytics-node``), installed with npm into the same cache.

Each test starts a real broker and ``journey intake`` as a child process, points the SDK at it through
a recording proxy (:class:`Tap`: what the SDK really sends, headers and body as sent, and what the
intake answered), and reads the source topics back: every message the SDK sent is on the topic of its
type, keyed by customer (else visitor) id, with ``receivedAt``, its ``timestamp`` and ``messageId``
and everything else it carried, and the worker's parser reads it as the rules expect. With a wrong
write key the SDK gets 401, gives up without retrying, and nothing reaches a topic.

Where an SDK cannot be installed (no network, no node or npm) the test skips and says why.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import http.client
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest
from conftest import cache_dir, locked
from live_support import read_topic, stop_process

from journey.core.intake import parse
from journey.core.timeutil import parse_time
from journey.io import topics
from journey.live.broker import die_with_parent, free_port

RUDDER_PIN = "2.1.9"         # rudder-sdk-python
NODE_SDK_PIN = "3.1.0"       # @segment/analytics-node
KEY = "wk-sdk-test-1"
WRONG = "wk-not-one-of-ours"
INSTALL_TIMEOUT = 300        # seconds for a first install (then cached)
SDK_TIMEOUT = 20             # seconds an SDK script may take, retries of a refused request included
SOURCES = (topics.CLICKSTREAM, topics.PURCHASES, topics.SUPPORT)


def _setup(cmd: list, what: str, **kw) -> None:
    """Run one installation step; any failure skips the test, saying which step failed and the error it printed."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, stdin=subprocess.DEVNULL,
                           **kw)
    except subprocess.TimeoutExpired:
        pytest.skip(f"{what}: no result within {INSTALL_TIMEOUT} s (no network?)")
    except OSError as e:
        pytest.skip(f"{what}: cannot run {cmd[0]}: {e.strerror}")
    if p.returncode != 0:
        lines = [x.strip() for x in (p.stderr + "\n" + p.stdout).splitlines()]
        said = [x for x in lines if re.search(r"(?i)\berror\b", x) and not re.search(r"(?i)^npm error\s*$| at |log of this", x)]
        said = said or [x for x in lines if x]
        pytest.skip(f"{what} failed (exit {p.returncode}; no network?): {' | '.join(said[:4])[:700]}")


@pytest.fixture(scope="session")
def rudder_python() -> str:
    """The python of a venv with rudder-sdk-python==RUDDER_PIN, made once and cached."""
    venv = cache_dir() / f"rudder-venv-{RUDDER_PIN}-py{sys.version_info[0]}.{sys.version_info[1]}"
    python, done = venv / "bin" / "python", venv / ".journey-installed"
    with locked(venv.with_name(venv.name + ".lock")):
        if not (done.exists() and python.exists()):
            shutil.rmtree(venv, ignore_errors=True)
            _setup([sys.executable, "-m", "venv", str(venv)], f"creating the venv {venv}")
            _setup([str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--timeout",
                    "20", "--retries", "2", f"rudder-sdk-python=={RUDDER_PIN}"],
                   f"pip install rudder-sdk-python=={RUDDER_PIN} into {venv}")
            _setup([str(python), "-c", "import rudderstack.analytics"],
                   f"importing rudderstack.analytics in {venv}")
            done.write_text(f"rudder-sdk-python=={RUDDER_PIN}\n")
    return str(python)


@pytest.fixture(scope="session")
def node_sdk() -> tuple[str, str]:
    """(node, the node_modules holding @segment/analytics-node@NODE_SDK_PIN), installed once and cached."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip(f"{'node' if node is None else 'npm'} is not installed: the Node SDK test needs node >= 20 "
                    f"and npm (apt-get install nodejs npm)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    try:
        major = int(version.lstrip("v").split(".")[0])
    except ValueError:
        major = 0
    if major < 20:
        pytest.skip(f"node {version or '(no version)'} is too old: @segment/analytics-node {NODE_SDK_PIN} needs "
                    f"node >= 20")
    d = cache_dir() / f"analytics-node-{NODE_SDK_PIN}"
    modules, done = d / "node_modules", d / ".journey-installed"
    env = {**os.environ, "NODE_PATH": str(modules), "npm_config_update_notifier": "false"}
    with locked(d.with_name(d.name + ".lock")):
        if not done.exists():
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            (d / "package.json").write_bytes(orjson.dumps(
                {"name": "journey-test-node-sdk", "private": True,
                 "dependencies": {"@segment/analytics-node": NODE_SDK_PIN}}))
            _setup([npm, "install", "--no-audit", "--no-fund", "--fetch-timeout=20000", "--fetch-retries=1"],
                   f"npm install @segment/analytics-node@{NODE_SDK_PIN} into {d}", cwd=d, env=env)
            _setup([node, "-e", "require('@segment/analytics-node')"],
                   f"loading @segment/analytics-node from {modules}", cwd=d, env=env)
            done.write_text(f"@segment/analytics-node@{NODE_SDK_PIN}\n")
    return node, str(modules)


# -- the intake, and a recording proxy in front of it -----------------------------------------------------

class IntakeProcess:
    """``journey intake`` as a child process on a free port, with JOURNEY_WRITE_KEYS in its environment."""

    def __init__(self, broker: str, tmp_path: Path, keys: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "intake.log"
        env = {**os.environ, "JOURNEY_WRITE_KEYS": keys}
        self.proc = subprocess.Popen([sys.executable, "-m", "journey", "intake", "--broker", broker, "--port",
                                      str(self.port)], env=env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"journey intake exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"journey intake not ready (GET /ready == 200) within {timeout:.0f} s:\n{self.tail()}")

    def requests(self) -> dict:
        """journey_intake_requests_total as {(endpoint, status): count}."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == "journey_intake_requests_total":
                    out[(s.labels["endpoint"], s.labels["status"])] = s.value
        return out

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else "(no log)"

    def stop(self) -> int:
        return stop_process(self.proc, timeout=15)


HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "host",
       "content-length"}


class Tap:
    """A recording HTTP proxy between an SDK and the intake: each request as the SDK sent it (path, headers
    with lower-case names, body bytes as sent) with the intake's answer (status, body)."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        tap = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                tap._forward(self)

            def log_message(self, *_a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, name="tap", daemon=True).start()

    def _forward(self, h: BaseHTTPRequestHandler) -> None:
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(h.rfile.readline().split(b";")[0], 16)
                chunk = h.rfile.read(size + 2)[:size]
                if not size:
                    break
                body += chunk
        else:
            body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in h.headers.items() if k.lower() not in HOP}
        conn = http.client.HTTPConnection("127.0.0.1", self.target, timeout=20)
        try:
            conn.request("POST", h.path, body=body, headers=headers)
            r = conn.getresponse()
            status, answer, answer_headers = r.status, r.read(), r.getheaders()
        except OSError as e:
            status, answer, answer_headers = 502, repr(e).encode(), []
        finally:
            conn.close()
        with self._lock:
            self.requests.append({"path": h.path, "headers": {k.lower(): v for k, v in h.headers.items()},
                                  "body": body, "status": status, "answer": answer})
        h.send_response(status)
        for k, v in answer_headers:
            if k.lower() not in HOP | {"date", "server"}:
                h.send_header(k, v)
        h.send_header("Content-Length", str(len(answer)))
        h.end_headers()
        h.wfile.write(answer)

    def seen(self) -> list[dict]:
        with self._lock:
            return list(self.requests)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def intake(broker, tmp_path):
    """(the intake, a Tap in front of it): the intake takes KEY only."""
    p = IntakeProcess(broker, tmp_path, KEY)
    tap = None
    try:
        p.wait_ready()
        tap = Tap(p.port)
        yield p, tap
    finally:
        if tap is not None:
            tap.stop()
        code = p.stop()
        assert code == 0, f"journey intake did not stop cleanly ({code}):\n{p.tail()}"


def body_of(req: dict) -> dict:
    """A request's JSON body, decompressed where the SDK said it was gzip."""
    raw = req["body"]
    if req["headers"].get("content-encoding", "").lower() == "gzip":
        raw = gzip.decompress(raw)
    return orjson.loads(raw)


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def run_sdk(cmd: list, calls: list, write_key: str, tap: Tap, env: dict | None = None) -> tuple[dict, float]:
    """Run an SDK script (the calls, the write key and the tap's address as JSON on its stdin) to its end,
    within SDK_TIMEOUT; (what it printed last, as JSON; seconds it took)."""
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, input=orjson.dumps({"write_key": write_key, "host": tap.url, "calls": calls}),
                           capture_output=True, timeout=SDK_TIMEOUT, env=env)
    except subprocess.TimeoutExpired as e:
        answers = [r["status"] for r in tap.seen()]
        raise AssertionError(f"the SDK script ({cmd[1]}) was still running after {SDK_TIMEOUT} s, having sent "
                             f"{len(answers)} request(s), answered {answers}: still retrying? It said: "
                             f"{(e.stderr or b'')[-2000:].decode(errors='replace')}") from None
    took = time.monotonic() - t0
    assert p.returncode == 0, f"SDK script failed ({p.returncode}): {p.stderr[-3000:].decode(errors='replace')}"
    return orjson.loads(p.stdout.splitlines()[-1]), took


# -- what the rules should read of each call --------------------------------------------------------------

def want(ctype, cid=None, anon=None, fields=None, traits=None) -> dict:
    return {"type": ctype, "cid": cid, "anon": anon, "fields": fields or {}, "traits": traits}


def check_delivered(broker: str, intake: IntakeProcess, tap: Tap, sent: list[dict], wants: list[dict],
                    started_ms: int) -> dict:
    """Every message the SDK sent (``sent``: as the SDK gave them back, in call order) reached the intake in
    a 200 answer, is on the topic of its type exactly once, keyed by userId (else anonymousId), with
    receivedAt, its timestamp, its messageId and every other field as sent, and the worker's parser reads
    it as ``wants`` says. Returns {messageId: the message as it was on the wire}."""
    seen = tap.seen()
    assert seen, "the SDK sent nothing"
    assert [r["status"] for r in seen] == [200] * len(seen), \
        f"the intake answered {[(r['status'], r['answer'][:200]) for r in seen]}"
    wire, sent_at = {}, {}
    for r in seen:
        body = body_of(r)
        for m in body["batch"]:
            assert m["messageId"] not in wire, f"{m['messageId']} sent twice (a retry of an accepted request?)"
            wire[m["messageId"]] = m
            sent_at[m["messageId"]] = body.get("sentAt")
    ids = [m["messageId"] for m in sent]
    assert len(set(ids)) == len(ids) and all(isinstance(i, str) and i for i in ids), ids
    assert set(wire) == set(ids), f"on the wire {sorted(wire)}, the SDK gave {sorted(ids)}"

    t1 = int(time.time() * 1000)
    found: dict[str, list] = {}
    for topic in SOURCES:
        for key, value, _p, _o, _h in read_topic(broker, topic, idle_ms=300, timeout=20):
            v = orjson.loads(value)
            found.setdefault(v.get("messageId"), []).append((topic, key, value, v))
    dead = read_topic(broker, topics.DEADLETTER, idle_ms=300, timeout=20)
    assert dead == [], f"dead-lettered: {[orjson.loads(v).get('reason') for _k, v, *_ in dead]}"
    assert set(found) == set(ids), f"on the topics {sorted(found)}, sent {sorted(ids)}"

    for mid, w in zip(ids, wants):
        m = wire[mid]
        assert len(found[mid]) == 1, f"{mid} is {len(found[mid])} times on the topics"
        topic, key, value, v = found[mid][0]
        what = f"{m['type']} {m.get('event', '')} {mid}"
        assert topic == topics.topic_for(w["type"]), f"{what} on {topic}"
        assert key == (m.get("userId") or m.get("anonymousId")).encode(), f"{what} keyed {key!r}"
        assert started_ms - 1000 <= parse_time(v["receivedAt"]) <= t1 + 1000, f"{what}: receivedAt {v['receivedAt']}"
        assert v["timestamp"] == m["timestamp"] and v["messageId"] == mid, what
        assert v.get("sentAt") == (m.get("sentAt") or sent_at[mid]), what
        assert "writeKey" not in v, what
        # nothing the SDK sent is lost or changed: the record is the message plus receivedAt (and the batch's sentAt)
        rest = {k: x for k, x in v.items() if k not in ("receivedAt", "sentAt")}
        assert rest == {k: x for k, x in m.items() if k != "sentAt"}, f"{what}: {rest} != {m}"
        ev = parse(value)
        got = {"type": ev.type, "cid": ev.cid, "anon": ev.anon, "fields": ev.f, "traits": ev.traits}
        assert got == w, f"{what}: the worker reads {got}, expected {w}"
        assert ev.id == mid and ev.ts == parse_time(m["timestamp"]), what

    counts = intake.requests()
    assert counts == {("batch", "200"): float(len(seen))}, f"/metrics requests {counts}, {len(seen)} requests sent"
    return wire


def check_refused(broker: str, intake: IntakeProcess, tap: Tap, calls: int, wrong: str) -> list[dict]:
    """A wrong write key: each request answered 401 once (no message sent twice: the SDK did not retry),
    counted as 401 only, and nothing on any topic. Returns the requests."""
    seen = tap.seen()
    assert seen, "the SDK sent nothing"
    assert [r["status"] for r in seen] == [401] * len(seen), [(r["status"], r["answer"][:200]) for r in seen]
    ids = [m["messageId"] for r in seen for m in body_of(r)["batch"]]
    assert len(ids) == calls and len(set(ids)) == calls, f"{len(seen)} requests carried {len(ids)} messages " \
                                                         f"({len(set(ids))} distinct) of {calls}: a retry?"
    for r in seen:
        assert r["headers"].get("authorization") == basic(wrong)
        answer = orjson.loads(r["answer"])
        assert answer["success"] is False and answer["code"] and answer["message"], answer
    counts = intake.requests()
    assert counts == {("batch", "401"): float(len(seen))}, counts
    for topic in (*SOURCES, topics.DEADLETTER):
        assert read_topic(broker, topic, idle_ms=300, timeout=20) == [], f"{topic} got records"
    return seen


# -- RudderStack's Python SDK -----------------------------------------------------------------------------

RUDDER_SCRIPT = r"""
import json, sys
from rudderstack.analytics import Client

cfg = json.load(sys.stdin)
errors = []

def on_error(e, batch):
    errors.append({"type": type(e).__name__, "status": getattr(e, "status", None), "code": getattr(e, "code", None),
                   "messages": len(batch)})

client = Client(cfg["write_key"], host=cfg["host"], on_error=on_error)   # the defaults an app has (gzip, 10 retries)
sent = []
for c in cfg["calls"]:
    c = dict(c)
    ok, msg = getattr(client, c.pop("call"))(**c)
    assert ok, msg
    sent.append(msg)
client.flush()
print(json.dumps({"sent": sent, "errors": errors}))
"""

RUDDER_CALLS = [
    ({"call": "identify", "user_id": "r-ada",
      "traits": {"timezone": "Europe/Paris", "consent": {"email": True, "sms": False}, "birthday": "1990-04-12",
                 "email": "ada@example.com"}},
     want("profile.updated", "r-ada",
          traits={"timezone": "Europe/Paris", "consent": {"email": True, "sms": False}, "birthday": "04-12"})),
    ({"call": "track", "user_id": "r-ada", "event": "Product Viewed", "properties": {"product_id": "p-1", "name": "Lamp"}},
     want("product.viewed", "r-ada", fields={"product_id": "p-1"})),
    ({"call": "track", "user_id": "r-ada", "event": "Order Completed",
      "properties": {"order_id": "o-1", "revenue": 59.9, "currency": "EUR", "products": [{"product_id": "p-1"}]}},
     want("order.completed", "r-ada", fields={"order_id": "o-1", "revenue": 5990, "currency": "EUR"})),
    ({"call": "identify", "user_id": "r-bo", "traits": {"timezone": "America/New_York", "consent": {"email": False}}},
     want("profile.updated", "r-bo", traits={"timezone": "America/New_York", "consent": {"email": False}})),
    ({"call": "track", "user_id": "r-bo", "event": "Order Completed", "properties": {"order_id": 1042, "total": 12.5}},
     want("order.completed", "r-bo", fields={"order_id": "1042", "revenue": 1250})),
    ({"call": "track", "user_id": "r-bo", "event": "Ticket Opened", "properties": {"ticket_id": "t-7", "priority": "High"}},
     want("ticket.opened", "r-bo", fields={"ticket_id": "t-7", "priority": "high"})),
    ({"call": "track", "anonymous_id": "r-visitor-9", "event": "Product Viewed", "properties": {"product_id": "p-2"}},
     want("product.viewed", anon="r-visitor-9", fields={"product_id": "p-2"})),
    ({"call": "track", "anonymous_id": "r-visitor-9", "event": "Product Added",
      "properties": {"product_id": "p-2", "price": 19.99}},
     want("cart.product_added", anon="r-visitor-9", fields={"product_id": "p-2", "price": 1999})),
    ({"call": "track", "user_id": "r-cy", "event": "Order Refunded", "properties": {"order_id": "o-9", "revenue": 5}},
     want("order.refunded", "r-cy", fields={"order_id": "o-9", "revenue": 500})),
]


def _rudder(rudder_python, tmp_path, tap, key):
    script = tmp_path / "rudder_send.py"
    script.write_text(RUDDER_SCRIPT)
    return run_sdk([rudder_python, str(script)], [c for c, _w in RUDDER_CALLS], key, tap)


def test_rudder_python_sdk_through_the_intake(rudder_python, broker, intake, tmp_path):
    p, tap = intake
    t0 = int(time.time() * 1000)
    out, _took = _rudder(rudder_python, tmp_path, tap, KEY)
    assert out["errors"] == [], out["errors"]
    sent = out["sent"]
    assert len(sent) == len(RUDDER_CALLS)

    # what rudder-sdk-python 2.1.9 sends: /v1/batch, gzip, HTTP Basic with the write key, no writeKey in the body,
    # and an identify's traits only in context.traits
    for r in tap.seen():
        assert r["path"] == "/v1/batch", r["path"]
        assert r["headers"].get("content-encoding") == "gzip" and r["body"][:2] == b"\x1f\x8b"
        assert r["headers"].get("authorization") == basic(KEY)
        body = body_of(r)
        assert "writeKey" not in body and body.get("sentAt"), sorted(body)
    wire = check_delivered(broker, p, tap, sent, [w for _c, w in RUDDER_CALLS], t0)
    identifies = [m for m in wire.values() if m["type"] == "identify"]
    assert identifies and all("traits" not in m and m["context"]["traits"] for m in identifies)


def test_rudder_python_sdk_wrong_write_key(rudder_python, broker, intake, tmp_path):
    p, tap = intake
    out, took = _rudder(rudder_python, tmp_path, tap, WRONG)
    # the SDK is told, for every message, and gives up at once (an answer without Segment's code/message it
    # would take for a network failure and retry 10 times over minutes)
    assert out["errors"] and all(e["type"] == "APIError" and e["status"] == 401 for e in out["errors"]), out["errors"]
    assert sum(e["messages"] for e in out["errors"]) == len(RUDDER_CALLS)
    check_refused(broker, p, tap, len(RUDDER_CALLS), WRONG)
    assert took < 10, f"the SDK took {took:.1f} s to give up"


# -- Segment's Node SDK -----------------------------------------------------------------------------------

NODE_SCRIPT = r"""
const { Analytics } = require('@segment/analytics-node');
let input = '';
process.stdin.on('data', (d) => { input += d; });
process.stdin.on('end', () => {
  const cfg = JSON.parse(input);
  const analytics = new Analytics({ writeKey: cfg.write_key, host: cfg.host, flushInterval: 200 });
  const results = cfg.calls.map(() => null);
  const done = cfg.calls.map(({ call, ...params }, i) => new Promise((resolve) => {
    analytics[call](params, (err, ctx) => {
      results[i] = { event: ctx ? ctx.event : null, error: err ? String(err.reason || err) : null };
      resolve();
    });
  }));
  analytics.closeAndFlush({ timeout: 15000 })
    .then(() => Promise.all(done))
    .then(() => { console.log(JSON.stringify({ results })); });
});
"""

NODE_CALLS = [
    ({"call": "identify", "userId": "n-dee",
      "traits": {"timezone": "America/Los_Angeles", "consent": {"email": True, "push": False}, "locale": "en-US",
                 "name": "Dee"}},
     want("profile.updated", "n-dee",
          traits={"timezone": "America/Los_Angeles", "consent": {"email": True, "push": False}, "locale": "en-US"})),
    ({"call": "track", "userId": "n-dee", "event": "Order Completed",
      "properties": {"order_id": "no-1", "revenue": 19.99, "currency": "USD"}},
     want("order.completed", "n-dee", fields={"order_id": "no-1", "revenue": 1999, "currency": "USD"})),
    ({"call": "page", "anonymousId": "n-visitor-5", "name": "Pricing", "properties": {"path": "/pricing"}},
     want("page.viewed", anon="n-visitor-5")),
    ({"call": "track", "anonymousId": "n-visitor-5", "event": "Product Viewed", "properties": {"product_id": "sku-9"}},
     want("product.viewed", anon="n-visitor-5", fields={"product_id": "sku-9"})),
    ({"call": "alias", "userId": "n-dee", "previousId": "n-visitor-5"},
     want("profile.updated", "n-dee", anon="n-visitor-5", traits={})),
    ({"call": "page", "userId": "n-eve", "name": "Home"},
     want("page.viewed", "n-eve")),
    ({"call": "track", "userId": "n-eve", "event": "Checkout Started", "properties": {"checkout_id": "c-1", "value": 30}},
     want("checkout.started", "n-eve", fields={"checkout_id": "c-1", "value": 3000})),
    ({"call": "track", "userId": "n-eve", "event": "Survey Answered", "properties": {"nps": 9}},
     want("survey.answered", "n-eve", fields={"nps": 9})),
]


def _node(node_sdk, tmp_path, tap, key):
    node, modules = node_sdk
    script = tmp_path / "node_send.js"
    script.write_text(NODE_SCRIPT)
    env = {**os.environ, "NODE_PATH": modules}
    return run_sdk([node, str(script)], [c for c, _w in NODE_CALLS], key, tap, env=env)


def test_node_sdk_through_the_intake(node_sdk, broker, intake, tmp_path):
    p, tap = intake
    t0 = int(time.time() * 1000)
    out, _took = _node(node_sdk, tmp_path, tap, KEY)
    results = out["results"]
    assert [r["error"] for r in results] == [None] * len(NODE_CALLS), results

    # what @segment/analytics-node 3.1.0 sends: /v1/batch, not compressed, HTTP Basic with the write key and
    # the write key in the body too
    for r in tap.seen():
        assert r["path"] == "/v1/batch", r["path"]
        assert "content-encoding" not in r["headers"] and r["body"][:1] == b"{"
        assert r["headers"].get("authorization") == basic(KEY)
        body = body_of(r)
        assert body.get("writeKey") == KEY and body.get("sentAt"), sorted(body)
    check_delivered(broker, p, tap, [r["event"] for r in results], [w for _c, w in NODE_CALLS], t0)


def test_node_sdk_wrong_write_key(node_sdk, broker, intake, tmp_path):
    p, tap = intake
    out, took = _node(node_sdk, tmp_path, tap, WRONG)
    errors = [r["error"] for r in out["results"]]
    assert all(e and "401" in e for e in errors), errors
    check_refused(broker, p, tap, len(NODE_CALLS), WRONG)
    assert took < 10, f"the SDK took {took:.1f} s to give up"


# -- the error answers' shape, without Kafka ----------------------------------------------------------------

def test_error_answers_carry_segment_code_and_message():
    """Segment's SDKs read ``code`` and ``message`` from an answer that is not 200 (rudder-sdk-python's
    ``APIError(status, payload['code'], payload['message'])``): without them it takes a 401 for a network
    failure and retries it."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from journey.intake.keys import WriteKeys
    from journey.intake.service import Intake

    async def go():
        i = Intake("kafka://127.0.0.1:9", WriteKeys(KEY))
        app = web.Application()
        app.router.add_post("/v1/batch", i._handler("batch"))
        answers = []
        async with TestClient(TestServer(app)) as client:
            r = await client.post("/v1/batch", data=b"{}")                         # Kafka not up yet
            answers.append((r.status, await r.json()))
            i.kafka_up = True
            r = await client.post("/v1/batch", data=b"{}", headers={"Authorization": basic(WRONG)})
            answers.append((r.status, await r.json()))
            r = await client.post("/v1/batch", data=b'{"batch": []}')              # no key at all
            answers.append((r.status, await r.json()))
            r = await client.post("/v1/batch", data=b"nope", headers={"Authorization": basic(KEY)})
            answers.append((r.status, await r.json()))
        return answers

    answers = asyncio.run(go())
    assert [s for s, _ in answers] == [503, 401, 401, 400]
    for status, a in answers:
        assert a["success"] is False and isinstance(a["code"], str) and a["code"], (status, a)
        assert isinstance(a["message"], str) and a["message"] == a["error"], (status, a)
    assert [a["code"] for _s, a in answers] == ["unavailable", "invalid_write_key", "invalid_write_key", "bad_request"]
