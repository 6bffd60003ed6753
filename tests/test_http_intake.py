"""``journey intake`` over raw HTTP: every endpoint, status and limit of domain.md section 10, against a
real broker, the intake as a child process (as an operator runs it, at debug log level so the no-secrets
check sees everything it could log)."""

from __future__ import annotations

import gzip
import json
import threading
import time
from pathlib import Path

import orjson
import pytest
from intake_support import Intake, basic, metric, post, request, rss_kib
from live_support import read_topic, wait_for

from journey.core import intake as core_intake
from journey.io import topics

pytestmark = pytest.mark.live

SECRET_KEYS = ("wk-test", "wk-other-7f3a", "wk-file-one-91c2")
MARK = "body-marker-5d0c"   # in request bodies: must never reach the log or the metrics


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from journey.live.broker import EmbeddedBroker

    tmp = tmp_path_factory.mktemp("intake")
    keyfile = tmp / "keys.txt"
    keyfile.write_text(f"# rotated by the tests\n{SECRET_KEYS[2]}\n")
    b = EmbeddedBroker(log_path=str(tmp / "broker.log")).start()
    it = None
    try:
        it = Intake(b.url, tmp, keys=",".join(SECRET_KEYS[:2]),
                    args=("--write-keys", str(keyfile), "--loglevel", "debug"))
        it.wait_ready()
        it.broker = b.url
        it.keyfile = keyfile
        yield it
    finally:
        if it is not None:
            it.stop()
        b.stop()


def _records(broker: str, *topic_names) -> dict:
    """messageId (or id) -> (topic, key, record, partition)."""
    out = {}
    for t in topic_names:
        for key, value, p, _o, _h in read_topic(broker, t, idle_ms=300):
            d = orjson.loads(value)
            out[d.get("messageId") or d.get("id")] = (t, key, d, p)
    return out


def test_every_endpoint_writes_its_message_where_its_type_belongs(site):
    sent = {
        "track": ({"userId": "ep-1", "event": "Order Completed", "messageId": "m-track",
                   "properties": {"order_id": "o-1", "revenue": 12.5, "note": MARK}}, topics.PURCHASES, "ep-1"),
        "identify": ({"userId": "ep-2", "messageId": "m-identify", "traits": {"timezone": "Europe/Paris"}},
                     topics.CLICKSTREAM, "ep-2"),
        "page": ({"anonymousId": "anon-3", "name": "Home", "messageId": "m-page"}, topics.CLICKSTREAM, "anon-3"),
        "screen": ({"userId": "ep-4", "name": "Cart", "messageId": "m-screen"}, topics.CLICKSTREAM, "ep-4"),
        "group": ({"userId": "ep-5", "groupId": "g-1", "messageId": "m-group"}, topics.CLICKSTREAM, "ep-5"),
        "alias": ({"userId": "ep-6", "previousId": "anon-6", "messageId": "m-alias"}, topics.CLICKSTREAM, "ep-6"),
        "batch": ({"batch": [{"type": "track", "userId": "ep-7", "event": "Ticket Opened", "messageId": "m-batch",
                              "properties": {"ticket_id": "t-1", "priority": "high"}}]}, topics.SUPPORT, "ep-7"),
        "import": ({"batch": [{"type": "track", "userId": "ep-8", "event": "Product Viewed", "messageId": "m-import",
                               "properties": {"product_id": "p-1"}}]}, topics.CLICKSTREAM, "ep-8"),
    }
    before = time.time() * 1000
    for endpoint, (body, _topic, _key) in sent.items():
        status, answer, _h = site.post(f"/v1/{endpoint}", body)
        assert (status, answer) == (200, {"success": True, "accepted": 1, "rejected": 0}), endpoint
    got = _records(site.broker, *topics.SOURCES)
    for endpoint, (_body, topic, key) in sent.items():
        mid = "m-" + endpoint
        t, k, rec, _p = got[mid]
        assert (t, k.decode()) == (topic, key), endpoint
        assert rec["type"] == ("track" if endpoint in ("batch", "import") else endpoint)
        assert before - 1000 <= core_intake.parse_time(rec["receivedAt"]) <= time.time() * 1000 + 1000
        # no timestamp sent and none to correct from: the arrival is the event time
        assert rec["timestamp"] == rec["receivedAt"]
        assert "writeKey" not in rec
        ev = core_intake.parse(orjson.dumps(rec))
        assert ev.key == (key if endpoint != "page" else "anon:anon-3")
    assert core_intake.parse(orjson.dumps(got["m-track"][2])).f == {"order_id": "o-1", "revenue": 1250}


