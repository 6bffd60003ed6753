"""Erasure (domain.md section 9) against a real broker and real files: after
``journey erase``, the id is in no changelog value, no file of the RocksDB store, no
metric, no log line and no dead letter; its later events are dropped and counted, also
by a restarted worker; replay of the same log gives the same triggers, the
``journey.privacy.erased`` record included."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import orjson
import pytest
from conftest import T, ev, identify
from live_support import Worker, produce_log, read_topic, wait_for

from journey.history.replay import replay
from journey.io import topics
from journey.io.kafka import Partitioner
from journey.io.rulefile import load_config

ID = "erin.secret@example.com"
SALT = "pepper"


def _visitor() -> str:
    """A visitor id on another partition than ID's (its stub must be erased there too)."""
    part = Partitioner(topics.PARTITIONS)
    return next(v for v in (f"visitor-secret-{i}" for i in range(100)) if part("anon:" + v) != part(ID))


VIS = _visitor()
SECRETS = (ID.encode(), VIS.encode())


def _lines(*recs) -> bytes:
    return b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in recs)


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


def _erase(broker: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "JOURNEY_BROKER_WAIT": "5"}
    return subprocess.run([sys.executable, "-m", "journey", "erase", "--broker", broker, *args], input=stdin,
                          capture_output=True, timeout=60, env=env)


