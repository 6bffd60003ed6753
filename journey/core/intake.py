"""Event intake: raw bytes -> validated, normalized :class:`Event`, or a rejection.

Accepts both shapes of domain.md section 2:

* Segment spec: ``track`` (``event`` names the type), ``identify`` (traits),
  ``page``/``screen`` (page views) and ``alias`` (links ``previousId`` to
  ``userId``). Time from ``timestamp``, else ``originalTimestamp``,
  ``sentAt``, ``receivedAt``.
* Canonical: ``{"id","customer_id","type","ts","props"}`` (``anonymous_id``
  optional).

Only the properties the rules read are kept (normalized: ids as strings,
money as integer cents, times as epoch ms, scores as numbers); everything
else in the record is dropped here, so personal data never reaches state.
"""

from __future__ import annotations

import hashlib
import re
from datetime import date

import orjson

from . import catalog as _catalog
from .catalog import ID, MONEY, PRIORITIES, SCORE, SCORE_RANGE, STR, TIME, canonical_type, fields_of, touch_of
from .timeutil import MAX_YEAR, MIN_YEAR, TimeError, parse_time, zone

MAX_RECORD_BYTES = 1 << 20
MAX_ID_LEN = 256
# the largest amount of money one event may carry (in currency units): cents stay exact
# integers, and sums over a customer's orders stay far inside 64 bits (state is serialized)
MAX_MONEY = 1e12
SEGMENT_CALLS = frozenset(("track", "identify", "page", "screen", "alias", "group"))
SEGMENT_TIME_FIELDS = ("timestamp", "originalTimestamp", "sentAt", "receivedAt")

# Rejection reasons (also the dead-letter ``reason`` and the metric label).
TOO_LARGE = "too_large"
NOT_JSON = "not_json"
NOT_OBJECT = "not_object"
NO_TYPE = "no_type"
NO_CUSTOMER = "no_customer"
MISSING_TIME = "missing_time"
BAD_TIME = "bad_time"
BAD_FIELD = "bad_field"
FUTURE_TIME = "future_time"      # stamped further ahead of the present than [engine] future_horizon
UNPROCESSABLE = "unprocessable"  # read, but applying it failed (the record is dead-lettered, nothing stops)
REASONS = (TOO_LARGE, NOT_JSON, NOT_OBJECT, NO_TYPE, NO_CUSTOMER, MISSING_TIME, BAD_TIME, BAD_FIELD, FUTURE_TIME,
           UNPROCESSABLE)