def test_timestamps_sent_are_kept_and_a_skewed_device_clock_is_corrected(site):
    body = {"sentAt": "2026-06-01T12:00:10Z", "batch": [
        {"type": "track", "userId": "ts-1", "event": "Product Viewed", "messageId": "ts-kept",
         "timestamp": "2026-03-01T10:00:00Z"},
        # the device clock is 10 s behind its own sentAt: the event happened 10 s before arrival ... minus 10 s
        {"type": "track", "userId": "ts-1", "event": "Product Viewed", "messageId": "ts-skew",
         "originalTimestamp": "2026-06-01T12:00:00Z"},
        {"type": "track", "userId": "ts-1", "event": "Product Viewed", "messageId": "ts-none"},
    ]}
    status, answer, _h = site.post("/v1/batch", body)
    assert status == 200 and answer["accepted"] == 3
    got = _records(site.broker, topics.CLICKSTREAM)
    parse = core_intake.parse_time
    kept, skew, none = got["ts-kept"][2], got["ts-skew"][2], got["ts-none"][2]
    assert kept["timestamp"] == "2026-03-01T10:00:00Z"
    assert parse(skew["receivedAt"]) - parse(skew["timestamp"]) == 10_000
    assert skew["sentAt"] == "2026-06-01T12:00:10Z"     # the batch's sentAt, on each message
    assert none["timestamp"] == none["receivedAt"]


def test_a_batch_of_valid_and_invalid_messages(site):
    from jsonschema import Draft202012Validator

    schema = json.loads((Path(__file__).parent.parent / "topics" / "deadletter.schema.json").read_text())
    batch = [
        {"type": "track", "userId": "mix-1", "event": "Order Completed", "messageId": "mix-ok-1",
         "properties": {"order_id": "o-9", "revenue": "19.90"}},
        {"type": "track", "event": "Order Completed", "messageId": "mix-bad-1"},                     # no one
        {"type": "track", "userId": "mix-2", "event": "Product Viewed", "timestamp": "yesterday",
         "messageId": "mix-bad-2", "properties": {"secret": MARK}},                                   # bad time
        7,                                                                                           # no object
        {"type": "track", "userId": "mix-3", "event": "Something New", "messageId": "mix-ok-2"},      # kept
        {"type": "track", "userId": "mix-4", "event": "Survey Answered", "messageId": "mix-bad-3",
         "properties": {"nps": 42}, "writeKey": SECRET_KEYS[0]},                                       # bad field
    ]
    status, answer, _h = site.post("/v1/batch", {"batch": batch})
    assert (status, answer) == (200, {"success": True, "accepted": 2, "rejected": 4})
    got = _records(site.broker, *topics.SOURCES)
    assert got["mix-ok-1"][0] == topics.PURCHASES and got["mix-ok-2"][0] == topics.CLICKSTREAM
    assert not {"mix-bad-1", "mix-bad-2", "mix-bad-3"} & set(got)
    dls = [orjson.loads(v) for _k, v, *_ in read_topic(site.broker, topics.DEADLETTER, idle_ms=300)]
    mine = {d["index"]: d for d in dls if d.get("endpoint") == "/v1/batch" and ("mix-" in d["raw"] or d["raw"] == "7")}
    assert {i: d["reason"] for i, d in mine.items()} == {1: "no_customer", 2: "bad_time", 3: "not_object",
                                                           5: "bad_field"}
    v = Draft202012Validator(schema)
    for d in mine.values():
        assert not list(v.iter_errors(d)), d
        assert core_intake.parse_time(d["received_at"])
        assert SECRET_KEYS[0] not in d["raw"]      # the write key is taken out of every message
    assert orjson.loads(mine[2]["raw"])["properties"] == {"secret": MARK}   # the bytes, as the worker's are
    m = site.metrics()
    assert metric(m, "journey_intake_messages_rejected_total", reason="bad_time") >= 1
    assert metric(m, "journey_intake_messages_accepted_total", topic=topics.PURCHASES) >= 1


