"""``journey demo``: the whole live path on one machine, in accelerated time.

An embedded broker (unless ``--broker``), the topics, one worker (a child
process running ``journey worker``), the HTTP intake (a child process running
``journey intake``), and a feeder that sends a synthetic population (visitors
who abandon carts, loyal repeat buyers, customers with support trouble,
promoters, detractors) through the intake with Segment's own Python SDK, as an
app would, with event times running ``--speed`` times faster than the wall
clock. The customers answer the messages they get (deliveries, opens at their own favourite hours,
clicks, a few unsubscribes: section 9's engagement events, sent through the intake too), and the
worker runs the example rule file with section 9's contact decisions on (send time on two rules, a
5-minute arbitration window, a daily cap), so deferred ``send_time`` and ``outranked`` lines appear. Triggers and held-back
triggers are printed as they appear on ``journey.triggers`` and
``journey.audit``. The example rule file runs experiments (holdouts on two rules),
and the customers react to them through the reaction model of
``journey/examples/demo.reactions.toml`` (the one ``journey simulate`` uses): for
each exposure the demo sees (a trigger sent, or held out), the customer places an
order within the window with the model's probability for that rule, arm and stage,
fed into the stream like their other events. The outcomes the worker writes to
``journey.outcomes`` are tallied as they come, and the demo ends, at the end of the
population or on Ctrl-C, with the experiment report: the measured effect of each
arm by relationship stage. Ctrl-C stops the feeder, the worker and the broker.
"""

from __future__ import annotations

import asyncio
import atexit
import heapq
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time

import orjson

from .core.timeutil import format_time, parse_time
from .core.uplift import Tally
from .examples import JOURNEYS
from .history.synth import generate
from .intake.segment import as_segment
from .io import connection, topics
from .io.kafka import bootstrap, ensure_topics
from .live.broker import EmbeddedBroker, free_port, spawn_intake, spawn_worker

BOLD, DIM, RED, GREEN, YELLOW, RESET = "\033[1m", "\033[2m", "\033[31m", "\033[32m", "\033[33m", "\033[0m"


def _paint(enabled: bool):
    def paint(code: str, text: str) -> str:
        return f"{code}{text}{RESET}" if enabled else text
    return paint