class Rejected(Exception):
    """A record that cannot be processed; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Event:
    """One validated event. ``cid`` is the customer id (None for an anonymous
    visitor), ``anon`` the anonymous id if any, ``ts`` epoch ms, ``f`` the
    normalized fields the rules read, ``traits`` the profile traits of a
    ``profile.updated``."""

    __slots__ = ("id", "cid", "anon", "type", "ts", "f", "touch", "known", "traits", "raw", "props")

    def __init__(self, id, cid, anon, type, ts, f, touch, known, traits=None):
        self.id = id
        self.cid = cid
        self.anon = anon
        self.type = type
        self.ts = ts
        self.f = f
        self.touch = touch
        self.known = known
        self.traits = traits
        self.raw = None  # live: the record's bytes, kept for a visitor's event (it may be forwarded)
        self.props = None  # all props, kept only for the types user journeys read (parse's ``keep``)

    @property
    def key(self) -> str:
        """The state key: the customer id, else ``anon:<anonymousId>``."""
        return self.cid if self.cid is not None else "anon:" + self.anon

    def __repr__(self):
        return f"Event({self.type} {self.key} @{self.ts} id={self.id})"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _ident(value, field: str) -> str | None:
    """An id as a string: strings as given, numbers (which the event schema allows) in
    their shortest form (``7``, ``1.5``)."""
    if type(value) is str and 0 < len(value) <= MAX_ID_LEN:
        return value
    if value is None or value == "":
        return None
    if isinstance(value, str):
        if len(value) > MAX_ID_LEN:
            raise Rejected(BAD_FIELD, f"{field} is longer than {MAX_ID_LEN} characters")
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        s = str(value)
    elif isinstance(value, float) and value == value and value not in (float("inf"), float("-inf")):
        s = str(int(value)) if value.is_integer() else repr(value)
    else:
        raise Rejected(BAD_FIELD, f"{field} must be a string or a number, got {type(value).__name__}")
    if len(s) > MAX_ID_LEN:
        raise Rejected(BAD_FIELD, f"{field} is longer than {MAX_ID_LEN} characters")
    return s


def _who(value, field: str) -> str | None:
    """A customer or visitor id: as :func:`_ident`, and without control characters (the
    worker keeps its own records under keys no customer id can take)."""
    if type(value) is str and 0 < len(value) <= MAX_ID_LEN and value.isprintable():
        return value  # the usual case
    v = _ident(value, field)
    if v is not None and _CONTROL.search(v):
        raise Rejected(BAD_FIELD, f"{field} contains control characters")
    return v


def _number(value, field: str) -> float:
    if isinstance(value, bool):
        raise Rejected(BAD_FIELD, f"{field} must be a number, got a boolean")
    if isinstance(value, (int, float)):
        if value != value or value in (float("inf"), float("-inf")):
            raise Rejected(BAD_FIELD, f"{field} must be a finite number")
        return value
    if isinstance(value, str):
        try:
            v = float(value.strip())
        except ValueError:
            raise Rejected(BAD_FIELD, f"{field} must be a number, got {value[:20]!r}") from None
        if v != v or v in (float("inf"), float("-inf")):
            raise Rejected(BAD_FIELD, f"{field} must be a finite number")
        return v
    raise Rejected(BAD_FIELD, f"{field} must be a number, got {type(value).__name__}")


_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")


def _normalize_fields(ctype: str, props: dict) -> dict:
    spec = fields_of(ctype)
    out = {}
    for name, kind in spec.items():
        v = props.get(name)
        if v is None:
            continue
        if kind is ID and type(v) is str and 0 < len(v) <= MAX_ID_LEN:  # the usual case
            out[name] = v
            continue
        field = "properties." + name
        if kind is ID:
            v = _ident(v, field)
            if v is None:
                continue
        elif kind is MONEY:
            v = _number(v, field)
            if not -MAX_MONEY <= v <= MAX_MONEY:
                raise Rejected(BAD_FIELD, f"{field} is out of range (at most {MAX_MONEY:,.0f} in absolute value)")
            v = round(v * 100)
        elif kind is SCORE:
            v = _number(v, field)
            lo, hi = SCORE_RANGE[name]
            if not lo <= v <= hi:
                raise Rejected(BAD_FIELD, f"{field} must be between {lo} and {hi}, got {v}")
        elif kind is TIME:
            if isinstance(v, str) and _DATE.fullmatch(v.strip()):
                y, m, d = map(int, _DATE.fullmatch(v.strip()).groups())
                try:
                    v = date(y, m, d)  # a date without a time: end of that day, customer-local
                except ValueError:
                    raise Rejected(BAD_FIELD, f"{field} is not a valid date: {v!r}") from None
                if not MIN_YEAR <= y <= MAX_YEAR:
                    raise Rejected(BAD_FIELD, f"{field} must be a date from {MIN_YEAR} to {MAX_YEAR}")
            else:
                try:
                    v = parse_time(v)
                except TimeError as e:
                    raise Rejected(BAD_FIELD, f"{field}: {e}") from None
        elif kind is STR:
            if not isinstance(v, str):
                raise Rejected(BAD_FIELD, f"{field} must be a string, got {type(v).__name__}")
            if name == "priority":
                v = v.strip().lower()
                if v not in PRIORITIES:
                    raise Rejected(BAD_FIELD, f"{field} must be one of {', '.join(PRIORITIES)}, got {v[:20]!r}")
            else:
                v = v[:16]
        out[name] = v
    # the Segment spec names the order amount ``revenue`` or ``total``
    if "revenue" not in out and "total" in out:
        out["revenue"] = out["total"]
    out.pop("total", None)
    return out


_BIRTHDAY = re.compile(r"(?:(\d{4})-|--)?(\d{2})-(\d{2})")


def _normalize_traits(traits: dict) -> dict:
    out = {}
    b = traits.get("birthday")
    if b not in (None, ""):
        m = _BIRTHDAY.fullmatch(b.strip()) if isinstance(b, str) else None
        if not m:
            raise Rejected(BAD_FIELD, "traits.birthday must be YYYY-MM-DD or MM-DD")
        month, day = int(m.group(2)), int(m.group(3))
        try:
            date(2000, month, day)  # a leap year, so 02-29 is valid
        except ValueError:
            raise Rejected(BAD_FIELD, f"traits.birthday is not a valid date: {b!r}") from None
        out["birthday"] = f"{month:02d}-{day:02d}"
    tz = traits.get("timezone")
    if tz not in (None, ""):
        if not isinstance(tz, str):
            raise Rejected(BAD_FIELD, "traits.timezone must be an IANA time zone name")
        try:
            zone(tz)
        except TimeError:
            raise Rejected(BAD_FIELD, f"traits.timezone is not an IANA time zone: {tz[:40]!r}") from None
        out["timezone"] = tz
    loc = traits.get("locale")
    if loc not in (None, ""):
        if not isinstance(loc, str):
            raise Rejected(BAD_FIELD, "traits.locale must be a string")
        out["locale"] = loc[:16]
    consent = traits.get("consent")
    if consent is not None:
        if not isinstance(consent, dict) or not all(
                isinstance(k, str) and isinstance(v, bool) for k, v in consent.items()):
            raise Rejected(BAD_FIELD, 'traits.consent must be an object of booleans, e.g. {"email": true}')
        out["consent"] = {k[:32]: v for k, v in consent.items()}
    return out


_KNOWN = _catalog._EXACT  # name -> canonical type, for names seen verbatim (the fast path)


def _type_of(name, missing: str) -> tuple[str, bool]:
    """(canonical type, known); an unknown name is kept (trimmed) as its own type."""
    ctype = _KNOWN.get(name) if type(name) is str else None
    if ctype is not None:
        return ctype, True
    if not isinstance(name, str) or not name.strip():
        raise Rejected(NO_TYPE, missing)
    ctype = canonical_type(name)
    if ctype is None:
        return name.strip()[:64], False
    return ctype, True


def _event_id(d: dict, key: str, raw: bytes) -> str:
    v = d.get(key)
    if type(v) is str and 0 < len(v) <= MAX_ID_LEN:
        return v
    if v is None or v == "":
        # No id: derive one from the bytes, so an identical redelivery still counts once.
        return "h:" + hashlib.blake2b(raw, digest_size=12).hexdigest()
    return _ident(v, key)


def parse(raw: bytes, max_bytes: int = MAX_RECORD_BYTES, keep: frozenset = frozenset()) -> Event:
    """Parse and validate one record. Raises :class:`Rejected`, and only that: whatever
    else goes wrong with a record is a ``bad_field`` rejection, never an error that
    could stop a worker or a replay. For the canonical types in ``keep`` (those user
    journeys read), the event's props are kept whole in ``props``."""
    try:
        return _parse(raw, max_bytes, keep)
    except Rejected:
        raise
    except Exception as e:  # any record, however hostile, is only rejected
        raise Rejected(BAD_FIELD, f"a field cannot be read ({type(e).__name__})") from None


