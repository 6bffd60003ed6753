"""Segment's HTTP Tracking API, as ``journey intake`` reads it: a request body to
the Kafka records it stands for (domain.md section 10). No I/O here: the
service reads the body, this module decides.

* :func:`decode` turns the body as sent (gzip or not) into a JSON object, with
  the limits Segment sets: a request over 500 KB after decompression is a
  :class:`BadRequest` (400), and so is a compressed body over that size or a
  body that is not a JSON object. Decompression stops at the limit, so a
  small gzip bomb costs at most the limit in memory.
* :func:`messages` splits it: ``/v1/batch`` and ``/v1/import`` carry a
  ``batch`` array (with a ``context`` and ``sentAt`` common to its messages),
  the other endpoints one message whose ``type`` is the endpoint's.
* :func:`prepare` makes one message the record the worker reads: the
  ``writeKey`` removed (it never reaches Kafka or a dead letter), ``receivedAt``
  set, and where ``timestamp`` is missing, Segment's clock-skew correction
  ``receivedAt - (sentAt - originalTimestamp)`` (else ``receivedAt``); a
  message without ``messageId`` gets one derived from its content, so the
  sender's retry of it is still a duplicate the worker recognises. The record
  is then checked by the worker's own intake (:func:`journey.core.intake.parse`):
  a :class:`~journey.core.intake.Rejected` message is dead-lettered, a valid one
  goes to the source topic of its type, keyed by ``userId`` (else
  ``anonymousId``), with its event time as the Kafka timestamp.
"""

from __future__ import annotations

import hashlib
import zlib

import orjson

from ..core import intake
from ..core.timeutil import TimeError, format_time, parse_time
from ..io import topics

MAX_MESSAGE = 32 * 1024          # bytes of one message (as sent, in JSON)
MAX_REQUEST = 500 * 1024         # bytes of a request body after decompression
MAX_COMPRESSED = MAX_REQUEST + 16 * 1024   # bytes of a body as sent (gzip of incompressible data grows a little)

# the endpoints: the single-message ones fix the message's type
CALLS = ("track", "identify", "page", "screen", "group", "alias")
BATCHES = ("batch", "import")
ENDPOINTS = CALLS + BATCHES
# Segment's browser SDK (analytics.js, @segment/analytics-next) posts to <apiHost>/<the type's first letter>,
# and its batching delivery to <apiHost>/b: the same endpoints under those names
BROWSER = {"t": "track", "i": "identify", "p": "page", "s": "screen", "g": "group", "a": "alias", "b": "batch"}


class BadRequest(Exception):
    """The whole request is refused with 400; the text names the problem, never the body's content."""


def decode(body: bytes, encoding: str | None) -> tuple[dict, int]:
    """The request body as a JSON object, and its size decompressed. ``encoding``: the Content-Encoding
    header."""
    if len(body) > MAX_COMPRESSED:
        raise BadRequest(f"the request body is over {MAX_REQUEST // 1024} KB")
    enc = (encoding or "identity").strip().lower()
    if enc == "gzip" or enc == "x-gzip":
        body = gunzip(body, MAX_REQUEST)
    elif enc == "deflate":
        body = _inflate(zlib.decompressobj(), body, MAX_REQUEST)
    elif enc not in ("identity", ""):
        raise BadRequest(f"Content-Encoding {enc[:20]!r} is not supported: send gzip or nothing")
    if len(body) > MAX_REQUEST:
        raise BadRequest(f"the request is over {MAX_REQUEST // 1024} KB")
    try:
        d = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("the body is not JSON") from None
    if not isinstance(d, dict):
        raise BadRequest("the body must be a JSON object")
    return d, len(body)


def gunzip(data: bytes, limit: int) -> bytes:
    """Decompress gzip (one member or several), stopping with :class:`BadRequest` beyond ``limit`` bytes."""
    out = b""
    while data:
        d = zlib.decompressobj(31)
        out += _inflate(d, data, limit - len(out))
        data = d.unused_data
        if data and not data.strip(b"\x00"):
            break  # zero padding after the last member
    return out


def _inflate(d, data: bytes, limit: int) -> bytes:
    try:
        out = d.decompress(data, limit + 1)
        if len(out) > limit or d.unconsumed_tail:
            raise BadRequest(f"the request is over {MAX_REQUEST // 1024} KB once decompressed")
        out += d.flush()
    except zlib.error:
        raise BadRequest("the body is not valid gzip") from None
    if not d.eof:
        raise BadRequest("the gzip body is cut short")
    return out


def messages(endpoint: str, body: dict) -> tuple[list, dict]:
    """(messages, what the batch gives all of them: ``context``, ``sentAt``)."""
    if endpoint in BATCHES:
        batch = body.get("batch")
        if not isinstance(batch, list):
            raise BadRequest(f"/v1/{endpoint} needs a 'batch' array of messages")
        common = {}
        if isinstance(body.get("context"), dict):
            common["context"] = body["context"]
        if body.get("sentAt") is not None:
            common["sentAt"] = body["sentAt"]
        return batch, common
    msg = dict(body)
    msg["type"] = endpoint
    return [msg], {}