def test_write_keys_from_the_header_or_the_body_and_rotation_through_the_file(site):
    msg = {"userId": "auth-1", "event": "Product Viewed"}
    assert site.post("/v1/track", msg, key=None)[0] == 401                                   # none
    status, answer, hdrs = site.post("/v1/track", msg, key="not-a-key")
    assert status == 401 and answer["success"] is False and "www-authenticate" in hdrs
    assert site.post("/v1/track", {**msg, "writeKey": "not-a-key"}, key=None)[0] == 401
    assert site.post("/v1/track", {**msg, "writeKey": SECRET_KEYS[1]}, key=None)[0] == 200    # in the body
    # a wrong header is not mended by a right key in the body
    assert site.post("/v1/track", {**msg, "writeKey": SECRET_KEYS[1]}, key="not-a-key")[0] == 401
    for k in SECRET_KEYS:
        assert site.post("/v1/track", msg, key=k)[0] == 200, "every key of the environment and the file"
    # rotation: the file's key replaced, without a restart
    site.keyfile.write_text("wk-file-two-44ab\n")
    wait_for(lambda: site.post("/v1/track", msg, key="wk-file-two-44ab")[0] == 200, 10, "the new key", every=0.3)
    assert site.post("/v1/track", msg, key=SECRET_KEYS[2])[0] == 401
    assert site.post("/v1/track", msg, key=SECRET_KEYS[0])[0] == 200     # the environment's still hold
    site.keyfile.write_text(f"{SECRET_KEYS[2]}\n")


def test_gzip_bodies_and_every_limit(site):
    ok = {"batch": [{"type": "track", "userId": "gz-1", "event": "Product Viewed", "messageId": f"gz-{i}",
                     "properties": {"product_id": "p", "pad": MARK}} for i in range(50)]}
    assert site.post("/v1/batch", ok, gz=True)[:2] == (200, {"success": True, "accepted": 50, "rejected": 0})

    def one(size: int) -> dict:
        m = {"type": "track", "userId": "lim-1", "event": "Product Viewed", "messageId": f"lim-{size}",
             "properties": {"pad": ""}}
        m["properties"]["pad"] = "x" * (size - len(orjson.dumps(m)))
        assert len(orjson.dumps(m)) == size
        return m
    # a message of exactly 32 KB is taken; one byte more and the whole request is 400, nothing written
    assert site.post("/v1/batch", {"batch": [one(32 * 1024)]})[0] == 200
    status, answer, _h = site.post("/v1/batch", {"batch": [one(200), one(32 * 1024 + 1)]})
    assert status == 400 and "32 KB" in answer["error"] and answer["success"] is False
    # over 500 KB in all (each message under 32 KB), also when the gzip body is small
    big = {"batch": [one(30_000 + i) for i in range(18)]}
    assert len(orjson.dumps(big)) > 500 * 1024
    assert site.post("/v1/batch", big)[0] == 400
    assert site.post("/v1/batch", big, gz=True)[0] == 400
    got = _records(site.broker, topics.CLICKSTREAM)
    assert "lim-32768" in got and "lim-200" not in got and "lim-30000" not in got
    # not JSON, not an object, no batch array, broken gzip, an encoding we do not speak: 400
    assert site.post("/v1/track", b"{not json")[0] == 400
    assert site.post("/v1/track", b"[1, 2]")[0] == 400
    assert site.post("/v1/batch", {"batch": {"type": "track"}})[0] == 400
    assert site.post("/v1/batch", b"\x1f\x8b\x08\x00garbage", headers={"Content-Encoding": "gzip"})[0] == 400
    assert site.post("/v1/batch", b"{}", headers={"Content-Encoding": "br"})[0] == 400
    # a compressed body over the bound is refused before it is read whole
    status, _a, _h = site.post("/v1/batch", b"x" * (600 * 1024), headers={"Content-Encoding": "gzip"})
    assert status == 400