def _files_holding(root: Path, needles) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
                  and any(n in p.read_bytes() for n in needles))


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_erase_deletes_everywhere_and_later_events_are_dropped(broker, tmp_path, store):
    rules = tmp_path / "rules.toml"
    rules.write_text(f'[privacy]\nerasure_salt = "{SALT}"\n')
    visit = {"id": "v1", "anonymous_id": VIS, "type": "product.viewed", "ts": "2026-03-01T10:00:00Z",
             "props": {"product_id": "p1"}}
    login = identify(ID, "2026-03-01T10:05:00Z", id="login", timezone="UTC")
    login["anonymousId"] = VIS
    part1 = [visit, login,
             ev("checkout.started", ID, "2026-03-01T10:10:00Z", id="k", checkout_id="k1", value=20),
             ev("order.completed", "bob", "2026-03-01T10:00:00Z", id="b1", order_id="ob1", revenue=30),
             ev("referral.sent", ID, "2026-03-01T22:00:00Z", id="ref")]  # quiet hours: deferred to 08:00
    part2a = [ev("page.viewed", "bob", "2026-03-02T00:00:00Z", id="b2")]
    later = [ev("order.completed", ID, "2026-03-02T10:00:00Z", id="late1", order_id="o9", revenue=10),
             {"id": "late2", "anonymous_id": VIS, "type": "page.viewed", "ts": "2026-03-02T10:05:00Z", "props": {}},
             ev("order.completed", "bob", "2026-03-02T12:00:00Z", id="b3", order_id="ob2", revenue=30)]
    rejected_erased = [orjson.dumps({"type": "track", "event": "Order Completed", "userId": ID}),  # no time
                       orjson.dumps(ev("page.viewed", ID, "2030-01-01T00:00:00Z", id="future"))]  # future_time
    rejected_bob = orjson.dumps({"type": "track", "event": "Order Completed", "userId": "bob"})
    p1, p2a, p2b = tmp_path / "p1.jsonl", tmp_path / "p2a.jsonl", tmp_path / "p2b.jsonl"
    p1.write_bytes(_lines(*part1))
    p2a.write_bytes(_lines(*part2a))
    p2b.write_bytes(_lines(*later, *rejected_erased, rejected_bob))
    data = tmp_path / "data"
    kw = {"store": store, "data_dir": str(data)} if store != "memory://" else {}
    w = Worker(broker, tmp_path, name="first", rules=str(rules), **kw)
    logs = [w.log]
    try:
        w.wait_ready()
        produce_log(broker, p1, until=T("2026-03-01T22:30:00Z"))
        done = _erase(broker, "--at", "2026-03-01T23:00:00Z", ID)
        assert done.returncode == 0, done.stderr
        assert b"1 erasure request(s) published" in done.stderr and not any(s in done.stderr for s in SECRETS)
        produce_log(broker, p2a, until=T("2026-03-02T00:00:00Z"))  # event time past the erasure

        def privacy():
            recs = [orjson.loads(v) for _k, v, *_ in read_topic(broker, topics.TRIGGERS, idle_ms=200)]
            return [t for t in recs if t["type"] == "journey.privacy.erased"]
        (erased,) = wait_for(privacy, 60, "the journey.privacy.erased record", every=0.3)
        assert erased["subject"] == ID and erased["time"] == "2026-03-01T23:00:00Z"
        assert erased["data"]["visitor_ids"] == [VIS]

        def tombstoned():
            latest = {}
            for key, value, *_ in read_topic(broker, topics.changelog(), idle_ms=200):
                latest[key] = value
            return (ID.encode() in latest and latest[ID.encode()] is None
                    and latest.get(b"anon:" + VIS.encode(), b"") is None) and latest
        latest = wait_for(tombstoned, 60, "tombstones of the customer and the visitor", every=0.3)
        digests = {k.split(b":", 2)[2].decode() for k, v in latest.items() if k.startswith(b"\x00erased:") and v}
        assert hashlib.sha256(f"{SALT}/{ID}".encode()).hexdigest() in digests
        assert hashlib.sha256(f"{SALT}/anon:{VIS}".encode()).hexdigest() in digests
        assert not any(s in k for k in digests for s in (ID, VIS))

        produce_log(broker, p2b, until=T("2026-03-03T00:00:00Z"))
        wait_for(lambda: read_topic(broker, topics.DEADLETTER, idle_ms=200), 60, "bob's dead letter", every=0.3)
        wait_for(lambda: _metric(_metrics(w.port), "journey_events_erased_total") >= 4, 60,
                 "the erased id's four later records dropped", every=0.3)
        text = _metrics(w.port)
        assert _metric(text, "journey_events_erased_total") == 4  # two events, one unreadable, one future
        assert _metric(text, "journey_erasures_total") == 1
        assert not any(s.decode() in text for s in SECRETS)
        (dl,) = [orjson.loads(v) for _k, v, *_ in read_topic(broker, topics.DEADLETTER)]
        assert dl["raw"].encode() == rejected_bob  # only bob's: the erased id's were dropped, not kept

        # every changelog value that held the id (before the erasure) has a tombstone after it
        cl = read_topic(broker, topics.changelog())
        for i, (key, value, p, _o, _h) in enumerate(cl):
            if value is not None and any(s in value for s in SECRETS):
                assert any(k == key and v is None and q == p for k, v, q, _o2, _h2 in cl[i + 1:]), key

        # replay of the same log (with the erasure as published) gives the same triggers
        (erase_rec,) = [v for _k, v, *_ in read_topic(broker, topics.SUPPORT)
                        if orjson.loads(v)["type"] == "customer.erased"]
        log = tmp_path / "all.jsonl"
        # (the future event too: replay without --now applies it, as an erased id's: dropped; and
        # produce's final marker moved the worker's event time to it, as replay --until does)
        log.write_bytes(_lines(*part1, erase_rec, *part2a, *later, *rejected_erased[1:], rejected_bob))
        out, audit = tmp_path / "r.jsonl", tmp_path / "ra.jsonl"
        s = replay([log], str(out), str(audit), until=T("2026-03-03T00:00:00Z"), config=load_config(str(rules)))
        want = sorted(out.read_bytes().splitlines())
        assert any(b"journey.privacy.erased" in x for x in want) and s["after_erasure"] == 3
        got = sorted(v for _k, v, *_ in read_topic(broker, topics.TRIGGERS))
        assert [orjson.loads(x) for x in got] == [orjson.loads(x) for x in want]  # ids and records alike
        audits = sorted(orjson.loads(v)["trigger_id"] for _k, v, *_ in read_topic(broker, topics.AUDIT))
        assert audits == sorted(orjson.loads(x)["trigger_id"] for x in audit.read_bytes().splitlines())
        assert any(orjson.loads(x)["reason"] == "erased" for x in audit.read_bytes().splitlines())

        if store == "rocksdb://":  # the store's files lose the id's bytes once the erasure is checkpointed
            assert _files_holding(data, [b"bob"]), "the store holds the other customer (the grep can see)"
            try:
                wait_for(lambda: not _files_holding(data, SECRETS), 30, "the id to leave the RocksDB files", every=0.5)
            except AssertionError as e:
                raise AssertionError(f"{e}: {_files_holding(data, SECRETS)}") from None
    finally:
        assert w.stop() == 0, w.log.read_text()[-3000:]
    if store == "rocksdb://":
        assert not _files_holding(data, SECRETS), "after the worker stopped"

    # a restarted worker still drops the id's events (the digests came back from the table)
    before = len(read_topic(broker, topics.changelog()))
    triggers_before = len(read_topic(broker, topics.TRIGGERS))
    p3 = tmp_path / "p3.jsonl"
    p3.write_bytes(_lines(ev("order.completed", ID, "2026-03-03T10:00:00Z", id="late3", order_id="o10", revenue=5),
                          {"id": "late4", "anonymous_id": VIS, "type": "page.viewed", "ts": "2026-03-03T10:01:00Z"},
                          ev("page.viewed", "bob", "2026-03-03T11:00:00Z", id="b4")))
    w2 = Worker(broker, tmp_path, name="second", rules=str(rules), **kw)
    logs.append(w2.log)
    try:
        w2.wait_ready()
        produce_log(broker, p3, until=T("2026-03-04T00:00:00Z"))
        wait_for(lambda: _metric(_metrics(w2.port), "journey_events_erased_total") >= 2, 60,
                 "the restarted worker to drop the id's events", every=0.3)
        assert _metric(_metrics(w2.port), "journey_events_erased_total") == 2
        after = read_topic(broker, topics.changelog())[before:]
        assert not [k for k, v, *_ in after if v is not None and any(s in v for s in SECRETS)]
        assert not [t for _k, t, *_ in read_topic(broker, topics.TRIGGERS)[triggers_before:]
                    if any(s in t for s in SECRETS)]
        if store == "rocksdb://":
            assert not _files_holding(data, SECRETS)
    finally:
        assert w2.stop() == 0, w2.log.read_text()[-3000:]
    for log in logs:
        assert not any(s in log.read_bytes() for s in SECRETS), f"{log.name} names the erased id"