def run_demo(a) -> int:
    workdir = tempfile.mkdtemp(prefix="journey-demo-")
    broker = None
    worker = None
    intake = None
    failed = False
    paint = _paint(sys.stdout.isatty())
    tally = Tally()
    counts = {"events": 0, "triggers": 0, "held back": 0}
    reacts = None if a.rules else Reacting(a.seed)  # the reaction model fits the example experiments only
    try:
        env = {"NO_COLOR": "1", "TERM": "dumb"}
        args: tuple = ()
        if a.broker:  # a broker of one's own: its connection settings (flags, environment, properties file)
            conn = connection.from_args(a, "demo")
            url = a.broker
            if getattr(a, "kafka_config", None):
                args = ("--kafka-config", a.kafka_config)
        else:  # the embedded broker speaks plaintext, whatever the environment says for other brokers
            conn = connection.PLAINTEXT
            env.update({k: "" for k in os.environ if k.startswith(connection.ENV)})
            print(paint(DIM, "starting the embedded broker (Tansu) ..."), flush=True)
            broker = EmbeddedBroker(log_path=os.path.join(workdir, "broker.log")).start()
            url = broker.url
        a.conn = conn
        asyncio.run(ensure_topics(url, conn=conn))
        port = free_port()
        rules = a.rules
        if not rules:  # the example journeys, with section 9's contact decisions on
            rules = os.path.join(workdir, "demo.rules.toml")
            with open(rules, "w", encoding="utf-8") as f:
                f.write(JOURNEYS.read_text(encoding="utf-8") + DEMO_CONTACT)
        worker = spawn_worker(url, web_port=port, store="memory://", rules=rules,
                              data_dir=os.path.join(workdir, "data"), log_path=os.path.join(workdir, "worker.log"),
                              extra_env=env, args=args)
        a.write_key = secrets.token_urlsafe(18)
        a.intake_port = free_port()
        intake = spawn_intake(url, port=a.intake_port, write_keys=a.write_key, extra_env=env, args=args,
                              log_path=os.path.join(workdir, "intake.log"))
        _wait_ready(intake, a.intake_port)
        print(paint(DIM, f"broker {url} · worker health http://127.0.0.1:{port}/ready · intake "
                         f"http://127.0.0.1:{a.intake_port}/v1/batch (Segment's SDK) · logs in {workdir} "
                         "(removed at the end unless something failed)"))
        print(paint(DIM, f"feeding {a.customers} customers, {a.speed:,.0f}x real time; Ctrl-C to stop"), flush=True)
        print(paint(DIM, _HEADER), flush=True)
        asyncio.run(_run(url, a, paint, worker, tally, reacts, counts))
        _summary(counts, reacts, paint)
        _report(tally, paint)
        return 0
    except KeyboardInterrupt:
        print(paint(DIM, "\nstopping ..."), file=sys.stderr)
        _summary(counts, reacts, paint)
        _report(tally, paint)
        return 0
    except RuntimeError as e:
        failed = True
        print(f"journey demo: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
        for child in (intake, worker):
            if child is not None and child.poll() is None:
                child.terminate()
                try:
                    child.wait(20)
                except Exception:
                    child.kill()
                    child.wait(5)
        if broker is not None:
            broker.stop()
        if failed:
            print(paint(DIM, f"logs kept in {workdir}"), file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)


class Reacting:
    """The customers' reactions to the experiments: orders to feed, by event time."""

    def __init__(self, seed: int):
        from .history.simulate import load_reactions
        from .io.rulefile import load_config

        self.model = load_reactions(DEMO_REACTIONS)
        self.windows = {n: e.window for n, e in load_config(JOURNEYS).experiments.items()}
        self.seed = seed
        self.pending: list[tuple[int, str, dict]] = []   # (ts, id, record) orders still to feed
        self.now = 0                                     # the event time fed so far
        self.orders = 0
        self.answers = 0                                 # engagement events: deliveries, opens, clicks, ...

    def answered(self, cid: str, tid: str, channel: str, at: int) -> None:
        """A trigger the customer got: the messaging system reports what became of it (section 9's
        engagement events): delivered, opened at the customer's own favourite hour (so send time
        learns it), sometimes clicked, and now and then an unsubscribe."""
        r = random.Random(f"{self.seed}/answer/{tid}")
        hour = random.Random(f"{self.seed}/hour/{cid}").choice((7, 8, 12, 13, 18, 19, 20, 21))

        def emit(kind: str, ts: int, **props) -> None:
            ts = max(ts, self.now + 1)   # never behind what was fed already
            rec = {"id": f"{kind}-{tid}", "customer_id": cid, "type": kind, "ts": format_time(ts),
                   "props": {"channel": channel, **props}}
            heapq.heappush(self.pending, (ts, rec["id"], rec))
            self.answers += 1
        if r.random() < 0.9:
            emit("message.delivered", at + 5 * 60_000, trigger_id=tid)
        if r.random() < 0.45:
            day = (at // 86_400_000 + 1) * 86_400_000 if r.random() < 0.5 else (at // 86_400_000) * 86_400_000
            opened = max(at + 10 * 60_000, day + hour * 3_600_000 + r.randint(0, 59) * 60_000)
            emit("message.opened", opened, trigger_id=tid)
            if r.random() < 0.3:
                emit("message.clicked", opened + r.randint(1, 10) * 60_000, trigger_id=tid)
        if r.random() < 0.005:
            emit("message.unsubscribed", at + 30 * 60_000)

    def exposed(self, rule: str, arm: str, stage: str, cid: str, tid: str, at: int) -> None:
        reaction, window = self.model.rules.get(rule), self.windows.get(rule)
        if reaction is None or window is None:
            return
        r = random.Random(f"{self.seed}/{tid}")
        if r.random() >= reaction.p(arm, stage or "prospect"):
            return
        lo = max(at, self.now + 1)  # never behind what was fed already
        if lo >= at + window:
            return  # the window passed while the trigger was on its way
        ts = lo + int(r.random() * (at + window - lo))
        rec = {"id": f"react-{tid}", "customer_id": cid, "type": "order.completed", "ts": format_time(ts),
               "props": {"order_id": f"react-{tid}", "revenue": round(r.uniform(20, 120), 2)}}
        heapq.heappush(self.pending, (ts, rec["id"], rec))
        self.orders += 1


DEMO_REACTIONS = JOURNEYS.with_name("demo.reactions.toml")
# the demo's contact decisions (domain.md section 9): the customers' answers teach send time its hours,
# and triggers coming due within 5 minutes of each other compete (the losers show as outranked)
DEMO_CONTACT = """

# -- journey demo: contact decisions (section 9) ---------------------------------------------
[policy]
arbitration_window = "5m"
max_per_day = 2

[rules.first_purchase]
send_time = "optimal"

[rules.order_milestone]
send_time = "optimal"
"""


async def _run(url: str, a, paint, worker, tally: Tally, reacts: Reacting | None, counts: dict) -> dict:
    stop = asyncio.Event()
    feeder = asyncio.create_task(_feed(url, a, counts, stop, reacts))
    printer = asyncio.create_task(_print(url, paint, counts, stop, tally, reacts, a.conn))
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


async def _feed(url: str, a, counts: dict, stop: asyncio.Event, reacts: Reacting | None) -> None:
    import segment.analytics as sa

    # the population's half year ends about now: events stamped ahead of the clock would be
    # dead-lettered as future_time (the worker trusts no clock ahead of its own)
    start = int(time.time() * 1000) - 200 * 86_400_000
    items = sorted(generate(a.customers, a.customers * 30, a.seed, start), key=lambda x: x[0])

    def failed(_error, batch):
        counts["not sent"] = counts.get("not sent", 0) + len(batch)
    # as an app sends them: Segment's SDK, batches of up to 100 every 0.1 s, retried on 503 and 429
    client = sa.Client(a.write_key, host=f"http://127.0.0.1:{a.intake_port}", upload_interval=0.1,
                       on_error=failed)
    t0 = time.monotonic()
    pending = reacts.pending if reacts is not None else []
    try:
        for ts, _stream, rec in _merged(items, pending):
            if stop.is_set():
                break
            due = (ts - start) / 1000.0 / a.speed
            wait = due - (time.monotonic() - t0)
            if wait > 0.005:
                await asyncio.sleep(wait)
            if reacts is not None:
                reacts.now = ts
            try:
                sdk_send(client, as_segment(rec))
            except Exception:  # a record the SDK refuses (the population's deliberately broken ones)
                counts["not sent"] = counts.get("not sent", 0) + 1
                continue
            counts["events"] += 1
        # until the SDK has sent everything (its own thread: a Ctrl-C while it waits must not wait for it)
        flushing = threading.Thread(target=client.flush, daemon=True)
        flushing.start()
        while flushing.is_alive():
            await asyncio.sleep(0.1)
        counts["fed_at"] = time.monotonic()
    finally:
        for consumer in client.consumers or ():
            consumer.pause()  # its upload threads are daemons: stopping does not wait for their retries
        atexit.unregister(client.join)  # (the SDK joins them at exit: a retry in backoff would hold the exit)


def _wait_ready(proc, port: int, timeout: float = 60.0) -> None:
    """Until the intake answers /ready (it waits for the broker itself); its exit ends the demo."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the intake stopped (exit code {proc.returncode}); see its log")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the intake was not ready within {timeout:.0f} s; see its log")


def sdk_send(client, msg: dict) -> None:
    """Hand one Segment message (:func:`journey.intake.segment.as_segment`) to a Segment SDK client
    (``segment.analytics.Client``), as an app's code would call it."""
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(parse_time(msg["timestamp"]) / 1000, UTC)
    who = {"user_id": msg.get("userId"), "anonymous_id": msg.get("anonymousId"), "timestamp": when,
           "message_id": msg.get("messageId")}
    call = msg["type"]
    if call == "track":
        client.track(event=msg["event"], properties=msg.get("properties") or {}, **who)
    elif call == "identify":
        client.identify(traits=msg.get("traits") or {}, **who)
    elif call == "page":
        client.page(name=msg.get("name"), properties=msg.get("properties") or {}, **who)
    elif call == "screen":
        client.screen(name=msg.get("name"), properties=msg.get("properties") or {}, **who)
    elif call == "alias":
        client.alias(previous_id=msg["previousId"], user_id=msg["userId"], timestamp=when,
                     message_id=msg.get("messageId"))
    elif call == "group":
        client.group(group_id=msg.get("groupId"), traits=msg.get("traits") or {}, **who)
    else:
        raise ValueError(f"not a Segment call: {call!r}")


def _merged(items, pending: list):
    """The population's events with the reaction orders (pushed while feeding), by event time."""
    for item in items:
        while pending and pending[0][0] <= item[0]:
            ts, _id, rec = heapq.heappop(pending)
            yield ts, topics.PURCHASES, rec
        yield item


async def _print(url: str, paint, counts: dict, stop: asyncio.Event, tally: Tally, reacts: Reacting | None,
                 conn) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topics.TRIGGERS, topics.AUDIT, topics.OUTCOMES, bootstrap_servers=bootstrap(url),
                                group_id=None, auto_offset_reset="earliest", **conn.client_options())
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500)
            rows = []
            width = shutil.get_terminal_size((200, 24)).columns if sys.stdout.isatty() else None
            for tp, recs in batch.items():
                for r in recs:
                    rec = orjson.loads(r.value)
                    if tp.topic == topics.OUTCOMES:
                        tally.add(rec)
                        continue
                    if reacts is not None:
                        _react(reacts, tp.topic, rec)
                    if tp.topic == topics.TRIGGERS:
                        counts["triggers"] += 1
                        rows.append((rec["time"], _trigger_line(rec, paint, width)))
                    else:
                        counts["held back"] += 1
                        rows.append((rec["time"], _audit_line(rec, paint, width)))
            rows.sort(key=lambda x: x[0])  # partitions arrive batch by batch: show them in time order
            for _t, line in rows:
                print(line)
            sys.stdout.flush()
    finally:
        await consumer.stop()


