"""journey dispatch: Standard Webhooks signing, retries, dead letters, restarts and
replay safety, against a real HTTP receiver on loopback and a real broker."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request

import orjson
import pytest
from conftest import T, ev, need_tool
from dispatch_support import OLD_SECRET, SECRET, Dispatch, Receiver, _committed_all, _endpoint, _produce, _trigger
from live_support import Worker, produce_log, read_topic, ready, wait_for
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from test_contracts import validator

from journey.core.config import ConfigError
from journey.core.timeutil import format_time
from journey.dispatch import policy
from journey.dispatch.config import parse_dispatch_config
from journey.dispatch.ledger import Delivered, Offsets
from journey.dispatch.signing import headers as sign_headers
from journey.dispatch.signing import new_secret
from journey.io import topics
from journey.live.broker import free_port

# -- pure parts ----------------------------------------------------------------------------------------------

def _cfg(endpoints: dict, routes=None, **dispatch):
    data = {"endpoints": endpoints, "routes": routes or [{"endpoints": list(endpoints)}]}
    if dispatch:
        data["dispatch"] = dispatch
    return parse_dispatch_config(data)


def test_signatures_verify_with_the_standardwebhooks_package_for_every_secret_in_rotation():
    cfg = _cfg({"a": {"url": "http://127.0.0.1:9/x", "secrets": [SECRET, OLD_SECRET]}})
    body = b'{"id":"t1","data":{"rule":"first_purchase"}}'
    h = sign_headers(cfg.endpoints["a"].secrets, "t1", int(time.time()), body)
    assert h["webhook-id"] == "t1" and h["webhook-signature"].count("v1,") == 2
    for s in (SECRET, OLD_SECRET):
        assert Webhook(s).verify(body, h) == orjson.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, h)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"t1", b"t2"), h)


def test_config_problems_are_listed_together_and_secrets_never_echoed():
    with pytest.raises(ConfigError) as e:
        parse_dispatch_config({"endpoints": {"a": {"url": "ftp://x", "secrets": ["whsec_!!", "hunter2"],
                                                   "concurency": 2}},
                               "routes": [{"rules": ["cart_abandonned"], "endpoints": ["b"]}]})
    text = "\n".join(e.value.problems)
    for want in ("concurrency", "http:// or https://", "secrets[0]", "secrets[1]", "cart_abandoned",
                 "no endpoint named 'b'"):
        assert want in text, text
    assert "hunter2" not in text
    with pytest.raises(ConfigError) as e:
        parse_dispatch_config({"endpoints": {"a": {"url": "http://h/", "secrets_env": "NOPE_X"}},
                               "routes": [{"endpoints": ["a"]}]}, env={})
    assert "NOPE_X is not set" in e.value.problems[0]
    with pytest.raises(ConfigError) as e:
        parse_dispatch_config({"dispatch": {"max_in_flight": 1500},
                               "endpoints": {n: {"url": "http://h/", "secrets": [SECRET]} for n in "ab"},
                               "routes": [{"endpoints": ["a", "b"]}]})
    assert "stall" in e.value.problems[0]


def test_routing_by_rule_kind_and_channel():
    eps = {n: {"url": f"http://127.0.0.1:9/{n}", "secrets": [SECRET]} for n in ("crm", "sms", "all")}
    cfg = _cfg(eps, [{"kinds": ["recovery"], "endpoints": ["crm"]},
                     {"rules": ["payment_failed"], "channels": ["sms"], "endpoints": ["sms", "crm"]},
                     {"endpoints": ["all"]}])
    t = lambda rule, kind, channel: {"data": {"rule": rule, "kind": kind, "channel": channel}}  # noqa: E731
    assert cfg.route(t("payment_failed", "recovery", "sms")) == ["crm", "sms", "all"]
    assert cfg.route(t("payment_failed", "recovery", "email")) == ["crm", "all"]
    assert cfg.route(t("first_purchase", "recognition", "email")) == ["all"]


def test_response_classes_and_backoff():
    assert [policy.classify(s) for s in (200, 204, 410, 429, 408, 500, 503, None, 400, 401, 404)] == [
        "delivered", "delivered", "disable", "retry", "retry", "retry", "retry", "retry", "rejected", "rejected",
        "rejected"]
    waits = [policy.backoff(n, 1.0, 60.0, d) for n in (1, 2, 3, 4) for d in (0.0, 0.999)]
    assert waits[0] == 0.5 and 0.99 < waits[1] < 1.0 and waits[2] == 1.0 and waits[6] == 4.0
    assert policy.backoff(20, 1.0, 60.0, 0.0) == 30.0           # capped, then jittered
    assert policy.retry_after_seconds("7", 0) == 7.0
    assert policy.retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == 10.0
    assert policy.retry_after_seconds("soon", 0) is None
    assert [policy.classify(s) for s in (301, 302, 303, 304, 307, 308)] == ["retry"] * 6   # never a delivery
    ep = _cfg({"a": {"url": "http://h/", "secrets": [SECRET], "max_attempts": 3, "retry_budget": "10s",
                     "max_retry_after": "30s"}}).endpoints["a"]
    assert policy.next_wait(ep, 1, 0.0, 0.0, None, 0.0)[0] == 0.5
    assert policy.next_wait(ep, 3, 0.0, 0.0, None, 0.0)[0] is None          # out of attempts
    assert policy.next_wait(ep, 1, 0.0, 9.8, None, 0.0)[0] is None          # would start past the budget
    assert policy.next_wait(ep, 1, 0.0, 0.0, 5.0, 0.0)[0] == 5.0            # Retry-After wins over backoff
    assert policy.next_wait(ep, 1, 0.0, 0.0, 60.0, 0.0)[0] is None          # beyond max_retry_after


def test_commit_only_over_finished_records_and_a_bounded_delivered_record():
    o = Offsets()
    for off in (5, 6, 7, 8):
        o.read("p0", off)
    o.finish("p0", 6)
    assert o.committable("p0") is None                  # 5 still in flight holds the commit
    o.finish("p0", 5)
    assert o.committable("p0") == 7
    o.finish("p0", 8)
    assert o.committable("p0") is None
    o.finish("p0", 7)
    assert o.committable("p0") == 9 and o.unfinished() == 0
    d = Delivered(2)
    for k in ("a", "b", "c"):
        d.add(k)
    assert "a" not in d and "b" in d and "c" in d and len(d) == 2


def test_urls_are_shown_without_credentials_or_query_and_error_texts_scrubbed():
    from journey.dispatch.redact import hidden_parts, redact_url, scrub

    url = "https://al%40ice:S3cr%2Fet-PW@hooks.example.com:8443/in/x?token=TOK-SECRET&tenant=7#frag"
    assert redact_url(url) == "https://***@hooks.example.com:8443/in/x?***"
    assert redact_url("http://h/p") == "http://h/p" and redact_url("/next?token=T") == "/next?***"
    assert redact_url("http://[::1") == "***"                                   # unparsable: nothing shown
    text = (f"ClientError: {url} / https://hooks.example.com:8443/in/x?token=TOK-SECRET&tenant=7 "
            "/ al@ice:S3cr/et-PW / token=TOK-SECRET / S3cr%2Fet-PW / Bearer API-KEY-1")
    out = scrub(text, hidden_parts(url, ["Bearer API-KEY-1"]))
    for secret in ("S3cr", "TOK-SECRET", "al@ice", "al%40ice", "API-KEY-1", "frag"):
        assert secret not in out, (secret, out)
    assert out.startswith("ClientError: https://***@hooks.example.com:8443/in/x?***")
    cfg = _cfg({"a": {"url": url, "secrets": [SECRET], "headers": {"x-api-key": "API-KEY-1"}}})
    assert cfg.endpoints["a"].shown == "https://***@hooks.example.com:8443/in/x?***"
    assert "API-KEY-1" not in scrub("key API-KEY-1", cfg.endpoints["a"].hidden)
    with pytest.raises(ConfigError) as e:
        _cfg({"a": {"url": "ftp://u:PW-SECRET@h/?token=TOK-SECRET", "secrets": [SECRET]}})
    assert "PW-SECRET" not in str(e.value.problems) and "TOK-SECRET" not in str(e.value.problems)


def test_trigger_records_are_checked_before_routing():
    from journey.dispatch.records import InvalidTrigger, parse_trigger

    good = _trigger("t-1")
    assert parse_trigger(orjson.dumps(good)) == good
    assert parse_trigger(orjson.dumps({**good, "data": {**good["data"], "channel": None}}))
    bad = {"not_json": [None, b"", b"{x", b"\xff"], "not_an_object": [b"[]", b"1", b'"s"', b"null"],
           "id": [orjson.dumps({**good, "id": i}) for i in (None, 1, "", "a b", "x\ny", "é", "x" * 257)]
           + [orjson.dumps({k: v for k, v in good.items() if k != "id"})],
           "data": [orjson.dumps({**good, "data": d}) for d in (None, [], "x", 1)],
           "data.rule": [orjson.dumps({**good, "data": {**good["data"], "rule": r}}) for r in (["a"], {}, 1, None)],
           "data.kind": [orjson.dumps({**good, "data": {**good["data"], "kind": ["recovery"]}})],
           "data.channel": [orjson.dumps({**good, "data": {**good["data"], "channel": ["sms"]}})],
           "time": [orjson.dumps({**good, "time": 1})]}
    for problem, values in bad.items():
        for v in values:
            with pytest.raises(InvalidTrigger) as e:
                parse_trigger(v)
            assert e.value.problem == problem, (v, e.value)


# -- against a broker and a receiver ------------------------------------------------------------------------

def test_delivery_signing_retries_in_time_and_dead_letters(broker, tmp_path):
    rx = Receiver(scripts={
        "t-500": [500, 503, 200],
        "t-timeout": [("sleep", 1.5, 200), 200],
        "t-429": [(429, {"Retry-After": "1"}), 200],
        "t-400": [400],
        "t-exhaust": [500, 500, 500, 500],
        "t-gone": [410],
    })
    fast = dict(timeout="0.6s", backoff_base="0.2s", backoff_max="2s", max_attempts=3, retry_budget="30s")
    config = (_endpoint("hooks", rx.url("hooks"), **fast) + _endpoint("gone", rx.url("gone"), **fast) +
              '[[routes]]\nrules = ["cart_abandoned"]\nendpoints = ["hooks"]\n'
              '[[routes]]\nrules = ["first_purchase"]\nendpoints = ["gone"]\n')
    ids = ["t-ok", "t-500", "t-timeout", "t-429", "t-400", "t-exhaust"]
    triggers = [_trigger(t, cid=f"c{i}") for i, t in enumerate(ids)]
    triggers += [_trigger("t-gone", rule="first_purchase", kind="recognition", cid="g1")]
    d = None
    try:
        _produce(broker, triggers, raw=[b"{not json"])
        d = Dispatch(broker, tmp_path, config)
        wait_for(lambda: d.value("journey_dispatch_endpoint_disabled", endpoint="gone") == 1, 60, "the 410")
        triggers.append(_trigger("t-after-gone", rule="first_purchase", kind="recognition", cid="g2"))
        _produce(broker, triggers[-1:])
        dead = wait_for(lambda: (r := read_topic(broker, topics.TRIGGERS_DEADLETTER, idle_ms=300)) and len(r) >= 5
                        and r, 60, "five dead letters")
        wait_for(lambda: len(rx.of("t-500")) >= 3 and rx.of("t-429")[1:] and rx.of("t-timeout")[1:], 30,
                 "the retried deliveries")

        # every request is a signed CloudEvent; webhook-id is the trigger id; either secret verifies
        by_id = {t["id"]: t for t in triggers}
        for r in rx.requests:
            assert r["headers"]["Content-Type"] == "application/cloudevents+json"
            for s in (SECRET, OLD_SECRET):
                assert Webhook(s).verify(r["body"], r["headers"]) == by_id[r["id"]]

        def gaps(tid):
            at = [r["at"] for r in rx.of(tid)]
            return [b - a for a, b in zip(at, at[1:])]
        assert len(rx.of("t-ok")) == 1
        g = gaps("t-500")
        assert len(g) == 2 and 0.09 <= g[0] <= 0.8 and 0.19 <= g[1] <= 1.2, g     # 0.2 s then 0.4 s, jittered
        assert len(rx.of("t-429")) == 2 and gaps("t-429")[0] >= 0.95, gaps("t-429")  # Retry-After: 1
        assert len(rx.of("t-timeout")) == 2 and gaps("t-timeout")[0] >= 0.6
        assert len(rx.of("t-400")) == 1                                               # not retried
        assert len(rx.of("t-exhaust")) == 3                                           # max_attempts
        assert len(rx.of("t-gone")) == 1 and not rx.of("t-after-gone")               # 410 disabled it

        recs = {(v := orjson.loads(x[1]))["trigger_id"]: v for x in dead}
        assert recs["t-400"]["reason"] == "rejected" and recs["t-400"]["last_status"] == 400
        assert recs["t-exhaust"]["reason"] == "retries_exhausted" and recs["t-exhaust"]["attempts"] == 3
        assert recs["t-exhaust"]["trigger"] == by_id["t-exhaust"]
        assert recs["t-gone"]["reason"] == "endpoint_gone"
        assert recs["t-after-gone"]["reason"] == "endpoint_disabled"
        assert recs[None]["reason"] == "not_a_trigger" and recs[None]["raw"] == "{not json"
        assert "t-ok" not in recs and "t-500" not in recs

        wait_for(lambda: _committed_all(broker, "journey-dispatch"), 30, "offsets committed to the end")
        assert d.value("journey_dispatch_deliveries_total", endpoint="hooks", outcome="delivered") == 4
        assert d.value("journey_dispatch_deadletters_total", endpoint="hooks", reason="retries_exhausted") == 1
        assert d.value("journey_dispatch_retries_total", endpoint="hooks") == 2 + 1 + 1 + 2
        assert d.value("journey_dispatch_endpoint_disabled", endpoint="gone") == 1
        assert d.value("journey_dispatch_attempts_total", endpoint="hooks", result="timeout") == 1
        assert d.value("journey_dispatch_delivery_latency_seconds_count", endpoint="hooks") == 4
        # the delivery records match their published schema, one per trigger delivered
        delivered = [orjson.loads(v) for _k, v, *_ in read_topic(broker, topics.DELIVERED)]
        v = validator("delivered.schema.json")
        for rec in delivered:
            assert not list(v.iter_errors(rec)), rec
        assert sorted(r["trigger_id"] for r in delivered) == ["t-429", "t-500", "t-ok", "t-timeout"]
        # last: promtool's linter (a machine without promtool skips only this, after the checks above)
        lint = subprocess.run([need_tool("promtool"), "check", "metrics"], input=urllib.request.urlopen(
            f"http://127.0.0.1:{d.port}/metrics").read(), capture_output=True)
        assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), lint
    finally:
        rx.stop()
        if d:
            assert d.stop() == 0, d.log.read_text()[-3000:]




def test_kill9_mid_delivery_loses_nothing_and_repeats_keep_their_webhook_id(broker, tmp_path):
    rx = Receiver(delay=0.03)
    config = _endpoint("hooks", rx.url("hooks"), concurrency=4) + '[[routes]]\nendpoints = ["hooks"]\n'
    triggers = [_trigger(f"k-{i:03d}", cid=f"c{i}") for i in range(240)]
    want = {t["id"] for t in triggers}
    _produce(broker, triggers)
    d = Dispatch(broker, tmp_path, config, name="d1")
    try:
        wait_for(lambda: len(rx.requests) >= 80, 60, "80 deliveries", every=0.05)
    finally:
        d.proc.kill()
        d.proc.wait(10)
    before = len(rx.requests)
    assert before < len(want), "killed mid-stream"
    d2 = Dispatch(broker, tmp_path, config, name="d2")
    try:
        wait_for(lambda: set(rx.ids()) >= want, 90, "every trigger delivered")
        wait_for(lambda: _committed_all(broker, "journey-dispatch"), 30, "offsets committed")
        time.sleep(1.0)
        ids = rx.ids()
        assert set(ids) == want, "none lost, nothing else sent"
        for r in rx.requests:
            assert orjson.loads(r["body"])["id"] == r["id"]          # a repeat carries the same webhook-id
        repeats = len(ids) - len(set(ids))
        # only deliveries in flight at the kill may repeat (4 at a time); the rest were recorded as delivered
        assert repeats <= 4, (repeats, before)
        assert d2.value("journey_dispatch_deliveries_total", outcome="delivered") == len(ids) - before
    finally:
        rx.stop()
        assert d2.stop() == 0, d2.log.read_text()[-3000:]


def test_replayed_triggers_are_never_delivered_by_default(broker, tmp_path):
    from journey.core.config import Config
    from journey.history.replay import replay
    from journey.history.synth import write_log

    log = tmp_path / "log.jsonl"
    write_log(str(log), customers=60, events=1200, seed=5)
    out = tmp_path / "replayed.jsonl"
    replay([log], str(out), until=T("2027-01-01T00:00:00Z"), config=Config())
    replayed = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert replayed
    # a replay's triggers put on the topic by a generic tool (no journey-origin header) ...
    _produce(broker, replayed, headers=[("content-type", b"application/cloudevents+json")])
    # ... and an old trigger, even with the live header: a backfill produced through Kafka
    old = _trigger("old-one", at=T("2026-01-01T00:00:00Z"))
    _produce(broker, [old])
    rx = Receiver()
    config = _endpoint("hooks", rx.url("hooks")) + '[[routes]]\nendpoints = ["hooks"]\n'
    d = Dispatch(broker, tmp_path, config)
    try:
        wait_for(lambda: _committed_all(broker, "journey-dispatch"), 60, "every record read and committed")
        assert rx.requests == []
        assert d.value("journey_dispatch_skipped_total", reason="not_live") == len(replayed)
        assert d.value("journey_dispatch_skipped_total", reason="stale") == 1
    finally:
        assert d.stop() == 0, d.log.read_text()[-3000:]
    # asked for explicitly (and in its own group): delivered, each once
    d = Dispatch(broker, tmp_path, config.replace("[endpoints.hooks]", '[dispatch]\ngroup = "redrive"\n'
                                                  "[endpoints.hooks]"), name="d2", args=("--allow-replayed",))
    try:
        wait_for(lambda: len(rx.requests) >= len(replayed) + 1, 60, "the replayed triggers")
        assert sorted(rx.ids()) == sorted([t["id"] for t in replayed] + ["old-one"])
    finally:
        rx.stop()
        assert d.stop() == 0, d.log.read_text()[-3000:]


def test_live_worker_triggers_reach_the_endpoint(broker, tmp_path):
    """The real chain: events -> worker -> journey.triggers (header journey-origin: live) -> dispatch."""
    now = int(time.time() * 1000)
    log = tmp_path / "e.jsonl"
    log.write_bytes(b"\n".join(orjson.dumps(e) for e in [
        ev("checkout.started", "bob", format_time(now - 3_600_000), checkout_id="chk-1", revenue=5000),
        ev("order.completed", "carol", format_time(now - 3_000_000), order_id="o-1", revenue=2500),
    ]) + b"\n")
    rx = Receiver()
    # quiet hours off: between 21:00 and 08:00 UTC both (marketing) triggers would wait for 08:00
    rules = tmp_path / "rules.toml"
    rules.write_text('[policy]\nquiet_start = "00:00"\nquiet_end = "00:00"\n')
    w = Worker(broker, tmp_path, rules=str(rules))
    d = None
    try:
        w.wait_ready()
        d = Dispatch(broker, tmp_path, _endpoint("hooks", rx.url("hooks")) + '[[routes]]\nendpoints = ["hooks"]\n')
        produce_log(broker, log, until=now - 60_000)
        got = wait_for(lambda: len(rx.requests) >= 2 and rx.requests, 90, "two webhooks")
        live = [orjson.loads(v) for _k, v, *_ in read_topic(broker, topics.TRIGGERS)]
        assert sorted(r["id"] for r in got) == sorted(t["id"] for t in live)
        assert {orjson.loads(r["body"])["data"]["rule"] for r in got} == {"cart_abandoned", "first_purchase"}
        for r in got:
            assert Webhook(SECRET).verify(r["body"], r["headers"])
    finally:
        rx.stop()
        if d:
            assert d.stop() == 0, d.log.read_text()[-3000:]
        assert w.stop() == 0


def test_the_example_configuration_is_valid():
    from pathlib import Path

    from journey.dispatch.config import load_dispatch_config

    path = Path(__file__).resolve().parent.parent / "deploy" / "dispatch.example.toml"
    cfg = load_dispatch_config(str(path), env={"JOURNEY_CRM_SECRETS": f"{SECRET},{OLD_SECRET}",
                                               "JOURNEY_SMS_SECRETS": SECRET})
    assert set(cfg.endpoints) == {"crm", "sms"} and len(cfg.endpoints["crm"].secrets) == 2
    assert cfg.route({"data": {"rule": "payment_failed", "kind": "recovery", "channel": "sms"}}) == ["crm", "sms"]


# -- hostile receivers, records and configurations ---------------------------------------------------------------

FAST = dict(timeout="5s", backoff_base="0.2s", backoff_max="1s", max_attempts=3, retry_budget="30s")


def _dead_letters(broker, n: int, timeout: float = 60) -> dict:
    """The dead letters once there are at least ``n``: {trigger id or offset: record}."""
    got = wait_for(lambda: (r := read_topic(broker, topics.TRIGGERS_DEADLETTER, idle_ms=300)) and len(r) >= n
                   and r, timeout, f"{n} dead letters")
    return {(v := orjson.loads(x[1]))["trigger_id"] or f"offset {v['offset']}": v for x in got}


def _status(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if v.strip().endswith("kB"):
                out[k] = int(v.split()[0]) * 1024
    return out


def test_redirects_are_never_followed_and_end_retried_then_dead_lettered(broker, tmp_path):
    rx, other = Receiver(), Receiver()          # other: another origin (another port)
    same, elsewhere = rx.url("target"), other.url("target")
    with rx.lock:
        rx.scripts.update({
            "r-302": [(302, {"Location": same})] * 3,           # a POST -> GET redirect: its 200 is no delivery
            "r-303": [(303, {"Location": same})] * 3,
            "r-307": [(307, {"Location": elsewhere})] * 3,      # would re-send body, signature and api key
            "r-308": [(308, {"Location": elsewhere + "?token=REDIRECT-TOKEN"})] * 3,
            "r-then-ok": [(302, {"Location": same}), 200],      # a retry after a redirect is a new POST
        })
    config = (_endpoint("hooks", rx.url("hooks"), headers={"x-api-key": "API-KEY-VALUE"}, **FAST)
              + '[[routes]]\nendpoints = ["hooks"]\n')
    ids = ["r-302", "r-303", "r-307", "r-308", "r-then-ok"]
    d = None
    try:
        _produce(broker, [_trigger(t, cid=f"c{i}") for i, t in enumerate(ids)])
        d = Dispatch(broker, tmp_path, config)
        dead = _dead_letters(broker, 4)
        wait_for(lambda: _committed_all(broker, "journey-dispatch"), 30, "offsets committed to the end")
        time.sleep(0.5)
        assert other.requests == [], "a redirect to another origin was followed"
        assert [r for r in rx.requests if r["endpoint"] != "hooks"] == [], "a redirect was followed"
        for tid in ids[:4]:
            assert [r["method"] for r in rx.of(tid)] == ["POST"] * 3, tid          # retried, max_attempts
            rec = dead[tid]
            assert rec["reason"] == "retries_exhausted" and rec["attempts"] == 3, rec
            assert rec["last_status"] == int(tid[2:]) and "redirect" in rec["last_error"], rec
            assert "not followed" in rec["last_error"], rec
        assert "target" in dead["r-307"]["last_error"] and "REDIRECT-TOKEN" not in str(dead)
        assert len(rx.of("r-then-ok")) == 2 and "r-then-ok" not in dead and len(dead) == 4
        assert d.value("journey_dispatch_deliveries_total", endpoint="hooks", outcome="delivered") == 1
        assert d.value("journey_dispatch_deliveries_total", endpoint="hooks", outcome="dead_lettered") == 4
        assert d.value("journey_dispatch_attempts_total", endpoint="hooks", result="redirect") == 4 * 3 + 1
        assert d.value("journey_dispatch_retries_total", endpoint="hooks") == 4 * 2 + 1
        assert "REDIRECT-TOKEN" not in d.log.read_text()
    finally:
        rx.stop()
        other.stop()
        if d:
            assert d.stop() == 0, d.log.read_text()[-3000:]


def test_huge_answers_are_not_read_into_memory(broker, tmp_path):
    big = 64 << 20                              # each answer: 64 MiB, chunked, generated as it is sent
    rx = Receiver(scripts={"big-503": [("body", 503, big), ("body", 200, big)]}, default=("body", 200, big))
    config = _endpoint("hooks", rx.url("hooks"), **{**FAST, "timeout": "30s"}) + '[[routes]]\nendpoints = ["hooks"]\n'
    ids = ["big-1", "big-2", "big-3", "big-503"]
    d = Dispatch(broker, tmp_path, config)
    try:
        wait_for(lambda: (r := ready(d.port)) and r.get("ready"), 60, "the dispatcher ready")
        time.sleep(1.0)
        before = _status(d.proc.pid)["VmRSS"]
        _produce(broker, [_trigger(t, cid=f"c{i}") for i, t in enumerate(ids)])
        wait_for(lambda: d.value("journey_dispatch_deliveries_total", endpoint="hooks", outcome="delivered") == 4,
                 60, "four deliveries", every=0.2)
        peak = _status(d.proc.pid)["VmHWM"]
        assert d.proc.poll() is None
        sent = wait_for(lambda: len(s := [n for tid in ids for n in rx.sent.get(tid, ())]) == 5 and s, 30,
                        "the receiver done writing", every=0.2)
        assert all(n < big for n in sent), sent                         # the dispatcher hung up early
        # five answers of 64 MiB (320 MiB): the dispatcher's peak grows by a small fraction of one
        assert peak - before < 24 << 20, (before >> 20, peak >> 20)
        assert d.value("journey_dispatch_attempts_total", endpoint="hooks", result="5xx") == 1
        assert len(rx.of("big-503")) == 2
    finally:
        rx.stop()
        assert d.stop() == 0, d.log.read_text()[-3000:]


def test_retry_after_takes_only_ascii_delay_seconds_or_http_dates():
    at = 1445412470.0                           # 10 s before Wed, 21 Oct 2015 07:28:00 GMT
    for good, want in (("7", 7.0), (" 12 ", 12.0), ("0", 0.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 10.0),
                       ("Wednesday, 21-Oct-15 07:28:00 GMT", 10.0), ("Wed Oct 21 07:28:00 2015", 10.0)):
        assert policy.retry_after_seconds(good, at) == want, good
    assert policy.retry_after_seconds("9" * 5000, at) == policy.LONGEST_DELAY     # no int() of 5000 digits
    for bad in ("１２", "٣", "²", "๓", "1.5", "-1", "+3", "1e3", "12 s", "soon", "Wed, ２1 Oct 2015 07:28:00 GMT",
                "Wed, 21 Oct 2015 07:28:00", "", None):
        assert policy.retry_after_seconds(bad, at) is None, bad


def test_non_ascii_retry_after_is_ignored_and_the_delivery_retried(broker, tmp_path):
    rx = Receiver(scripts={"ra-fullwidth": [(503, {"Retry-After": "１２"}), 200],
                           "ra-arabic": [(429, {"Retry-After": "٣"}), 200],
                           "ra-superscript": [(503, {"Retry-After": "²"}), 200]})
    config = _endpoint("hooks", rx.url("hooks"), **FAST) + '[[routes]]\nendpoints = ["hooks"]\n'
    ids = ["ra-fullwidth", "ra-arabic", "ra-superscript"]
    d = Dispatch(broker, tmp_path, config)
    try:
        _produce(broker, [_trigger(t, cid=f"c{i}") for i, t in enumerate(ids)])
        wait_for(lambda: d.value("journey_dispatch_deliveries_total", endpoint="hooks", outcome="delivered") == 3,
                 30, "three deliveries", every=0.2)
        for tid in ids:
            at = [r["at"] for r in rx.of(tid)]
            assert len(at) == 2 and at[1] - at[0] < 2.0, (tid, at)          # backoff (0.2 s), not 12 s or a crash
        wait_for(lambda: _committed_all(broker, "journey-dispatch"), 30, "offsets committed to the end")
        assert d.value("journey_dispatch_internal_errors_total") == 0
    finally:
        rx.stop()
        assert d.stop() == 0, d.log.read_text()[-3000:]


def _check(tmp_path, text: str, name="check") -> subprocess.CompletedProcess:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return subprocess.run([sys.executable, "-m", "journey", "dispatch", "--config", str(path), "--check"],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_check_refuses_configurations_that_could_only_fail_when_sending(tmp_path):
    bad = {
        "creds_and_authorization": ('url = "http://u:p@127.0.0.1:9/x"\nheaders = {Authorization = "Bearer k"}',
                                    "credentials in the URL"),
        "user_only_and_authorization": ('url = "http://u@127.0.0.1:9/x"\nheaders = {authorization = "k"}',
                                        "credentials in the URL"),
        "newline_in_header": ('url = "http://127.0.0.1:9/x"\nheaders = {x-key = "a\\nb"}', "printable ASCII"),
        "non_ascii_header": ('url = "http://127.0.0.1:9/x"\nheaders = {x-key = "é"}', "printable ASCII"),
        "bad_header_name": ('url = "http://127.0.0.1:9/x"\nheaders = {"x key" = "1"}', "not a valid header name"),
        "framing_header": ('url = "http://127.0.0.1:9/x"\nheaders = {Content-Length = "5"}', "set by the dispatcher"),
        "port_out_of_range": ('url = "http://127.0.0.1:99999/x"', "Port out of range"),
        "port_zero": ('url = "http://127.0.0.1:0/x"', "port 0"),
        "broken_ipv6": ('url = "http://[::1/x"', "not a valid URL"),
        "space_in_host": ('url = "http://ex ample.com/x"', "not a valid host name"),
        "no_timeout": ('url = "http://127.0.0.1:9/x"\ntimeout = "0s"', "timeout: must be more than 0"),
        "nan_rate": ('url = "http://127.0.0.1:9/x"\nrate = nan', "finite"),
        "inf_budget": ('url = "http://127.0.0.1:9/x"\nretry_budget = inf', "finite"),
    }
    for name, (lines, want) in bad.items():
        text = f'[endpoints.a]\n{lines}\nsecrets = ["{SECRET}"]\n[[routes]]\nendpoints = ["a"]\n'
        r = _check(tmp_path, text, name)
        assert r.returncode == 2 and want in r.stderr and "Traceback" not in r.stderr, (name, r.stderr)
    ok = _check(tmp_path, f'[endpoints.a]\nurl = "https://hooks.example.com:8443/in"\nsecrets = ["{SECRET}"]\n'
                          'headers = {Authorization = "Bearer k", x-tenant = "t 1"}\n[[routes]]\nendpoints = ["a"]\n')
    assert ok.returncode == 0 and "https://hooks.example.com:8443/in" in ok.stdout, ok.stderr


_BYPASS_CHECK = """
import dataclasses, sys
from journey.dispatch.config import load_dispatch_config
from journey.dispatch.service import run