def size_of(msg) -> int:
    """Bytes of one message as sent (its JSON)."""
    try:
        return len(orjson.dumps(msg))
    except TypeError:
        return 0


class Record:
    """A prepared message: ``value`` (the record's bytes), and for a valid one ``topic``, ``key`` and
    ``ts`` (event time, ms); for an invalid one ``rejected`` (the reason) and ``detail``."""

    __slots__ = ("value", "topic", "key", "ts", "rejected", "detail")

    def __init__(self, value, topic=None, key=None, ts=None, rejected=None, detail=None):
        self.value = value
        self.topic = topic
        self.key = key
        self.ts = ts
        self.rejected = rejected
        self.detail = detail


def prepare(msg, received: int, common: dict) -> Record:
    """One message as the record the worker reads, checked as the worker checks it. ``received``: the
    time the request arrived (epoch ms)."""
    if not isinstance(msg, dict):
        value = orjson.dumps(msg)
        return Record(value, rejected=intake.NOT_OBJECT, detail=f"a message must be a JSON object, got "
                                                                f"{type(msg).__name__}")
    msg.pop("writeKey", None)
    call = msg.get("type")
    if type(call) is str and call in intake.SEGMENT_CALLS and "customer_id" not in msg:
        try:
            _received(msg, received, common)
        except Exception as e:  # whatever a message holds, it is only rejected
            return Record(orjson.dumps(msg, default=str), rejected=intake.BAD_FIELD,
                          detail=f"a field cannot be read ({type(e).__name__})")
    value = orjson.dumps(msg)
    try:
        ev = intake.parse(value)
    except intake.Rejected as r:
        return Record(value, rejected=r.reason, detail=r.detail)
    key = ev.cid if ev.cid is not None else ev.anon
    return Record(value, topics.topic_for(ev.type), key.encode(), ev.ts)


def _received(msg: dict, received: int, common: dict) -> None:
    """``receivedAt``, the skew-corrected ``timestamp``, the batch's ``context``/``sentAt`` and a
    ``messageId`` where the message has none."""
    mid = msg.get("messageId")
    if mid is None or mid == "":
        # from the message as the sender made it (sentAt and receivedAt change when it retries)
        mine = {k: v for k, v in msg.items() if k not in ("sentAt", "receivedAt")}
        msg["messageId"] = "h:" + hashlib.blake2b(orjson.dumps(mine, option=orjson.OPT_SORT_KEYS),
                                                  digest_size=12).hexdigest()
    ctx = common.get("context")
    if ctx is not None:
        own = msg.get("context")
        msg["context"] = ctx if not isinstance(own, dict) else {**ctx, **own}
    sent = msg.get("sentAt")
    if sent is None:
        sent = common.get("sentAt")
        if sent is not None:
            msg["sentAt"] = sent
    msg["receivedAt"] = format_time(received)
    t = msg.get("timestamp")
    if t is None or t == "":
        ts = received
        orig = msg.get("originalTimestamp")
        if sent is not None and orig is not None:
            try:
                ts = received - (parse_time(sent) - parse_time(orig))
            except TimeError:
                ts = received
        try:
            msg["timestamp"] = format_time(ts)
        except (OverflowError, ValueError):
            msg["timestamp"] = format_time(received)  # a correction beyond the calendar: the arrival


def deadletter(rec: Record, endpoint: str, index: int, received: int) -> bytes:
    """The dead-letter record of a rejected message (the shape of the worker's, with where it came from)."""
    from ..core.triggers import deadletter_record

    return orjson.dumps(deadletter_record(rec.rejected, rec.detail,
                                          {"endpoint": f"/v1/{endpoint}", "index": index,
                                           "received_at": format_time(received)}, rec.value))


def as_segment(rec: dict) -> dict:
    """A record of a journey log as the Segment message an app's SDK would send for it (``journey demo`` and
    the tests feed logs through the intake this way): a Segment-shaped record as it is; a canonical one as a
    ``track`` call named by its Segment event name (an ``identify`` for ``profile.updated``) with the same
    id, time, ids and properties."""
    from ..core.catalog import TYPES

    if rec.get("type") in intake.SEGMENT_CALLS and "customer_id" not in rec:
        return dict(rec)
    ctype = rec.get("type")
    msg: dict = {"messageId": rec.get("id"), "timestamp": format_time(parse_time(rec.get("ts")))}
    if rec.get("customer_id") is not None:
        msg["userId"] = rec["customer_id"]
    if rec.get("anonymous_id") is not None:
        msg["anonymousId"] = rec["anonymous_id"]
    props = rec.get("props") or {}
    if ctype == "profile.updated":
        msg.update(type="identify", traits=rec.get("traits", props.get("traits", props)))
    else:
        name = TYPES.get(ctype, (None,))[0] or ctype
        msg.update(type="track", event=name, properties=props)
    return msg
