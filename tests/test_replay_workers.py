"""``journey replay --workers N`` and ``journey backtest --workers N`` (issue 17, item 3): every
output file byte-identical to one worker, the summary equal, on shuffled input with
experiments, journeys, rejected lines and anonymous visitors (linked late, linked twice,
erased then seen again, never linked)."""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from journey.core.timeutil import format_time
from journey.history.backtest import backtest
from journey.history.replay import replay
from journey.history.synth import write_log
from journey.history.workers import Router, components, partition_of
from journey.io import kafka
from journey.io.rulefile import load_config

EXAMPLE = Path(__file__).parent.parent / "journey" / "examples" / "journeys.example.toml"
START = 1767225600000  # 2026-01-01T00:00:00Z
DAY = 86_400_000
TIMING = ("seconds", "read_seconds", "events_per_second")


def visitor_lines(rng: random.Random, customers: int, visitors: int) -> list[bytes]:
    """Anonymous visitors browsing and checking out, some identified (late, twice, to an
    erased customer), some customers erased and their visitor seen again, junk lines."""
    out = []
    n = 0

    def rec(d):
        nonlocal n
        n += 1
        out.append(orjson.dumps(d))

    def ts(t):
        return format_time(t)

    def browse(anon, t, cid=None):
        base = {"anonymousId": anon, **({"userId": cid} if cid else {})}
        rec({"type": "page", **base, "messageId": f"{anon}-p{n}", "timestamp": ts(t), "properties": {"path": "/"}})
        rec({"type": "track", "event": "Product Viewed", **base, "messageId": f"{anon}-v{n}",
             "timestamp": ts(t + 60_000), "properties": {"product_id": f"p{rng.randrange(50)}", "price": 80.0}})
        if rng.random() < 0.6:
            rec({"type": "track", "event": "Checkout Started", **base, "messageId": f"{anon}-c{n}",
                 "timestamp": ts(t + 120_000), "properties": {"checkout_id": f"k-{anon}-{n}", "value": 80.0}})

    def cust():
        return f"cust-{rng.randrange(customers):07d}"

    for v in range(visitors):
        anon = f"v{v}"
        times = sorted(START + rng.randrange(170 * DAY) for _ in range(rng.randint(1, 4)))
        kind = rng.choice(["never", "late", "twice", "erased", "both", "canonical"])
        for t in times:
            browse(anon, t)
        link_at = times[-1] + rng.randrange(1, 3 * 3_600_000)
        if kind == "never":
            continue
        c1 = cust()
        if kind == "canonical":
            rec({"id": f"{anon}-x", "customer_id": c1, "anonymous_id": anon, "type": "order.completed",
                 "ts": link_at, "props": {"order_id": f"o-{anon}", "revenue": 55.0}})
        else:
            rec({"type": "identify", "userId": c1, "anonymousId": anon, "messageId": f"{anon}-i",
                 "timestamp": ts(link_at), "traits": {}})
        browse(anon, link_at + rng.randrange(DAY))  # seen again, now linked
        if kind == "twice":
            c2 = cust()
            rec({"type": "identify", "userId": c2, "anonymousId": anon, "messageId": f"{anon}-i2",
                 "timestamp": ts(link_at + 2 * DAY), "traits": {}})
            browse(anon, link_at + 3 * DAY)
        elif kind == "erased":
            rec({"id": f"{anon}-e", "customer_id": c1, "type": "customer.erased", "ts": link_at + DAY})
            browse(anon, link_at + 2 * DAY)  # seen again after the erasure
            if rng.random() < 0.5:  # and identified again (to the erased customer, or another)
                c3 = c1 if rng.random() < 0.5 else cust()
                rec({"type": "identify", "userId": c3, "anonymousId": anon, "messageId": f"{anon}-i3",
                     "timestamp": ts(link_at + 3 * DAY), "traits": {}})
                browse(anon, link_at + 4 * DAY)
        elif kind == "both":
            browse(anon, link_at + DAY, cid=c1)  # events carrying both ids
    for k in range(5):
        out.append(b'{"type": "track", "event": "Broken' + str(k).encode())
        out.append(b"")
        out.append(orjson.dumps({"type": "page", "timestamp": ts(START + k)}))  # no customer
    return out


def run(paths, d: Path, name: str, workers: int, rules=EXAMPLE, until=None) -> tuple[dict, dict]:
    files = {k: str(d / f"{name}.{k}") for k in ("out", "audit", "dl", "tr", "oc")}
    s = replay(paths, files["out"], files["audit"], files["dl"], transitions=files["tr"], outcomes=files["oc"],
               config=load_config(str(rules)), workers=workers, until=until)
    return s, {k: Path(v).read_bytes() for k, v in files.items()}


def make_log(d: Path, seed: int, customers=300, events=6000, visitors=120) -> str:
    rng = random.Random(seed)
    synth = d / f"synth{seed}.jsonl"
    write_log(str(synth), customers, events, seed, sort=False)
    lines = synth.read_bytes().splitlines() + visitor_lines(rng, customers, visitors)
    rng.shuffle(lines)
    path = d / f"log{seed}.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), workers=st.integers(2, 4), until=st.booleans())