# what --check refuses, built past it for the endpoint "broken": credentials in the URL beside an
# authorization header (aiohttp raises ValueError at every send)
cfg = load_dispatch_config(sys.argv[1])
eps = {n: dataclasses.replace(e, url=e.url.replace("http://", "http://user:pw@"), shown="", hidden=(),
                              headers={**e.headers, "authorization": "Bearer k"}) if n == "broken" else e
       for n, e in cfg.endpoints.items()}
sys.exit(run(dataclasses.replace(cfg, endpoints=eps), sys.argv[2], "127.0.0.1", int(sys.argv[3]), False))
"""


def test_an_exception_inside_a_delivery_is_counted_retried_then_dead_lettered(broker, tmp_path):
    rx = Receiver()
    config = (_endpoint("broken", rx.url("broken"), **FAST) + _endpoint("fine", rx.url("fine"), **FAST)
              + '[[routes]]\nkinds = ["recovery"]\nendpoints = ["broken"]\n'
                '[[routes]]\nkinds = ["recognition"]\nendpoints = ["fine"]\n')
    d = Dispatch(broker, tmp_path, config, code=_BYPASS_CHECK)
    try:
        # the same key: one partition, the failing trigger first; its commit must not be held
        _produce(broker, [_trigger("x-fails", cid="same"),
                          _trigger("x-fine", rule="first_purchase", kind="recognition", cid="same")])
        dead = _dead_letters(broker, 1)
        rec = dead["x-fails"]
        assert rec["reason"] == "retries_exhausted" and rec["attempts"] == 3, rec
        assert "internal error: ValueError" in rec["last_error"] and "AUTHORIZATION" in rec["last_error"], rec
        wait_for(lambda: _committed_all(broker, "journey-dispatch"), 30, "offsets committed to the end")
        assert d.value("journey_dispatch_internal_errors_total", endpoint="broken") == 3
        assert d.value("journey_dispatch_attempts_total", endpoint="broken", result="internal") == 3
        assert d.value("journey_dispatch_retries_total", endpoint="broken") == 2
        assert d.value("journey_dispatch_in_flight_records") == 0
        assert d.proc.poll() is None
        assert [r["id"] for r in rx.requests] == ["x-fine"], "only the fine endpoint was sent anything"
        assert "internal error: ValueError" in d.log.read_text()
    finally:
        rx.stop()
        assert d.stop() == 0, d.log.read_text()[-3000:]


def test_a_delivery_task_that_raises_is_rerun_then_dead_lettered_or_stops_the_dispatcher(monkeypatch):
    from journey.dispatch import service

    monkeypatch.setattr(service, "GUARD_WAIT", 0.05)
    d = service.Dispatcher(_cfg({"a": {"url": "http://u:pw@127.0.0.1:9/x?token=GUARD-SECRET",
                                       "secrets": [SECRET]}}), "kafka://127.0.0.1:1")
    runs, last = [], []

    async def raises():
        runs.append(1)
        raise KeyError("from http://u:pw@127.0.0.1:9/x?token=GUARD-SECRET")

    async def dead_letter(error):
        last.append(error)

    asyncio.run(d._guarded("a", raises, dead_letter))
    assert len(runs) == service.GUARD_RUNS and len(last) == 1 and not d.failed
    assert "internal error: KeyError" in last[0] and "GUARD-SECRET" not in last[0], last
    got = d.metrics.registry.get_sample_value("journey_dispatch_internal_errors_total", {"endpoint": "a"})
    assert got == service.GUARD_RUNS

    async def refused(error):
        raise OSError("the broker is away")

    async def guarded():
        t = asyncio.create_task(d._guarded("a", raises, refused))
        await asyncio.wait([t])
        return t
    t = asyncio.run(guarded())
    assert t.cancelled() and d.failed and d.stopping.is_set()    # stops; the record stays uncommitted


def test_hostile_trigger_records_are_dead_lettered_and_the_dispatcher_carries_on(broker, tmp_path):
    import json
    from pathlib import Path

    from jsonschema import Draft202012Validator

    def with_data(tid, **kw):
        t = _trigger(tid)
        t["data"] = {**t["data"], **kw}
        return orjson.dumps(t)
    hostile = {
        "data.rule": [with_data("h-1", rule=["cart_abandoned"])],
        "data.kind": [with_data("h-2", kind={"recovery": 1})],
        "data.channel": [with_data("h-3", channel=7)],
        "data": [orjson.dumps({**_trigger("h-4"), "data": "cart_abandoned"})],
        "id": [orjson.dumps({k: v for k, v in _trigger("h-5").items() if k != "id"}),
               orjson.dumps({**_trigger("h-6"), "id": 12345}),
               orjson.dumps({**_trigger("h-7"), "id": "two\nlines"})],
        "time": [orjson.dumps({**_trigger("h-8"), "time": ["2026-01-01"]})],
        "not_an_object": [b"[1, 2, 3]", b'"cart_abandoned"'],
        "not_json": [b"\xff\xfe{", b"", None],
    }
    raw = [r for rs in hostile.values() for r in rs]
    rx = Receiver()
    config = (_endpoint("hooks", rx.url("hooks"), **FAST)
              + '[[routes]]\nrules = ["cart_abandoned"]\nkinds = ["recovery"]\nchannels = ["email"]\n'
                'endpoints = ["hooks"]\n')
    d = Dispatch(broker, tmp_path, config)
    try:
        # the hostile records, then a good one on the same partition (the same key)
        _produce(broker, [], raw=raw + [orjson.dumps(_trigger("h-good", cid="x"))])
        wait_for(lambda: rx.of("h-good"), 30, "the good trigger delivered")
        dead = _dead_letters(broker, len(raw))
        wait_for(lambda: _committed_all(broker, "journey-dispatch"), 30, "offsets committed to the end")
        assert d.proc.poll() is None, d.log.read_text()[-3000:]
        assert len(dead) == len(raw) and len(rx.requests) == 1
        root = Path(__file__).resolve().parent.parent / "topics"
        schema = Draft202012Validator(json.loads((root / "triggers-deadletter.schema.json").read_text()))
        for rec in dead.values():
            assert rec["reason"] == "not_a_trigger" and rec["last_error"] and "trigger" not in rec, rec
            assert not list(schema.iter_errors(rec)), rec
        assert any("data.rule is a list" in r["last_error"] for r in dead.values())
        for problem, rs in hostile.items():
            assert d.value("journey_dispatch_invalid_records_total", problem=problem) == len(rs), problem
        assert d.value("journey_dispatch_deadletters_total", endpoint="-", reason="not_a_trigger") == len(raw)
        assert d.value("journey_dispatch_deliveries_total", endpoint="hooks", outcome="delivered") == 1
    finally:
        rx.stop()
        assert d.stop() == 0, d.log.read_text()[-3000:]


def test_url_credentials_and_query_are_never_shown(broker, tmp_path):
    secrets = ("PA55W0RD-x", "T0KEN-SECRET-1", "API-KEY-VALUE")
    rx = Receiver()
    with rx.lock:
        rx.scripts.update({
            "s-400": [(400, {}, "bad token T0KEN-SECRET-1 for alice:PA55W0RD-x")],         # echoed back
            "s-redirect": [(302, {"Location": rx.url("else").replace("http://", "http://alice:PA55W0RD-x@")
                                  + "?token=T0KEN-SECRET-1"})] * 2,
            "s-drop": [("disconnect",)] * 2,
        })
    secret_url = rx.url("hooks").replace("http://", "http://alice:PA55W0RD-x@") + "?token=T0KEN-SECRET-1&b=2"
    closed = f"http://alice:PA55W0RD-x@127.0.0.1:{free_port()}/hooks?token=T0KEN-SECRET-1"
    fast = {**FAST, "max_attempts": 2}
    config = (_endpoint("hooks", secret_url, headers={"x-api-key": "API-KEY-VALUE"}, **fast)
              + _endpoint("closed", closed, **fast)
              + '[[routes]]\nkinds = ["recovery"]\nendpoints = ["hooks"]\n'
                '[[routes]]\nkinds = ["recognition"]\nendpoints = ["closed"]\n')
    d = Dispatch(broker, tmp_path, config, args=("--loglevel", "debug"))
    try:
        _produce(broker, [_trigger("s-400", cid="c1"), _trigger("s-redirect", cid="c2"),
                          _trigger("s-drop", cid="c3"),
                          _trigger("s-closed", rule="first_purchase", kind="recognition", cid="c4")])
        dead = _dead_letters(broker, 4)
        wait_for(lambda: _committed_all(broker, "journey-dispatch"), 30, "offsets committed to the end")
        # the URL was used as configured: credentials (basic auth) and query reached the receiver
        assert all(r["query"] == "token=T0KEN-SECRET-1&b=2" and r["headers"]["Authorization"].startswith("Basic ")
                   for r in rx.requests) and len(rx.requests) == 5
        assert dead["s-400"]["reason"] == "rejected" and "bad token ***" in dead["s-400"]["last_error"]
        assert "http://***@127.0.0.1" in dead["s-redirect"]["last_error"]
        assert dead["s-drop"]["last_error"] and dead["s-closed"]["last_error"]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{d.port}/metrics").read().decode()
        log = d.log.read_text()
        check = _check(tmp_path, d.config.read_text())
        assert check.returncode == 0 and "http://***@127.0.0.1" in check.stdout and "x-api-key" in check.stdout
        refused = _check(tmp_path, d.config.read_text().replace("http://alice", "ftp://alice", 1), "refused")
        assert refused.returncode == 2 and "ftp://***@127.0.0.1" in refused.stderr, refused.stderr
        shown = {"log": log, "dead letters": str([x[1] for x in read_topic(broker, topics.TRIGGERS_DEADLETTER)]),
                 "metrics": metrics, "--check": check.stdout + check.stderr,
                 "--check refused": refused.stdout + refused.stderr}
        for where, text in shown.items():
            for s in secrets:
                assert s not in text, (s, where)
        assert "dead letter: rejected" in log and "dead letter: retries_exhausted" in log
    finally:
        rx.stop()
        assert d.stop() == 0, d.log.read_text()[-3000:]


def test_check_fails_on_unset_secret_variables_unless_allowed_and_warns_of_journey_routes(tmp_path):
    import os
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "deploy" / "dispatch.example.toml"
    env = {k: v for k, v in os.environ.items() if not k.endswith("_SECRETS")}

    def check(*flags, extra=None):
        return subprocess.run([sys.executable, "-m", "journey", "dispatch", "--check", "--config", str(example),
                               *flags], capture_output=True, text=True, env={**env, **(extra or {})}, timeout=60,
                              stdin=subprocess.DEVNULL)

    # as the dispatcher would refuse to start, --check fails, naming each variable (never a value)
    p = check()
    assert p.returncode == 2 and p.stdout == "", (p.stdout, p.stderr)
    assert "JOURNEY_CRM_SECRETS is not set" in p.stderr and "JOURNEY_SMS_SECRETS is not set" in p.stderr, p.stderr
    assert "--allow-unset-secrets" in p.stderr and "Traceback" not in p.stderr
    # one set, one not: only the missing one is named, and the value that is set is never printed
    crm = new_secret()
    p = check(extra={"JOURNEY_CRM_SECRETS": crm})
    assert p.returncode == 2 and "JOURNEY_SMS_SECRETS is not set" in p.stderr, p.stderr
    assert "JOURNEY_CRM_SECRETS" not in p.stderr and crm not in p.stderr + p.stdout
    assert crm.split("_", 1)[1][:12] not in p.stderr + p.stdout
    # before deployment: a warning only
    p = check("--allow-unset-secrets")
    assert p.returncode == 0 and "warning:" in p.stderr and "--new-secret" in p.stderr, p.stderr
    assert p.stdout.startswith("endpoint crm:")
    # with both set, it passes without the flag, and prints no secret
    sms = new_secret()
    p = check(extra={"JOURNEY_CRM_SECRETS": crm, "JOURNEY_SMS_SECRETS": sms})
    assert p.returncode == 0 and p.stdout.startswith("endpoint crm:") and "1 secret(s)" in p.stdout, p.stderr
    assert crm not in p.stdout + p.stderr and sms not in p.stdout + p.stderr
    # the flag is for --check only: the dispatcher cannot run without its secrets
    p = subprocess.run([sys.executable, "-m", "journey", "dispatch", "--config", str(example),
                        "--allow-unset-secrets"], capture_output=True, text=True, env=env, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 2 and "--allow-unset-secrets goes with --check only" in p.stderr, p.stderr
    cfg = parse_dispatch_config({"endpoints": {"a": {"url": "http://h/", "secrets": [SECRET]}},
                                 "routes": [{"rules": ["browse_abandoned"], "endpoints": ["a"]}]})
    assert any("browse_abandoned" in w and "journey" in w for w in cfg.warnings)
    with pytest.raises(ConfigError):
        parse_dispatch_config({"endpoints": {"a": {"url": "http://h/", "secrets_env": "NOPE_X"}},
                               "routes": [{"endpoints": ["a"]}]}, env={})