def _parse(raw: bytes, max_bytes: int, keep: frozenset) -> Event:
    if len(raw) > max_bytes:
        raise Rejected(TOO_LARGE, f"record is {len(raw)} bytes, the limit is {max_bytes}")
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise Rejected(NOT_JSON, f"not JSON: {str(e)[:80]}") from None
    if not isinstance(d, dict):
        raise Rejected(NOT_OBJECT, f"expected a JSON object, got {type(d).__name__}")
    call = d.get("type")
    if type(call) is str and call in SEGMENT_CALLS and "customer_id" not in d:
        ev = _parse_segment(d, call, raw)
        if keep and ev.type in keep:
            p = d.get("properties") if call == "track" else d.get("traits")
            ev.props = p if isinstance(p, dict) else {}
        return ev
    ev = _parse_canonical(d, raw)
    if keep and ev.type in keep:
        p = d.get("props")
        ev.props = p if isinstance(p, dict) else {}
    return ev


def _parse_segment(d: dict, call: str, raw: bytes) -> Event:
    cid = d.get("userId")
    if not (type(cid) is str and 0 < len(cid) <= MAX_ID_LEN and cid.isprintable()):  # the usual case, inline
        cid = _who(cid, "userId")
    anon = d.get("anonymousId")
    if anon is not None:
        anon = _who(anon, "anonymousId")
    traits = None
    fields = {}
    if call == "track":
        ctype, known = _type_of(d.get("event"), "a track call needs an 'event' name")
    elif call == "identify":
        ctype, known = "profile.updated", True
        t = d.get("traits")
        if t is None and isinstance(d.get("context"), dict):
            t = d["context"].get("traits")
        if t is not None and not isinstance(t, dict):
            raise Rejected(BAD_FIELD, "traits must be an object")
        traits = _normalize_traits(t or {})
    elif call in ("page", "screen"):
        ctype, known = "page.viewed", True
    elif call == "alias":
        ctype, known = "profile.updated", True
        anon = _who(d.get("previousId"), "previousId") or anon
        traits = {}
    else:  # group
        ctype, known = call, False
    if cid is None and anon is None:
        raise Rejected(NO_CUSTOMER, "no userId or anonymousId")
    key = "timestamp"
    t = d.get(key)
    if t is None:
        for key in SEGMENT_TIME_FIELDS[1:]:
            t = d.get(key)
            if t is not None:
                break
        else:
            raise Rejected(MISSING_TIME, "no timestamp (or originalTimestamp, sentAt, receivedAt)")
    try:
        ts = parse_time(t)
    except TimeError as e:
        raise Rejected(BAD_TIME, f"{key}: {e}") from None
    if known and call == "track":
        props = d.get("properties")
        if props is not None and not isinstance(props, dict):
            raise Rejected(BAD_FIELD, "properties must be an object")
        fields = _normalize_fields(ctype, props or {})
    return Event(_event_id(d, "messageId", raw), cid, anon, ctype, ts, fields, touch_of(ctype), known, traits)