def _react(reacts: Reacting, topic: str, rec: dict) -> None:
    """An exposure: a trigger of an experiment sent, or one held out; and the answers to a trigger."""
    if topic == topics.TRIGGERS:
        d = rec.get("data") or {}
        if d.get("customer_id"):
            reacts.answered(d["customer_id"], rec["id"], d.get("channel") or "email", parse_time(rec["time"]))
        exp = d.get("experiment")
        if exp:
            reacts.exposed(d["rule"], exp["variant"], (d.get("relationship") or {}).get("stage"), d["customer_id"],
                           rec["id"], parse_time(rec["time"]))
    elif rec.get("reason") == "holdout" and rec.get("experiment"):
        reacts.exposed(rec["rule"], "holdout", rec.get("stage"), rec["customer_id"], rec["trigger_id"],
                       parse_time(rec["time"]))


_HEADER = f"{'time (UTC)':<16}  {'what':<11} {'rule':<19} {'customer':<14} {'chan':<6} reason"


def _fit(text: str, room: int | None) -> str:
    if room is None or len(text) <= room:
        return text
    return text[:max(0, room - 1)] + "…"


def _trigger_line(ce: dict, paint, width: int | None = None) -> str:
    """One row: time, kind, rule, customer, channel, then the reason (cut to the terminal's width)."""
    d = ce["data"]
    colour = RED if d["kind"] == "recovery" else GREEN
    rel = d.get("relationship") or {}
    arm = f", arm {(d.get('experiment') or {}).get('variant')}" if d.get("experiment") else ""
    head = (f"{ce['time'][:16].replace('T', ' ')}  {paint(colour, format(d['kind'], '<11'))} "
            f"{paint(BOLD, format(d['rule'], '<19'))} {d['customer_id']:<14} {d['channel']:<6} ")
    tail = f"  [{rel.get('stage')}, health {rel.get('health')}{arm}]"
    used = 16 + 2 + 11 + 1 + 19 + 1 + 14 + 1 + 6 + 1
    room = None if width is None else max(10, width - used - len(tail))
    return head + _fit(d["reason"], room) + paint(DIM, tail)