def test_erase_command_line(tmp_path):
    """No personal data in its help; ids from a file or stdin are checked before anything is
    published; a wrong broker ends it with one message and exit 1, no traceback."""
    h = subprocess.run([sys.executable, "-m", "journey", "erase", "--help"], capture_output=True, timeout=30)
    assert h.returncode == 0 and b"@" not in h.stdout and b"customer.erased" in h.stdout
    nothing = _erase("kafka://127.0.0.1:9")
    assert nothing.returncode == 2 and b"give the ids" in nothing.stderr
    bad = _erase("kafka://127.0.0.1:9", "--file", "-", stdin=b"ok\n\n" + b"x" * 300 + b"\n")
    assert bad.returncode == 2 and b"id number 2" in bad.stderr and b"xxx" not in bad.stderr
    down = _erase("kafka://127.0.0.1:9", ID)
    assert down.returncode == 1 and b"Traceback" not in down.stderr and ID.encode() not in down.stderr
    assert b"Is a Kafka broker listening" in down.stderr


def _visit(anon, ts, id_, type_="page.viewed"):
    return {"id": id_, "anonymous_id": anon, "type": type_, "ts": ts, "props": {}}


def test_replay_erasure_drops_the_customer_and_their_visitor_and_hashes_only_when_needed(run, monkeypatch):
    from journey.core import engine as engine_mod

    login = identify("c1", "2026-03-01T10:05:00Z", id="login")
    login["anonymousId"] = "v1"
    evs = [_visit("v1", "2026-03-01T10:00:00Z", "v-a"), login,
           ev("checkout.started", "c1", "2026-03-01T10:10:00Z", id="k", checkout_id="k1"),
           ev("customer.erased", "c1", "2026-03-01T10:20:00Z", id="erase-1"),
           ev("order.completed", "c1", "2026-03-01T11:00:00Z", id="late", order_id="o1", revenue=10),
           _visit("v1", "2026-03-01T11:05:00Z", "v-b"),
           ev("order.completed", "c2", "2026-03-01T12:00:00Z", id="c2o", order_id="o2", revenue=10),
           ev("page.viewed", "c2", "2026-03-01T12:05:00Z", id="c2p")]  # c2 has state now: no hash
    hashed = []
    real = engine_mod.privacy.erasure_hash
    monkeypatch.setattr(engine_mod.privacy, "erasure_hash", lambda salt, key: hashed.append(key) or real(salt, key))
    r = run(evs, rules={"privacy": {"erasure_salt": "s"}}, until="2026-03-02T00:00:00Z")
    (t,) = [t for t in r.triggers if t["subject"] == "c1"]  # the cart of 10:10 was erased with its customer
    assert t["type"] == "journey.privacy.erased" and t["data"]["visitor_ids"] == ["v1"]
    assert t["data"]["rule"] == "erased" and t["data"]["kind"] == "privacy" and t["data"]["evidence"] == ["erase-1"]
    assert r.rules("c2") == ["first_purchase"]
    assert r.summary["after_erasure"] == 2 and r.summary["erasures"] == 1
    # hashed: the two keys erased, then once per event of a key without state after the erasure
    assert sorted(hashed) == sorted(["anon:v1", "c1", "c1", "anon:v1", "c2"])
    # nor does the memo of trigger ids keep the erased id in memory
    from journey.core import triggers
    assert not any(k[0] in ("c1", "anon:v1") for k in triggers._TIDS) and ("c2", "first_purchase", "first") in \
        triggers._TIDS