def _parse_canonical(d: dict, raw: bytes) -> Event:
    ctype, known = _type_of(d.get("type"), "no 'type' (canonical) and not a Segment call (track/identify/page)")
    cid = _who(d.get("customer_id"), "customer_id")
    anon = _who(d.get("anonymous_id"), "anonymous_id")
    if cid is None and anon is None:
        raise Rejected(NO_CUSTOMER, "no customer_id (or anonymous_id)")
    if "ts" not in d or d["ts"] is None:
        raise Rejected(MISSING_TIME, "no 'ts'")
    try:
        ts = parse_time(d["ts"])
    except TimeError as e:
        raise Rejected(BAD_TIME, f"ts: {e}") from None
    props = d.get("props")
    if props is not None and not isinstance(props, dict):
        raise Rejected(BAD_FIELD, "props must be an object")
    props = props or {}
    traits = None
    fields = {}
    if ctype == "profile.updated":
        t = d.get("traits", props.get("traits", props))
        if not isinstance(t, dict):
            raise Rejected(BAD_FIELD, "traits must be an object")
        traits = _normalize_traits(t)
    elif known:
        fields = _normalize_fields(ctype, props)
    return Event(_event_id(d, "id", raw), cid, anon, ctype, ts, fields, touch_of(ctype), known, traits)


def routing_key(raw: bytes) -> tuple[str | None, str | None] | None:
    """(customer id, anonymous id) of a record as :func:`parse` would read them, without
    validating the rest: the cheap pre-filter of ``journey replay --workers``, which
    checks it against ``parse`` on every event (a disagreement falls back to one worker).
    None when the record has no readable id."""
    try:
        d = orjson.loads(raw)
        if not isinstance(d, dict):
            return None
        call = d.get("type")
        if type(call) is str and call in SEGMENT_CALLS and "customer_id" not in d:
            cid, anon = d.get("userId"), d.get("anonymousId")
            if call == "alias":
                anon = _who(d.get("previousId"), "previousId") or (_who(anon, "anonymousId") if anon is not None
                                                                     else None)
        else:
            cid, anon = d.get("customer_id"), d.get("anonymous_id")
        if not (type(cid) is str and 0 < len(cid) <= MAX_ID_LEN and cid.isprintable()):  # the usual case, inline
            cid = _who(cid, "id")
        if anon is not None and not (type(anon) is str and 0 < len(anon) <= MAX_ID_LEN and anon.isprintable()):
            anon = _who(anon, "id")
    except Exception:
        return None
    if cid is None and anon is None:
        return None
    return cid, anon