def test_a_gzip_bomb_costs_no_memory(site):
    # 200 MB of JSON in 200 KB of gzip
    bomb = gzip.compress(b'{"batch": ["' + b"a" * (200 << 20) + b'"]}', compresslevel=9)
    assert len(bomb) < 400 * 1024
    before = rss_kib(site.proc.pid)
    started = time.monotonic()
    status, answer, _h = site.post("/v1/batch", bomb, headers={"Content-Encoding": "gzip"})
    assert status == 400 and "decompressed" in answer["error"]
    assert time.monotonic() - started < 5
    assert rss_kib(site.proc.pid) - before < 32 * 1024, "decompression must stop at the limit"
    assert site.proc.poll() is None


def test_requests_shaped_as_the_browser_sdk_sends_them(site):
    """analytics.js (@segment/analytics-next), as its source reads: one call to <apiHost>/<first letter of
    the type>, batches to <apiHost>/b, the write key in the body, text/plain (no CORS preflight)."""
    plain = {"Content-Type": "text/plain"}
    call = {"type": "track", "event": "Product Viewed", "anonymousId": "br-anon-1", "messageId": "br-t",
            "timestamp": "2026-03-01T10:00:00.000Z", "properties": {"product_id": "p-7"},
            "context": {"page": {"path": "/p/7"}, "userAgent": "Mozilla/5.0"}, "writeKey": SECRET_KEYS[0],
            "sentAt": "2026-03-01T10:00:00.100Z", "_metadata": {"bundled": ["Segment.io"]}}
    assert site.post("/v1/t", call, key=None, headers=plain)[:2] == (200, {"success": True, "accepted": 1,
                                                                          "rejected": 0})
    page = {**call, "type": "page", "messageId": "br-p", "name": "Product"}
    del page["event"]
    ident = {"type": "identify", "userId": "br-user-1", "anonymousId": "br-anon-1", "messageId": "br-i",
             "traits": {"timezone": "Europe/Paris"}, "timestamp": "2026-03-01T10:01:00.000Z"}
    body = {"writeKey": SECRET_KEYS[0], "sentAt": "2026-03-01T10:01:00.500Z", "batch": [page, ident]}
    assert site.post("/v1/b", body, key=None, headers=plain)[:2] == (200, {"success": True, "accepted": 2,
                                                                          "rejected": 0})
    got = _records(site.broker, topics.CLICKSTREAM)
    assert got["br-t"][1] == b"br-anon-1" and got["br-i"][1] == b"br-user-1" and got["br-p"][2]["type"] == "page"
    assert "writeKey" not in got["br-t"][2]
    status, _b, hdrs = request(site.port, "OPTIONS", "/v1/t")
    assert status == 204 and hdrs["access-control-allow-origin"] == "*"


def test_health_ready_metrics_and_cors(site):
    assert request(site.port, "GET", "/health")[:2] == (200, {"status": "ok"})
    status, body, _h = request(site.port, "GET", "/ready")
    assert status == 200 and body["ready"] is True and body["kafka"] == "up"
    status, _b, hdrs = request(site.port, "OPTIONS", "/v1/batch")
    assert status == 204 and hdrs["access-control-allow-origin"] == "*"
    assert request(site.port, "GET", "/v1/track")[0] == 405
    m = site.metrics()
    assert metric(m, "journey_intake_requests_total", endpoint="track", status="401") >= 4
    assert metric(m, "journey_intake_requests_total", endpoint="batch", status="400") >= 4
    assert metric(m, "journey_intake_request_seconds_count", endpoint="batch") >= 5
    assert metric(m, "journey_intake_kafka_up") == 1
    assert metric(m, "journey_intake_bytes_in_flight") == 0


def test_no_write_key_or_body_in_the_log_or_the_metrics(site):
    """Last in the module: every request above is in the log (at debug level) and the metrics."""
    status, _a, _h = site.post("/v1/track", {"userId": "quiet-1", "event": "x", "properties": {"m": MARK}},
                               key=SECRET_KEYS[1])
    assert status == 200
    log = site.log.read_text()
    assert "DEBUG" in log, "the intake runs at debug level here"
    texts = {"log": log, "metrics": site.metrics()}
    for where, text in texts.items():
        for secret in (*SECRET_KEYS, "wk-file-two-44ab", basic(SECRET_KEYS[0]).split()[1], MARK, "quiet-1",
                       "mix-bad"):
            assert secret not in text, f"{secret!r} appears in the {where}"


