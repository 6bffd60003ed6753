"""Does the experiment report measure anything? (issue 31, point 6.) An outcome says whether its
trigger's message reached the customer (``delivered``: a message.delivered, opened, clicked or
complained event named its trigger id before the window closed). ``journey experiments report``
warns, on stderr, when no treated exposure of a rule reached anyone (outcomes replayed from past
history: nobody got those messages), or when the holdout got the message all the same; ``--json``
keeps the rows of the contract (domain.md section 7) exactly. Everything through the real commands."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import orjson

from journey.core.timeutil import format_time, parse_time

EXAMPLE = Path(__file__).resolve().parents[1] / "journey" / "examples" / "journeys.example.toml"
UNTIL = "2026-09-01T00:00:00Z"
WARNED = "is known to have reached anyone"


def journey(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "journey", *map(str, args)], capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)


def jsonl(path) -> list[dict]:
    return [orjson.loads(x) for x in Path(path).read_bytes().splitlines()]


def report(*args) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """The report as text, and as JSON rows."""
    text = journey("experiments", "report", *args)
    as_json = journey("experiments", "report", *args, "--json")
    assert text.returncode == 0 and as_json.returncode == 0, text.stderr + as_json.stderr
    return text, orjson.loads(as_json.stdout)


ROW = {"rule", "arm", "stage", "exposures", "conversions", "rate", "value_per_exposure", "uplift", "ci_low", "ci_high"}


def delivered(outcomes, rule: str, holdout: bool) -> int:
    return sum(o["delivered"] for o in outcomes if o["rule"] == rule and (o["variant"] == "holdout") == holdout)


def replayed(tmp_path, log, name) -> tuple[Path, Path, Path]:
    out, audit, oc = (tmp_path / f"{name}-{k}.jsonl" for k in ("t", "a", "oc"))
    r = journey("replay", log, "--rules", EXAMPLE, "--out", out, "--audit", audit, "--outcomes", oc,
                "--until", UNTIL, "--workers", "1", "-q")
    assert r.returncode == 0, r.stderr
    return out, audit, oc


def test_replayed_history_measures_nothing_and_the_report_says_so_until_the_messages_are_delivered(tmp_path):
    log = tmp_path / "history.jsonl"
    # the population answers messages, but not ours: the engagement events name no trigger id
    g = journey("generate", "--customers", "400", "--events", "9000", "--engagement", "--clean", "--out", log)
    assert g.returncode == 0, g.stderr
    _out, _audit, oc = replayed(tmp_path, log, "history")
    outcomes = jsonl(oc)
    assert outcomes and all(o["delivered"] is False for o in outcomes)
    text, rows = report(oc)
    assert "warning: no message of browse_abandoned (" in text.stderr and WARNED in text.stderr, text.stderr
    assert "cart_abandoned (" in text.stderr and "the uplift measures nothing" in text.stderr
    assert "uplift" in text.stdout  # the figures are still shown
    assert rows and all(set(r) == ROW for r in rows)   # --json keeps the contract's rows; the warning is on stderr

    # the same history as a live run would have left it: the messaging system reported most of the
    # triggers journey sent as delivered (the held-out customers got nothing)
    out, audit, _ = replayed(tmp_path, log, "first")
    sent = [t for t in jsonl(out) if "experiment" in t["data"]]
    assert sent
    answered = tmp_path / "answered.jsonl"
    with open(answered, "wb") as f:
        f.write(log.read_bytes())
        for n, t in enumerate(sent):
            if n % 4:   # three in four reach their customer
                f.write(orjson.dumps({"id": f"dlv-{t['id']}", "customer_id": t["subject"],
                                      "type": "message.delivered", "ts": format_time(parse_time(t["time"]) + 60_000),
                                      "props": {"trigger_id": t["id"], "channel": "email"}}) + b"\n")
    _out, _audit, oc = replayed(tmp_path, answered, "answered")
    outcomes = jsonl(oc)
    treated = [o for o in outcomes if o["variant"] != "holdout"]
    assert 0 < sum(o["delivered"] for o in treated) < len(treated)
    assert not any(o["delivered"] for o in outcomes if o["variant"] == "holdout")
    text, rows = report(oc)
    assert "warning" not in text.stderr, text.stderr
    assert rows and all(set(r) == ROW for r in rows)
    assert delivered(outcomes, "cart_abandoned", True) == 0 and delivered(outcomes, "cart_abandoned", False) > 0
    assert delivered(outcomes, "browse_abandoned", False) > 0

    # and if the held-out customers were sent the message all the same (history replayed under an
    # experiment added since), the holdout does not hold out: said too
    holdouts = [a for a in jsonl(audit) if a["reason"] == "holdout"]
    assert holdouts
    with open(answered, "ab") as f:
        for a in holdouts:
            f.write(orjson.dumps({"id": f"dlv-{a['trigger_id']}", "customer_id": a["customer_id"],
                                  "type": "message.opened", "ts": format_time(parse_time(a["time"]) + 60_000),
                                  "props": {"trigger_id": a["trigger_id"], "channel": "email"}}) + b"\n")
    _out, _audit, oc = replayed(tmp_path, answered, "contaminated")
    outcomes = jsonl(oc)
    text, rows = report(oc)
    assert "holdout exposure(s) of cart_abandoned were reported delivered" in text.stderr, text.stderr
    assert "the holdout does not hold out" in text.stderr and WARNED not in text.stderr
    assert delivered(outcomes, "cart_abandoned", True) > 0


def test_simulated_customers_get_their_messages_and_the_report_does_not_warn(tmp_path):
    oc = tmp_path / "sim-oc.jsonl"
    s = journey("simulate", "--customers", "300", "--days", "60", "--outcomes", oc)
    assert s.returncode == 0, s.stderr
    text, rows = report(oc)
    assert "warning" not in text.stderr, text.stderr
    assert rows and all(set(r) == ROW for r in rows)


def test_the_dispatchers_delivery_records_count_as_delivered(broker, tmp_path):
    """Live, without engagement reported back: what journey dispatch delivered (journey.dispatch.delivered)
    is what reached the customers."""
    from aiokafka import AIOKafkaProducer

    from journey.io import topics
    from journey.io.kafka import bootstrap, ensure_topics

    recs = []
    for i in range(40):
        arm = "holdout" if i % 4 == 0 else "treated"
        recs.append({"trigger_id": f"t-{i}", "customer_id": f"c{i}", "rule": "cart_abandoned",
                     "experiment": "cart_abandoned", "variant": arm, "stage": "new", "health": 50,
                     "exposed_at": "2026-03-01T10:00:00Z", "converted": i % 3 == 0,
                     "converted_at": "2026-03-02T10:00:00Z" if i % 3 == 0 else None, "value": 0.0,
                     "time": "2026-03-04T10:00:00Z", "delivered": False})

    async def publish(topic, values):
        await ensure_topics(broker)
        p = AIOKafkaProducer(bootstrap_servers=bootstrap(broker))
        await p.start()
        try:
            for key, v in values:
                await p.send(topic, orjson.dumps(v), key=key.encode())
            await p.flush()
        finally:
            await p.stop()

    asyncio.run(publish(topics.OUTCOMES, [(r["customer_id"], r) for r in recs]))
    text, rows = report("--broker", broker, "--timeout", "60")
    assert WARNED in text.stderr and "cart_abandoned (30 treated exposures)" in text.stderr, text.stderr
    assert rows and all(set(r) == ROW for r in rows)
    delivered = [r for r in recs if r["variant"] == "treated"][:10]
    asyncio.run(publish(topics.DELIVERED, [(r["trigger_id"], {"endpoint": "crm", "trigger_id": r["trigger_id"],
                                                               "delivered_at": 1772359200.0}) for r in delivered]))
    text, rows = report("--broker", broker, "--timeout", "60")
    assert "warning" not in text.stderr, text.stderr
    overall = next(r for r in rows if r["stage"] is None and r["arm"] == "treated")
    assert overall["exposures"] == 30