def test_replay_erased_file_drops_from_the_start_on_any_number_of_workers(tmp_path):
    from journey.history.synth import write_log

    log = tmp_path / "log.jsonl"
    write_log(str(log), customers=200, events=4000, seed=3, noise=False)  # (a truncated line names no one)
    recs = [orjson.loads(x) for x in log.read_bytes().splitlines()]
    ids = sorted({r.get("userId") or r.get("customer_id") for r in recs} - {None})[:5]
    with open(log, "ab") as f:  # an unreadable record of an erased id: dropped, not dead-lettered
        f.write(orjson.dumps({"type": "track", "event": "Order Completed", "userId": ids[0]}) + b"\n")
    erased = tmp_path / "erased.txt"
    erased.write_text("\n".join(ids) + "\n\n")
    outs = {}
    for n in (1, 3):
        out, dl = tmp_path / f"out{n}.jsonl", tmp_path / f"dl{n}.jsonl"
        r = subprocess.run([sys.executable, "-m", "journey", "replay", str(log), "--out", str(out), "--deadletter",
                            str(dl), "--erased", str(erased), "--workers", str(n), "--summary-json",
                            str(tmp_path / f"s{n}.json"), "-q"], capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr
        outs[n] = (out.read_bytes(), dl.read_bytes(), orjson.loads((tmp_path / f"s{n}.json").read_bytes()))
    assert outs[1][:2] == outs[3][:2]  # byte-identical
    out, dl, s = outs[1]
    assert not any(i.encode() in out or i.encode() in dl for i in ids)
    dropped = sum(1 for r in recs if (r.get("userId") or r.get("customer_id")) in ids) + 1
    assert s["after_erasure"] == outs[3][2]["after_erasure"] == dropped
    plain = tmp_path / "plain.jsonl"
    replay([log], str(plain))
    assert any(i.encode() in plain.read_bytes() for i in ids), "without --erased they have triggers"


def test_the_dispatcher_routes_the_erasure_record_like_any_trigger(run):
    """Routes of every rule ("*") deliver it; kinds = ["privacy"] (or rules = ["erased"]) route
    the erasures alone, to the system that must delete the customer too."""
    from journey.dispatch.config import parse_dispatch_config
    from journey.dispatch.records import parse_trigger

    r = run([ev("order.completed", "c1", "2026-03-01T10:00:00Z", order_id="o1", revenue=10),
             ev("customer.erased", "c1", "2026-03-01T11:00:00Z")])
    first, erased = (parse_trigger(orjson.dumps(t)) for t in r.triggers)
    ep = {"url": "http://127.0.0.1:9/x", "secrets": ["whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="]}
    cfg = parse_dispatch_config({"endpoints": {"crm": ep, "privacy": ep, "mail": ep}, "routes": [
        {"endpoints": ["crm"]}, {"kinds": ["privacy"], "endpoints": ["privacy"]},
        {"rules": ["first_purchase"], "endpoints": ["mail"]}]})
    assert not cfg.warnings
    assert cfg.route(erased) == ["crm", "privacy"] and cfg.route(first) == ["crm", "mail"]
    assert parse_dispatch_config({"endpoints": {"p": ep}, "routes": [{"rules": ["erased"], "endpoints": ["p"]}]}
                                 ).route(erased) == ["p"]


def test_the_erasure_record_matches_the_trigger_schema(run):
    from test_contracts import validator

    r = run([ev("order.completed", "c1", "2026-03-01T10:00:00Z", order_id="o1", revenue=10),
             ev("customer.erased", "c1", "2026-03-01T11:00:00Z")])
    v = validator("trigger.schema.json")
    assert [t["type"] for t in r.triggers] == ["journey.recognition.first_purchase", "journey.privacy.erased"]
    for t in r.triggers:
        assert not [e.message for e in v.iter_errors(t)], t
    broken = {**r.triggers[1], "data": {**r.triggers[1]["data"], "visitor_ids": None}}
    assert list(v.iter_errors(broken)), "the schema checks the erasure record's own shape"
