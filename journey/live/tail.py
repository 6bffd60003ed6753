"""``journey tail TOPIC``: a Kafka topic's records, one readable line each.

Each line: the record's time (its Kafka timestamp, UTC), partition/offset, key, and the
value as compact JSON; a trigger (a CloudEvent on ``journey.triggers``) as a short summary
instead: its rule (and step), kind, channel, priority, offer, experiment arm, reason and
id. ``--json``: each value alone, as one JSON line (what the topic holds).

By default the last N records of the topic (``-n``, 10; across its partitions, by time);
``--from-beginning``: all of them. ``--follow`` then keeps printing new records until
Ctrl-C (or SIGTERM), which ends it cleanly with exit code 0. The read is a plain consumer
without a group: it commits nothing and disturbs no one."""

from __future__ import annotations

import asyncio
import signal
import sys

import orjson

from ..core.timeutil import format_time
from ..io import connection, topics
from ..io.errors import what as _what

VALUE_MAX = 2000   # characters of a value that is not JSON shown on a line


def resolve(name: str) -> str:
    """A catalogue topic by its full name or its short one (``triggers`` for journey.triggers,
    with the topic prefix); anything else as given."""
    names = {t["name"] for t in topics.catalog()}
    if name in names:
        return name
    for guess in (topics.PREFIX + "journey." + name, topics.PREFIX + name):
        if guess in names:
            return guess
    return name


def _text(b: bytes | None) -> str:
    if b is None:
        return "-"
    s = b.decode("utf-8", errors="replace")
    return s if s.isprintable() and " " not in s and s else orjson.dumps(s).decode()


def summary(value) -> str | None:
    """A trigger's short summary; None for anything else."""
    if not (isinstance(value, dict) and value.get("specversion") and isinstance(value.get("data"), dict)
            and isinstance(value.get("type"), str) and value["type"].startswith("journey.")):
        return None
    d = value["data"]
    rule = str(d.get("rule", "?")) + (f"/{d['step']}" if d.get("step") else "")
    parts = [f"trigger {rule}"]
    if value["type"] == "journey.privacy.erased":
        parts.append("(erasure)")
    else:
        how = ", ".join(str(x) for x in (d.get("kind"), d.get("channel"), d.get("priority")) if x)
        parts.append(f"({how})")
        offer = d.get("offer")
        if isinstance(offer, dict) and offer:
            kind = offer.get("type")
            rest = {k: v for k, v in offer.items() if k != "type"}
            parts.append("offer " + (str(kind) if kind else "") + (" " + orjson.dumps(rest).decode() if rest else ""))
        exp = d.get("experiment")
        if isinstance(exp, dict):
            parts.append(f"experiment {exp.get('name')}={exp.get('variant')}")
        if d.get("deferred_from"):
            parts.append(f"deferred from {d['deferred_from']}")
    if d.get("reason"):
        parts.append(f"— {d['reason']}")
    parts.append(f"[id {value.get('id')}]")
    return " ".join(parts)


def line(rec, as_json: bool) -> str:
    """One record as the line printed."""
    raw = rec.value
    try:
        value = orjson.loads(raw) if raw is not None else None
        is_json = raw is not None
    except orjson.JSONDecodeError:
        value, is_json = None, False
    if as_json:
        if is_json:
            return orjson.dumps(value).decode()
        return orjson.dumps(raw.decode("utf-8", errors="replace") if raw is not None else None).decode()
    if raw is None:
        shown = "(tombstone: no value)"
    elif is_json:
        shown = summary(value) or orjson.dumps(value).decode()
    else:
        text = raw.decode("utf-8", errors="replace")
        shown = orjson.dumps(text[:VALUE_MAX]).decode() + (f" (+{len(text) - VALUE_MAX} more)"
                                                            if len(text) > VALUE_MAX else "")
    ts = format_time(rec.timestamp) if rec.timestamp is not None and rec.timestamp >= 0 else "-"
    return f"{ts}  {rec.partition}/{rec.offset}  {_text(rec.key)}  {shown}"


def _order(r) -> tuple:
    return (r.timestamp if r.timestamp is not None else -1, r.partition, r.offset)