def _sender(port: int, prefix: str, n_batches: int, answered: dict, statuses: list, stop: threading.Event):
    """An SDK-like sender: batches of 20 messages with ids of their own, each retried on 5xx and 429 after
    Retry-After (at most 1 s here), given up on 4xx."""
    for b in range(n_batches):
        batch = [{"type": "track", "userId": f"{prefix}-{(b * 20 + i) % 37}", "event": "Product Viewed",
                  "messageId": f"{prefix}-{b}-{i}", "timestamp": "2026-03-01T10:00:00Z",
                  "properties": {"product_id": str(i)}} for i in range(20)]
        for _attempt in range(60):
            if stop.is_set():
                return
            status, _a, hdrs = post(port, "/v1/batch", {"batch": batch}, timeout=20)
            statuses.append((status, hdrs.get("retry-after")))
            if status == 200:
                for m in batch:
                    answered[m["messageId"]] = True
                break
            assert status is None or status in (429, 503), status
            time.sleep(min(1.0, float(hdrs.get("retry-after", 1))))


def test_kafka_away_503_then_429_and_nothing_answered_200_is_lost(wire, tmp_path):
    """The broker stalls then refuses connections mid-stream: requests get 503 with Retry-After (never a 4xx,
    which the SDKs would drop), too many bytes waiting gets 429, and every message answered 200 is on its
    topic afterwards."""
    it = Intake(wire.url, tmp_path, args=("--ack-timeout", "1.5", "--max-in-flight", "0.05"))
    try:
        it.wait_ready()
        answered: dict = {}
        statuses: list = []
        stop = threading.Event()
        t = threading.Thread(target=_sender, args=(it.port, "away", 60, answered, statuses, stop), daemon=True)
        t.start()
        wait_for(lambda: len(answered) >= 100, 30, "the first answers", every=0.1)
        # acknowledgements stop while Kafka still looks up: a waiting request holds its bytes, another gets 429
        wire.stall(6)
        slow = {}
        waiting = threading.Thread(target=lambda: slow.update(r=post(it.port, "/v1/batch", {"batch": [
            {"type": "track", "userId": "away-slow", "event": "Product Viewed", "messageId": "away-slow",
             "properties": {"pad": "x" * 20_000}}]}, timeout=20)), daemon=True)
        waiting.start()
        time.sleep(0.3)
        status, answer, hdrs = post(it.port, "/v1/batch", {"batch": [{"type": "track", "userId": "away-busy",
                                                                      "event": "x", "messageId": "away-busy"}]})
        assert (status, hdrs.get("retry-after"), hdrs.get("x-ratelimit-reset")) == (429, "1", "1"), (status, answer)
        waiting.join(20)
        assert slow["r"][0] == 503 and slow["r"][2]["retry-after"] == "5"
        wire.wait_over(20)
        wire.refuse(5)
        wire.wait_over(20)
        t.join(120)
        assert not t.is_alive(), "the sender did not finish"
        codes = [s for s, _r in statuses]
        assert 503 in codes and all(r for s, r in statuses if s in (429, 503)), "503 and 429 carry Retry-After"
        assert len(answered) == 60 * 20
        on_topic = [orjson.loads(v)["messageId"] for _k, v, *_ in read_topic(wire.url, topics.CLICKSTREAM)]
        assert set(answered) <= set(on_topic), f"{len(set(answered) - set(on_topic))} answered 200 but not in Kafka"
        m = it.metrics()
        assert metric(m, "journey_intake_requests_total", status="503") >= 1
        assert metric(m, "journey_intake_requests_total", status="429") == 1
        assert metric(m, "journey_intake_messages_unacknowledged_total") >= 20
        wait_for(lambda: request(it.port, "GET", "/ready")[0] == 200, 20, "ready again", every=0.3)
    finally:
        assert it.stop() == 0, it.log.read_text()[-3000:]


def test_no_create_topics_on_a_cluster_without_them_says_what_to_do(broker, tmp_path):
    it = Intake(broker, tmp_path, args=("--no-create-topics",))
    assert it.proc.wait(60) == 1
    out = it.log.read_text()
    assert "journey topics create" in out and topics.CLICKSTREAM in out and "Traceback" not in out, out