def _audit_line(a: dict, paint, width: int | None = None) -> str:
    what = "deferred" if a.get("deferred_until") else "held back"
    head = f"{a['time'][:16].replace('T', ' ')}  {what:<11} {a['rule']:<19} {a['customer_id']:<14} {'':<6} "
    text = f"{a['reason']}: {a.get('detail', '')}"
    return paint(YELLOW, head + _fit(text, None if width is None else max(10, width - len(head))))


def _summary(counts: dict, reacts, paint) -> None:
    orders = (f" · {reacts.orders:,} orders placed in reaction to experiments · {reacts.answers:,} answers to "
              "messages (delivered, opened, clicked, unsubscribed)" if reacts is not None else "")
    lost = f" · {counts['not sent']:,} the SDK could not send (see the intake's log)" if counts.get("not sent") else ""
    print(paint(BOLD, f"\n{counts['events']:,} events sent through the intake · {counts['triggers']:,} triggers · "
                      f"{counts['held back']:,} held back or deferred{orders}{lost}"))



def _report(tally: Tally, paint) -> None:
    from .history.report import format_report

    if not tally.cells:
        print(paint(DIM, "no experiment outcomes yet: an exposure closes when its goal window (3 to 7 days of "
                         "event time) has passed; let the demo run longer"))
        return
    print(paint(BOLD, "\nexperiments: the measured effect of each arm, by relationship stage "
                      "(journey experiments report)"))
    print(format_report(tally.rows(), "stage", tally.bad))
