import orjson
import pytest
from conftest import T

from journey.core.intake import Rejected, parse


def p(d):
    return parse(orjson.dumps(d))


def rejected(raw, reason):
    with pytest.raises(Rejected) as e:
        parse(raw if isinstance(raw, bytes) else orjson.dumps(raw))
    assert e.value.reason == reason, e.value.detail
    return e.value


def test_segment_track_maps_names_case_insensitively():
    e = p({"type": "track", "event": "order completed", "userId": "c1", "messageId": "m1",
           "timestamp": "2026-03-01T10:00:00Z", "properties": {"order_id": 7, "revenue": 12.5, "currency": "EUR"}})
    assert (e.type, e.cid, e.id, e.ts, e.touch) == ("order.completed", "c1", "m1", T("2026-03-01T10:00:00Z"), "product")
    assert e.f == {"order_id": "7", "revenue": 1250, "currency": "EUR"}
    assert p({"type": "track", "event": "PRODUCT_ADDED", "userId": "c1", "timestamp": 1, "properties": {}}).type == "cart.product_added"


def test_canonical_shape_and_epoch_millis():
    e = p({"id": "x", "customer_id": "c9", "type": "ticket.opened", "ts": 1772359200000,
           "props": {"ticket_id": "t1", "priority": "HIGH"}})
    assert (e.type, e.cid, e.ts, e.touch, e.f) == ("ticket.opened", "c9", 1772359200000, "human",
                                                   {"ticket_id": "t1", "priority": "high"})


def test_segment_time_fallbacks_in_order():
    base = {"type": "track", "event": "Product Viewed", "userId": "c1"}
    assert p({**base, "originalTimestamp": "2026-03-01T10:00:00+02:00", "sentAt": "2026-01-01T00:00:00Z"}).ts == T("2026-03-01T08:00:00Z")
    assert p({**base, "sentAt": "2026-03-01T10:00:00Z", "receivedAt": "2026-01-01T00:00:00Z"}).ts == T("2026-03-01T10:00:00Z")
    assert p({**base, "receivedAt": "2026-03-01T10:00:00.250Z"}).ts == T("2026-03-01T10:00:00Z") + 250


def test_identify_page_alias_and_total_fallback():
    e = p({"type": "identify", "userId": "c1", "timestamp": "2026-03-01T10:00:00Z",
           "traits": {"birthday": "1990-02-29", "timezone": "Europe/Berlin", "consent": {"email": False},
                      "email": "person@example.com", "name": "Pat"}})
    assert e.type == "profile.updated" and e.touch == "system"
    assert e.traits == {"birthday": "02-29", "timezone": "Europe/Berlin", "consent": {"email": False}}
    assert p({"type": "page", "anonymousId": "a1", "timestamp": "2026-03-01T10:00:00Z"}).type == "page.viewed"
    a = p({"type": "alias", "previousId": "a1", "userId": "c1", "timestamp": "2026-03-01T10:00:00Z"})
    assert (a.cid, a.anon) == ("c1", "a1")
    o = p({"type": "track", "event": "Order Completed", "userId": "c1", "timestamp": "2026-03-01T10:00:00Z",
           "properties": {"total": "20"}})
    assert o.f["revenue"] == 2000


def test_unknown_types_are_kept_not_fatal():
    e = p({"type": "track", "event": "Wishlist Shared", "userId": "c1", "timestamp": "2026-03-01T10:00:00Z"})
    assert e.known is False and e.type == "Wishlist Shared"


def test_missing_id_derives_a_stable_one():
    raw = b'{"customer_id":"c1","type":"page.viewed","ts":"2026-03-01T10:00:00Z"}'
    assert parse(raw).id == parse(raw).id and parse(raw).id.startswith("h:")


@pytest.mark.parametrize("raw,reason", [
    (b"{not json", "not_json"),
    (b"[1,2]", "not_object"),
    ({"type": "track", "userId": "c1", "timestamp": "2026-03-01T10:00:00Z"}, "no_type"),
    ({"type": "track", "event": "Product Viewed", "timestamp": "2026-03-01T10:00:00Z"}, "no_customer"),
    ({"type": "track", "event": "Product Viewed", "userId": "c1"}, "missing_time"),
    ({"type": "track", "event": "Product Viewed", "userId": "c1", "timestamp": "yesterday"}, "bad_time"),
    ({"type": "track", "event": "Product Viewed", "userId": "c1", "timestamp": "2026-03-01T10:00:00"}, "bad_time"),
    ({"type": "track", "event": "Product Viewed", "userId": "c1", "timestamp": True}, "bad_time"),
    ({"type": "track", "event": "Product Viewed", "userId": ["c1"], "timestamp": 1}, "bad_field"),
    ({"type": "track", "event": "Order Completed", "userId": "c1", "timestamp": 1, "properties": {"revenue": "lots"}}, "bad_field"),
    ({"type": "track", "event": "Order Completed", "userId": "c1", "timestamp": 1, "properties": "x"}, "bad_field"),
    ({"type": "track", "event": "Survey Answered", "userId": "c1", "timestamp": 1, "properties": {"csat": 9}}, "bad_field"),
    ({"type": "track", "event": "Ticket Opened", "userId": "c1", "timestamp": 1, "properties": {"priority": "p1"}}, "bad_field"),
    ({"type": "identify", "userId": "c1", "timestamp": 1, "traits": {"timezone": "Mars/Olympus"}}, "bad_field"),
    ({"type": "identify", "userId": "c1", "timestamp": 1, "traits": {"birthday": "1990-02-30"}}, "bad_field"),
    ({"type": "identify", "userId": "c1", "timestamp": 1, "traits": {"consent": {"email": "yes"}}}, "bad_field"),
    ({"id": "x", "customer_id": "c1", "type": "order.shipped", "ts": 1, "props": {"promised_by": "soon"}}, "bad_field"),
])
def test_rejections_have_reasons(raw, reason):
    rejected(raw, reason)


def test_oversized_record_is_rejected():
    big = orjson.dumps({"customer_id": "c1", "type": "page.viewed", "ts": 1, "props": {"pad": "x" * 2000}})
    with pytest.raises(Rejected) as e:
        parse(big, max_bytes=1000)
    assert e.value.reason == "too_large"