def test_workers_byte_identical_to_one(tmp_path, capfd, seed, workers, until):
    d = tmp_path / f"s{seed}-{workers}-{until}"
    d.mkdir()
    log = make_log(d, seed)
    u = START + 200 * DAY if until else None
    s1, f1 = run([log], d, "one", 1, until=u)
    sn, fn = run([log], d, "many", workers, until=u)
    assert "one worker instead" not in capfd.readouterr().err  # the workers ran (no fallback)
    assert s1["triggers"] > 100 and s1["outcomes"] > 0 and s1["rejected_by_reason"]
    assert sum(s1["events_by_type"].values()) and s1["events_by_type"].get("customer.erased", 0) > 0
    for k in f1:
        assert f1[k] == fn[k], f"{k} differs with {workers} workers"
    assert {k: v for k, v in s1.items() if k not in TIMING} == {k: v for k, v in sn.items() if k not in TIMING}


def test_visitor_cases_are_exercised(tmp_path, capfd):
    """The visitors' cases happen in the log the property test uses: visitors' states absorbed,
    events after an erasure, and triggers for visitors linked to customers."""
    log = make_log(tmp_path, 5)
    s, f = run([log], tmp_path, "one", 1)
    assert s["after_erasure"] > 0
    subjects = {orjson.loads(x)["subject"] for x in f["out"].splitlines()}
    assert not any(x.startswith("anon:") for x in subjects)
    sn, fn = run([log], tmp_path, "two", 2)
    assert f == fn
    assert "one worker instead" not in capfd.readouterr().err


def test_a_pre_filter_disagreement_falls_back_to_one_worker(tmp_path, capfd, monkeypatch):
    """If the routing could split what the engine joins, the run says so and uses one worker."""
    import journey.history.workers as w

    log = make_log(tmp_path, 6, customers=100, events=1500, visitors=40)
    s1, f1 = run([log], tmp_path, "one", 1)
    monkeypatch.setattr(w, "components", lambda pairs: {})  # forget the links
    s2, f2 = run([log], tmp_path, "two", 2)
    assert "one worker instead" in capfd.readouterr().err
    assert f1 == f2


def test_unprocessable_events_in_the_same_place(tmp_path, capfd, monkeypatch):
    """Events whose application fails are dead-lettered where the single run puts them."""
    from journey.core.engine import Engine

    update = Engine._update

    def failing(self, st, ev):
        if ev.id.endswith("7") and ev.type == "page.viewed":
            raise ValueError("boom")
        update(self, st, ev)

    monkeypatch.setattr(Engine, "_update", failing)
    log = make_log(tmp_path, 8, customers=150, events=3000, visitors=60)
    s1, f1 = run([log], tmp_path, "one", 1)
    s2, f2 = run([log], tmp_path, "two", 3)
    assert "one worker instead" not in capfd.readouterr().err
    assert s1["rejected_by_reason"].get("unprocessable", 0) > 10
    assert f1 == f2
    assert {k: v for k, v in s1.items() if k not in TIMING} == {k: v for k, v in s2.items() if k not in TIMING}


def test_backtest_with_workers_equals_one(tmp_path, capfd):
    log = make_log(tmp_path, 11)
    new, base = load_config(str(EXAMPLE)), load_config(None)
    r1 = backtest([log], new, base)
    r3 = backtest([log], new, base, workers=3)
    assert "one worker instead" not in capfd.readouterr().err
    assert r1["added"] or r1["removed"]
    assert orjson.dumps(r1) == orjson.dumps(r3)


def test_partitions_are_the_live_workers():
    rng = random.Random(3)
    keys = ["", "c", "ab", "abc", "cust-0000001", "zoë", "anon:v1"] + [
        "".join(rng.choice("abcxyz-0189é") for _ in range(rng.randint(1, 40))) for _ in range(2000)]
    for k in keys:
        for n in (1, 2, 3, 4, 12):
            assert partition_of(k, n) == kafka.partition_of(k, n), k


def test_components_route_a_visitor_with_its_customers():
    rep = components([("a1", "c9"), ("a1", "c2"), ("a2", "c5"), ("a3", "c5"), ("a4", "c7")])
    # a1 linked twice: c2, c9 and the visitor together, by the smallest customer id
    assert rep["anon:a1"] == "c2" and rep["c9"] == "c2" and "c2" not in rep
    assert rep["anon:a2"] == rep["anon:a3"] == "c5"
    route = Router(rep, 4)
    assert route("anon:a4") == route("c7") == partition_of("c7", 4)
    assert route("c9") == route("c2") == route("anon:a1")
    assert route("anon:never") == partition_of("anon:never", 4)  # never linked: its own key
    assert route("c100") == partition_of("c100", 4)  # no visitor: as the live worker shards it


def test_a_worker_error_stops_all_and_says_what(tmp_path):
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 40)  # gzip magic, corrupt body
    from journey.io.logs import LogError

    with pytest.raises(LogError, match="truncated or corrupt"):
        replay([str(bad)], str(tmp_path / "o.jsonl"), workers=2)
    assert not (tmp_path / "o.jsonl").exists()
    with pytest.raises(FileNotFoundError):
        replay([str(tmp_path / "missing.jsonl")], str(tmp_path / "o.jsonl"), workers=2)


def test_cli_help_shows_workers():
    from journey.cli import build_parser

    p = build_parser()
    for cmd in ("replay", "backtest"):
        text = " ".join(p._subparsers._group_actions[0].choices[cmd].format_help().split())
        assert "--workers N" in text and "default: the machine's cores" in text