async def tail(broker: str, topic: str, conn, last: int | None, follow: bool, as_json: bool, out,
               timeout: float = 30.0) -> int:
    """Print the records (``last``: the last N; None: from the beginning), then follow if asked."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from ..io.kafka import bootstrap, read_to_end, start_client  # here: the parser imports this module

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap(broker), group_id=None, enable_auto_commit=False,
                         auto_offset_reset="earliest", request_timeout_ms=int(timeout * 1000) + 1000,
                         **conn.client_options())
    await start_client(c.start, timeout, conn, broker)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    try:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    except (NotImplementedError, RuntimeError):
        pass

    def emit(recs) -> None:
        for r in recs:
            out.write(line(r, as_json) + "\n")
        out.flush()

    try:
        present = await c.topics()
        if topic not in present:
            known = sorted(t for t in present if not t.startswith("__"))
            print(f"journey tail: the broker at {broker} has no topic {topic!r}"
                  + (f" (it has: {', '.join(known[:20])}{', ...' if len(known) > 20 else ''})" if known else ""),
                  file=sys.stderr)
            return 1
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
        c.assign(tps)
        if last is None:
            await c.seek_to_beginning(*tps)
        else:
            begins = await c.beginning_offsets(tps)
            ends = await c.end_offsets(tps)
            for tp in tps:
                c.seek(tp, max(begins[tp], ends[tp] - last))
        # to the end as it was when reading began: each partition's high watermark as Fetch reports it
        held = []
        deadline = loop.time() + timeout
        while not stop.is_set():
            batch = await c.getmany(timeout_ms=300)
            if batch:
                recs = sorted((r for rs in batch.values() for r in rs), key=_order)
                if last is None:
                    emit(recs)
                else:
                    held = sorted(held + recs, key=_order)[-last:] if last else []
                deadline = loop.time() + timeout
                continue
            if await read_to_end(c, tps):
                break
            if loop.time() > deadline:
                print(f"journey tail: {topic} was not read to its end within {timeout:g} s (is the broker "
                      f"answering?)", file=sys.stderr)
                return 1
        emit(held)
        while follow and not stop.is_set():
            batch = await c.getmany(timeout_ms=300)
            if batch:
                emit(sorted((r for rs in batch.values() for r in rs), key=_order))
        return 0
    finally:
        try:
            loop.remove_signal_handler(signal.SIGTERM)
        except (NotImplementedError, RuntimeError):
            pass
        await c.stop()


def cmd_tail(a) -> int:
    if a.lines is not None and a.lines < 0:
        print(f"journey tail: -n must be 0 or more (got {a.lines})", file=sys.stderr)
        return 2
    if a.lines is not None and a.from_beginning:
        print("journey tail: give -n N (the last N records) or --from-beginning (all of them), not both",
              file=sys.stderr)
        return 2
    conn = connection.from_args(a, "tail")
    broker = connection.broker_url(a.broker, conn)
    topic = resolve(a.topic)
    last = None if a.from_beginning else (10 if a.lines is None else a.lines)
    try:
        return asyncio.run(tail(broker, topic, conn, last, a.follow, a.json, sys.stdout, a.timeout))
    except KeyboardInterrupt:   # Ctrl-C: the way to end --follow
        return 0
    except connection.KafkaConnectFailed as e:
        print(f"journey tail: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # no broker there, mostly
        print(f"journey tail: {_what(e)}. Is a Kafka broker listening at {broker}?", file=sys.stderr)
        return 1


def add_parser(sub, env_broker: str) -> None:
    t = sub.add_parser(
        "tail", help="print a topic's records readably: the triggers sent, the audit, dead letters, outcomes",
        description="Print a Kafka topic's records, one line each: time (the record timestamp, UTC), "
                    "partition/offset, key, and the value as compact JSON, or for a trigger a short summary "
                    "(rule and step, kind, channel, priority, offer, experiment arm, reason, id). By default "
                    "the last 10 records across the partitions, by time. Reads without a consumer group: it "
                    "commits nothing. Ctrl-C ends --follow (exit code 0).")
    t.add_argument("topic", metavar="TOPIC",
                   help="the topic: a full name (journey.triggers) or a journey topic's short one (triggers, "
                        "audit, deadletter, outcomes, triggers.deadletter, dispatch.delivered, clickstream, ...; "
                        "with JOURNEY_TOPIC_PREFIX added)")
    t.add_argument("--broker", help=f"Kafka bootstrap URL (env JOURNEY_BROKER, else the --kafka-config file's "
                                    f"bootstrap.servers; default {env_broker})")
    connection.add_arguments(t)
    t.add_argument("-n", "--lines", type=int, metavar="N", help="print the last N records (default 10)")
    t.add_argument("--from-beginning", action="store_true",
                   help="print every record the topic holds, oldest first (default: the last -n)")
    t.add_argument("-f", "--follow", action="store_true",
                   help="then keep printing new records as they come, until Ctrl-C (default: stop at the end)")
    t.add_argument("--json", action="store_true",
                   help="print each record's value alone, as one JSON line (default: time, key and a summary)")
    t.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="the longest to wait for the broker, and for the topic to be read to its end (default 30)")
    t.set_defaults(func=cmd_tail)
