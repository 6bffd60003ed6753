"""Hostile input never stops a replay or a worker: every record that cannot be read or
applied is dead-lettered with a reason and its bytes, counted, and processing goes on.

Each case is built to fail on the code before these guards: the poison kinds the fault
probe found (a ``type`` that is a list or an object, money that overflows, a time string
of thousands of digits, revenue too large for state), spoofed internal keys, an event or
a timer whose rule raises, and state records that are not state."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest
from conftest import T, ev

from journey.core import catalog
from journey.core.intake import REASONS, Rejected, parse
from journey.core.state import CustomerState
from journey.core.timeutil import format_time

BASE = "2026-03-01T10:00:00Z"

# (name, record bytes, the reason intake gives): each is followed by a sentinel in the tests
POISON = [
    ("type is a list", b'{"type":["track"],"userId":"p1","event":"Order Completed","timestamp":"2026-03-01T10:00:00Z"}',
     "no_type"),
    ("type is an object", b'{"type":{"a":1},"customer_id":"p2","ts":"2026-03-01T10:00:00Z"}', "no_type"),
    ("money overflows", orjson.dumps(ev("order.completed", "p3", BASE, order_id="o", revenue=1e308)), "bad_field"),
    ("revenue too large for state", orjson.dumps(ev("order.completed", "p4", BASE, order_id="o", revenue=1e18)),
     "bad_field"),
    ("time of 5000 digits", orjson.dumps({"id": "x5", "customer_id": "p5", "type": "order.completed", "ts": "9" * 5000}),
     "bad_time"),
    ("ISO time of 5000 characters", orjson.dumps({"id": "x6", "customer_id": "p6", "type": "page.viewed",
                                                 "ts": "2026-03-01T10:00:00" + "0" * 5000 + "Z"}), "bad_time"),
    ("the worker's watermark key", orjson.dumps(ev("page.viewed", "\x00watermark:0", BASE)), "bad_field"),
    ("a control character", orjson.dumps(ev("page.viewed", "c\x07x", BASE)), "bad_field"),
    ("a visitor id with NUL", orjson.dumps({"type": "page", "anonymousId": "\x00x", "timestamp": BASE}), "bad_field"),
    ("a promise in year 1", orjson.dumps(ev("order.shipped", "p9", BASE, order_id="o", promised_by="0001-01-01")),
     "bad_field"),
    ("props a list", b'{"id":"x","customer_id":"p10","type":"order.completed","ts":"2026-03-01T10:00:00Z","props":[1]}',
     "bad_field"),
    ("traits a string", b'{"type":"identify","userId":"p11","traits":"x","timestamp":"2026-03-01T10:00:00Z"}',
     "bad_field"),
]


@pytest.mark.parametrize("name,raw,reason", POISON, ids=[p[0] for p in POISON])
def test_intake_rejects_each_poison_kind_with_a_reason(name, raw, reason):
    with pytest.raises(Rejected) as e:
        parse(raw)
    assert e.value.reason == reason and e.value.reason in REASONS


def test_intake_raises_only_rejected_whatever_the_record():
    # shapes no branch of intake expects: every one is a Rejected, never another exception
    values = [[], {}, [1], {"a": None}, "x", 1e300, -1, True, None, "9" * 10_000]
    for key in ("type", "event", "userId", "customer_id", "anonymousId", "ts", "timestamp", "props",
                "properties", "traits", "messageId", "id", "previousId"):
        for v in values:
            for shape in ({"type": "track", "userId": "u", "event": "Order Completed", "timestamp": BASE},
                          {"type": "order.completed", "customer_id": "u", "ts": BASE, "props": {}}):
                d = {**shape, key: v}
                try:
                    parse(orjson.dumps(d))
                except Rejected:
                    pass
    for prop in ("revenue", "total", "price", "value", "promised_by", "rating", "csat", "nps", "priority",
                 "order_id", "ticket_id"):
        for v in values + [1e18, 1e13]:
            try:
                parse(orjson.dumps(ev("order.shipped", "u", BASE, **{prop: v})))
            except Rejected:
                pass


def test_numeric_ids_that_the_schema_allows_are_accepted_as_strings():
    assert parse(orjson.dumps(ev("page.viewed", 1.5, BASE))).cid == "1.5"
    assert parse(orjson.dumps(ev("page.viewed", 7, BASE))).cid == "7"
    big = parse(b'{"id":"b","customer_id":123456789012345678901234567890,"type":"page.viewed","ts":"' + BASE.encode()
                + b'"}')
    assert big.cid.isdigit() and len(big.cid) == 30
    assert parse(orjson.dumps({"type": "page", "anonymousId": 42, "timestamp": BASE})).anon == "42"


def test_times_are_rfc3339_with_four_digit_years():
    assert format_time(0) == "1970-01-01T00:00:00Z"
    assert format_time(-1) == "1969-12-31T23:59:59.999Z"   # a customer-local end of day before 1970
    assert format_time(T("2199-12-31T23:59:59Z")) == "2199-12-31T23:59:59Z"
    # years that need padding to four digits (RFC 3339 requires them)
    assert format_time(-62135596800000) == "0001-01-01T00:00:00Z"
    assert format_time(-30641662555000) == "0999-01-02T03:04:05Z"
    assert format_time(253402300799999) == "9999-12-31T23:59:59.999Z"


def test_the_event_name_cache_is_bounded_in_bytes():
    before = sum(len(k) for k in catalog._EXACT)
    for i in range(50):
        parse(orjson.dumps({"type": "track", "userId": "u", "event": f"{i}" + "n" * 100_000, "timestamp": BASE}))
    assert sum(len(k) for k in catalog._EXACT) - before < 50 * 100


def test_replay_goes_on_past_every_poison_line(run):
    lines = []
    for i, (_name, raw, _reason) in enumerate(POISON):
        lines += [raw, ev("order.completed", f"s{i}", BASE, id=f"s{i}", order_id=f"o{i}", revenue=10)]
    r = run(lines)
    assert sorted(d["reason"] for d in r.deadletter) == sorted(p[2] for p in POISON)
    assert {t["subject"] for t in r.of("first_purchase")} == {f"s{i}" for i in range(len(POISON))}
    for d in r.deadletter:
        assert d["raw"].encode() in lines and d["line"] >= 1


def test_the_replay_command_survives_a_type_that_is_a_list(tmp_path):
    log = tmp_path / "in.jsonl"
    log.write_bytes(POISON[0][1] + b"\n" + orjson.dumps(ev("order.completed", "s", BASE, order_id="o")) + b"\n")
    out, dl = tmp_path / "t.jsonl", tmp_path / "dl.jsonl"
    p = subprocess.run([sys.executable, "-m", "journey", "replay", str(log), "--out", str(out), "--deadletter", str(dl),
                        "-q"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert [orjson.loads(x)["reason"] for x in dl.read_bytes().splitlines()] == ["no_type"]
    assert [orjson.loads(x)["data"]["rule"] for x in out.read_bytes().splitlines()] == ["first_purchase"]


@pytest.fixture
def boom(monkeypatch):
    """Rules that raise for customer "boom" (a bug, or state no rule expected)."""
    from journey.core.rules import REGISTRY

    fp, cart = REGISTRY["first_purchase"], REGISTRY["cart_abandoned"]
    on_event, on_timer = fp.on_event, cart.on_timer

    def bad_event(eng, st, ev_, p):
        if ev_.cid == "boom":
            raise ZeroDivisionError("boom")
        return on_event(eng, st, ev_, p)

    def bad_timer(eng, st, key, data, due, p):
        if eng.key == "boom":
            raise KeyError("boom")
        return on_timer(eng, st, key, data, due, p)

    monkeypatch.setattr(fp, "on_event", bad_event)
    monkeypatch.setattr(cart, "on_timer", bad_timer)


def test_an_event_whose_rule_fails_is_dead_lettered_with_its_line_and_bytes(run, boom):
    lines = [ev("order.completed", "a", BASE, id="e1", order_id="o1"),
             ev("order.completed", "boom", "2026-03-01T10:01:00Z", id="e2", order_id="o2"),
             ev("order.completed", "c", "2026-03-01T10:02:00Z", id="e3", order_id="o3")]
    r = run(lines)
    assert {t["subject"] for t in r.of("first_purchase")} == {"a", "c"}
    (d,) = r.deadletter
    assert d["reason"] == "unprocessable" and d["line"] == 2 and "ZeroDivisionError" in d["detail"]
    assert orjson.loads(d["raw"])["customer_id"] == "boom"
    assert r.summary["rejected_by_reason"] == {"unprocessable": 1}


def test_a_timer_whose_rule_fails_is_dropped_and_counted(run, boom):
    lines = [ev("checkout.started", c, BASE, checkout_id=f"k-{c}") for c in ("a", "boom", "c")]
    r = run(lines, until="2026-03-02T00:00:00Z")
    assert {t["subject"] for t in r.of("cart_abandoned")} == {"a", "c"}
    assert r.summary["timer_errors"] == 1


def test_a_state_record_of_the_wrong_shape_is_refused():
    good = CustomerState()
    good.orders, good.first_order, good.last_order, good.spend = 1, 5, 5, 100
    assert CustomerState.checked(orjson.loads(good.to_bytes())) == good
    good.timers["_outcome|t1"] = [9, ["cart_abandoned", "holdout", "new", 50, 5, None, 0]]
    assert CustomerState.checked(orjson.loads(good.to_bytes())) == good
    for bad in ([], {"zz": 1}, {"o": [1, 2]}, {"o": ["a", 1, 1, 1, 1]}, {"tm": {"x": ["a", 1]}},
                {"sn": [1, 2, 3]}, {"t": {"nope": [1, 1, 1, []]}}, {"an": [1]}, {"o": [1, 2, 3, 10**30, 0]},
                {"h": ["x", 1]}, {"cs": {"email": "yes"}},
                {"tm": {"_outcome|t1": [5, ["cart_abandoned", "holdout"]]}},   # an exposure of the wrong shape
                {"tm": {"_outcome|t1": [5, ["r", "a", "new", 50, "x", None, 0]]}}):
        with pytest.raises(ValueError):
            CustomerState.checked(bad)


def _state_after(events, rules=None):
    from journey.core.engine import Engine, ListSink
    from journey.core.timeline import drive
    from journey.io.rulefile import config_from

    eng = Engine(config_from(rules or {}), ListSink())
    drive(eng, [parse(orjson.dumps(e)) for e in events])
    return {k: st.to_bytes() for k, st in eng.states.items()}, eng


@pytest.mark.parametrize("cap", [None, 10])
def test_redelivery_of_a_busy_customer_is_harmless(cap):
    # forty tickets in forty minutes, then the first ten delivered again (a consumer that
    # restarted from an old offset); with the default memory, and with one of 10 ids, where
    # the ids of the window no longer fit
    rules = {"engine": {"dedup_max_ids": cap}} if cap else None
    t0 = T(BASE)
    tickets = [ev("ticket.opened", "busy", format_time(t0 + i * 60_000), id=f"t{i}", ticket_id=f"k{i}")
               for i in range(40)]
    once, eng1 = _state_after(tickets, rules)
    again, eng2 = _state_after(tickets + tickets[:10], rules)
    assert again == once
    assert eng2.stats.duplicates == 10 and eng2.stats.events["ticket.opened"] == 40
    if cap:
        assert len(eng2.states["busy"].seen) <= cap


def test_a_busy_customers_memory_is_bounded_and_round_trips():
    t0 = T(BASE)
    evs = [ev("page.viewed", "bot", format_time(t0 + i * 1000), id=f"p{i}") for i in range(5000)]
    states, eng = _state_after(evs)
    st = eng.states["bot"]
    assert len(st.seen) <= 1000 and st.seen_floor is not None
    assert len(states["bot"]) < 45_000
    assert CustomerState.from_bytes(states["bot"]) == st
    assert CustomerState.checked(orjson.loads(states["bot"])) == st


def _replay_cli(*args):
    return subprocess.run([sys.executable, "-m", "journey", "replay", *map(str, args), "-q"], capture_output=True,
                          text=True, timeout=120)


def test_replay_checks_its_inputs_before_it_touches_an_earlier_result(tmp_path):
    good = tmp_path / "in.jsonl"
    good.write_bytes(orjson.dumps(ev("order.completed", "a", BASE, order_id="o")) + b"\n")
    out = tmp_path / "t.jsonl"
    assert _replay_cli(good, "--out", out).returncode == 0
    before = out.read_bytes()
    assert before
    p = _replay_cli(good, tmp_path / "missing.jsonl", "--out", out)
    assert p.returncode == 2 and "missing.jsonl: no such file" in p.stderr
    assert out.read_bytes() == before
    assert [x.name for x in tmp_path.iterdir() if x.name.endswith(".tmp")] == []


def test_a_truncated_gzip_is_a_clear_error_that_says_how_far_it_got(tmp_path):
    import gzip

    lines = b"".join(orjson.dumps(ev("page.viewed", f"c{i}", BASE, id=f"e{i}")) + b"\n" for i in range(5000))
    whole = gzip.compress(lines)
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    out = tmp_path / "t.jsonl"
    out.write_bytes(b"earlier\n")
    p = _replay_cli(cut, "--out", out)
    assert p.returncode == 1, p.stderr
    assert "cut.jsonl.gz: the file is truncated or corrupt after line" in p.stderr and "Traceback" not in p.stderr
    assert out.read_bytes() == b"earlier\n"
    corrupt = tmp_path / "bad.jsonl.gz"
    corrupt.write_bytes(whole[:100] + b"\x00" * 200 + whole[300:])
    p = _replay_cli(corrupt, "--out", out)
    assert p.returncode == 1 and "truncated or corrupt" in p.stderr and "Traceback" not in p.stderr


def test_replay_now_dead_letters_events_past_the_future_horizon(run, tmp_path):
    from journey.history.replay import replay
    from journey.io.rulefile import config_from

    log = tmp_path / "f.jsonl"
    log.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in [
        ev("checkout.started", "a", BASE, checkout_id="k"),
        ev("page.viewed", "a", "2199-01-01T00:00:00Z", id="far"),
        ev("order.completed", "b", "2026-03-02T10:00:00Z", order_id="o")]))
    out, dl = tmp_path / "o.jsonl", tmp_path / "d.jsonl"
    s = replay([log], str(out), deadletter=str(dl), config=config_from({}), now=T("2026-03-03T00:00:00Z"))
    assert [orjson.loads(x)["reason"] for x in dl.read_bytes().splitlines()] == ["future_time"]
    assert s["watermark"] == T("2026-03-02T10:00:00Z")  # the far event did not move time
    rules = sorted(orjson.loads(x)["data"]["rule"] for x in out.read_bytes().splitlines())
    assert rules == ["cart_abandoned", "first_purchase"]
