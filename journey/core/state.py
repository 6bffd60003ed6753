"""Per-customer state: one compact, serializable record per customer.

Everything the rules and the contact policy need lives here, so the live
worker can keep it in one table row per customer (one changelog record per
customer per batch) and rebuild its timers from it after a restart.
"""

from __future__ import annotations

import hashlib
from operator import itemgetter

import orjson

from .catalog import TOUCH_KINDS

_due = itemgetter(0)

RECENT_TOUCHES = 3  # per touch-point kind, the last outcomes kept for explanations
RECENT_ORDERS = 8   # distinct order ids remembered (for repeats and cancellations)


def id_hash(event_id: str) -> int:
    """A stable 64-bit hash of an event id, for the dedup memory."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


class CustomerState:
    __slots__ = (
        "anon",        # True for an anonymous visitor (not yet linked to a customer)
        "tz", "birthday", "locale", "consent",
        "orders", "first_order", "last_order", "spend", "refunded", "recent_orders",
        "touch",       # kind -> [last_ts, good, bad, [[ts, type, outcome], ...]]
        "hdev", "hts",  # health: running deviation from 50 and its time
        "stage",
        "tickets",     # tickets: ticket_id -> [opened_ts, priority, open 1/0]
        "timers",      # "rule|key" -> [due, data]
        "occ",         # rule -> occasion bookkeeping (last milestone, tier, year, ...)
        "contacts",    # marketing contact times in the cap window
        "seen",        # dedup memory: id_hash -> event ts
        "seen_floor",  # events older than this count as seen (the memory was full and forgot older ids)
        "last_ts",     # latest event time applied
        "anons",       # anonymous ids linked to this customer
        "erased",      # erasure time: nothing else is kept
        "clv",         # purchase statistics for the CLV model: [repeat_periods, last_period_day, spend_sum]
        "eh",          # engagement histogram (send time): [ref_ts, {hour-of-week bin: decayed weight}], or None
        "fwd",         # live, a visitor handed off to a customer on another partition: that customer
        "merged",      # live, visitors whose state was handed over and absorbed here
        "heap_due",    # (not serialized) the due time this state has in the engine's timer heap
    )

    def __init__(self):
        self.anon = False
        self.tz = None
        self.birthday = None
        self.locale = None
        self.consent = None
        self.orders = 0
        self.first_order = None
        self.last_order = None
        self.spend = 0
        self.refunded = 0
        self.recent_orders = []
        self.touch = {}
        self.hdev = 0.0
        self.hts = None
        self.stage = "prospect"
        self.tickets = {}
        self.timers = {}
        self.occ = {}
        self.contacts = []
        self.seen = {}
        self.seen_floor = None
        self.last_ts = None
        self.anons = []
        self.erased = None
        self.clv = None
        self.eh = None
        self.fwd = None
        self.merged = []
        self.heap_due = None

    # -- timers --------------------------------------------------------------
    def next_due(self) -> int | None:
        timers = self.timers
        if not timers:
            return None
        if len(timers) == 1:
            for t in timers.values():
                return t[0]
        return min(map(_due, timers.values()))

    # -- serialization -------------------------------------------------------
    def to_dict(self) -> dict:
        if self.erased is not None:
            return {"x": self.erased}
        if self.fwd is not None:
            return {"fw": self.fwd}
        d = {}
        if self.anon:
            d["a"] = 1
        if self.tz:
            d["tz"] = self.tz
        if self.birthday:
            d["bd"] = self.birthday
        if self.locale:
            d["lc"] = self.locale
        if self.consent:
            d["cs"] = self.consent
        if self.orders:
            d["o"] = [self.orders, self.first_order, self.last_order, self.spend, self.refunded]
            d["ro"] = self.recent_orders
        if self.touch:
            d["t"] = self.touch
        if self.hts is not None:
            d["h"] = [self.hdev, self.hts]  # full precision: a restored state continues exactly
        if self.stage != "prospect":
            d["s"] = self.stage
        if self.tickets:
            d["tk"] = self.tickets
        if self.timers:
            d["tm"] = self.timers
        if self.occ:
            d["oc"] = self.occ
        if self.contacts:
            d["ct"] = self.contacts
        if self.seen:
            d["sn"] = [x for kv in self.seen.items() for x in kv]
        if self.seen_floor is not None:
            d["sf"] = self.seen_floor
        if self.last_ts is not None:
            d["l"] = self.last_ts
        if self.anons:
            d["an"] = self.anons
        if self.clv is not None:
            d["cv"] = self.clv
        if self.eh is not None:
            d["eh"] = [self.eh[0], [x for kv in sorted(self.eh[1].items()) for x in kv]]
        if self.merged:
            d["mg"] = self.merged
        return d

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> CustomerState:
        s = cls()
        if "x" in d:
            s.erased = d["x"]
            return s
        if "fw" in d:
            s.anon = True
            s.fwd = d["fw"]
            return s
        s.anon = bool(d.get("a"))
        s.tz = d.get("tz")
        s.birthday = d.get("bd")
        s.locale = d.get("lc")
        s.consent = d.get("cs")
        if "o" in d:
            s.orders, s.first_order, s.last_order, s.spend, s.refunded = d["o"]
            s.recent_orders = d.get("ro", [])
        s.touch = d.get("t", {})
        if "h" in d:
            s.hdev, s.hts = float(d["h"][0]), d["h"][1]
        s.stage = d.get("s", "prospect")
        s.tickets = d.get("tk", {})
        s.timers = d.get("tm", {})
        s.occ = d.get("oc", {})
        s.contacts = d.get("ct", [])
        sn = d.get("sn", [])
        s.seen = dict(zip(sn[::2], sn[1::2]))
        s.seen_floor = d.get("sf")
        s.last_ts = d.get("l")
        s.anons = d.get("an", [])
        s.clv = d.get("cv")
        if "eh" in d:
            flat = d["eh"][1]
            s.eh = [d["eh"][0], {int(b): float(v) for b, v in zip(flat[::2], flat[1::2])}]
        s.merged = d.get("mg", [])
        return s

    @classmethod
    def from_bytes(cls, b: bytes) -> CustomerState:
        return cls.from_dict(orjson.loads(b))

    @classmethod
    def checked(cls, d) -> CustomerState:
        """A state from a record written elsewhere (a visitor's state handed over between
        partitions): every field checked for its shape first, so a forged or damaged
        record is refused (ValueError) instead of breaking the customer it would be
        merged into."""
        if not isinstance(d, dict) or not set(d) <= _FIELDS:
            raise ValueError("not a customer state")
        for key, v in d.items():
            if not _FIELDS_OK[key](v):
                raise ValueError(f"customer state field {key!r} has the wrong shape")
        s = cls.from_dict(d)
        s.to_bytes()   # serializable
        s.next_due()   # timers comparable
        return s

    def __eq__(self, other):
        return isinstance(other, CustomerState) and self.to_dict() == other.to_dict()

    # -- merging an anonymous visitor into a customer --------------------------
    def absorb(self, other: CustomerState) -> None:
        """Merge an anonymous visitor's state into this customer's."""
        for k, v in other.timers.items():
            if k not in self.timers or self.timers[k][0] < v[0]:
                self.timers[k] = v
        for kind in TOUCH_KINDS:
            o = other.touch.get(kind)
            if not o:
                continue
            m = self.touch.get(kind)
            if not m:
                self.touch[kind] = o
                continue
            recent = sorted(m[3] + o[3])[-RECENT_TOUCHES:]
            self.touch[kind] = [max(m[0], o[0]), m[1] + o[1], m[2] + o[2], recent]
        if other.orders:
            self.orders += other.orders
            self.first_order = other.first_order if self.first_order is None else min(self.first_order, other.first_order)
            self.last_order = other.last_order if self.last_order is None else max(self.last_order, other.last_order)
            self.spend += other.spend
            self.refunded += other.refunded
            self.recent_orders = sorted(self.recent_orders + other.recent_orders, key=lambda r: r[1])[-RECENT_ORDERS:]
        if other.clv is not None:
            self.clv = other.clv if self.clv is None else merge_clv(self.clv, other.clv)
        if other.hts is not None:
            if self.hts is None:
                self.hdev, self.hts = other.hdev, other.hts
            else:
                self.hdev = max(-50.0, min(50.0, self.hdev + other.hdev))
                self.hts = max(self.hts, other.hts)
        self.tickets.update(other.tickets)
        # oldest first, as the dedup memory is pruned from its start (and the same whichever
        # side arrived first: live, the visitor's state may be absorbed after newer events)
        self.seen = dict(sorted({**self.seen, **other.seen}.items(), key=itemgetter(1)))
        if other.seen_floor is not None:
            self.seen_floor = other.seen_floor if self.seen_floor is None else max(self.seen_floor, other.seen_floor)
        for k, v in other.occ.items():
            self.occ.setdefault(k, v)
        if other.last_ts is not None:
            self.last_ts = other.last_ts if self.last_ts is None else max(self.last_ts, other.last_ts)
        if other.eh is not None:
            self.eh = other.eh if self.eh is None else merge_engagement(self.eh, other.eh)


def _int(v) -> bool:
    return type(v) is int and -(1 << 62) < v < (1 << 62)


def _num(v) -> bool:
    return (type(v) is float and v == v and abs(v) < 1e300) or _int(v)


def _strs(v) -> bool:
    return isinstance(v, list) and all(type(x) is str for x in v)


def _opt_str(v) -> bool:
    return v is None or type(v) is str


def _touch(v) -> bool:
    return isinstance(v, dict) and all(
        k in TOUCH_KINDS and isinstance(r, list) and len(r) == 4 and all(_int(x) for x in r[:3])
        and isinstance(r[3], list) and all(isinstance(e, list) and e and _int(e[0]) for e in r[3])
        for k, r in v.items())


def _instance(d: dict) -> bool:
    """A multi-step journey's instance (journey.core.journeys.steps)."""
    return (d.get("ph") in ("w", "f", "d") and _int(d.get("s")) and type(d.get("e")) is str
            and type(d.get("k")) is str and _int(d.get("i")) and _int(d.get("r")) and _int(d.get("c"))
            and isinstance(d.get("v"), list) and all(_int(x) for x in d["v"]) and isinstance(d.get("n"), list))


def _exposure(v) -> bool:
    """An open experiment exposure: [rule, arm, stage, health, exposed_at, converted_at, value cents],
    and a last 1 once its message was reported delivered."""
    return (isinstance(v, list) and (len(v) == 7 or (len(v) == 8 and v[7] == 1)) and all(type(x) is str for x in v[:3])
            and _num(v[3]) and _int(v[4]) and (v[5] is None or _int(v[5])) and _int(v[6]))


_FIELDS_OK = {
    "a": lambda v: type(v) in (int, bool),
    "tz": _opt_str, "bd": _opt_str, "lc": _opt_str,
    "cs": lambda v: v is None or (isinstance(v, dict) and all(type(k) is str and type(x) is bool for k, x in v.items())),
    "o": lambda v: isinstance(v, list) and len(v) == 5 and _int(v[0]) and all(x is None or _int(x) for x in v[1:3])
    and _int(v[3]) and _int(v[4]),
    "ro": lambda v: isinstance(v, list) and all(isinstance(r, list) and len(r) >= 2 and _int(r[1]) for r in v),
    "t": _touch,
    "h": lambda v: isinstance(v, list) and len(v) == 2 and _num(v[0]) and _int(v[1]),
    "s": lambda v: type(v) is str,
    "tk": lambda v: isinstance(v, dict) and all(type(k) is str and isinstance(x, list) for k, x in v.items()),
    "tm": lambda v: isinstance(v, dict) and all(type(k) is str and isinstance(x, list) and len(x) == 2 and _int(x[0])
                                                and (not k.startswith("_outcome|") or _exposure(x[1]))
                                                and (not (isinstance(x[1], dict) and "ph" in x[1]) or _instance(x[1]))
                                                for k, x in v.items()),
    "oc": lambda v: isinstance(v, dict) and all(type(k) is str for k in v),
    "ct": lambda v: isinstance(v, list) and all(_int(x) for x in v),
    "sn": lambda v: isinstance(v, list) and len(v) % 2 == 0 and all(type(x) is int and 0 <= x < (1 << 64) for x in v),
    "l": lambda v: v is None or _int(v),
    "sf": lambda v: v is None or _int(v),
    "an": _strs, "mg": _strs,
    "cv": lambda v: v is None or (isinstance(v, list) and len(v) == 4 and all(_int(x) for x in v)),
    "eh": lambda v: (isinstance(v, list) and len(v) == 2 and _int(v[0]) and isinstance(v[1], list)
                     and len(v[1]) % 2 == 0 and len(v[1]) <= 336
                     and all(type(b) is int and 0 <= b < 168 for b in v[1][::2]) and all(_num(x) for x in v[1][1::2])),
    "x": _int, "fw": lambda v: type(v) is str,
}
_FIELDS = frozenset(_FIELDS_OK)


def merge_engagement(a: list, b: list, half_life: int = 30 * 86_400_000) -> list:
    """Two engagement histograms as one, at the later reference time (the default half-life: a visitor's
    engagements are few, and the merge is rare)."""
    if b[0] > a[0]:
        a, b = b, a
    f = 2.0 ** (-(a[0] - b[0]) / half_life)
    bins = dict(a[1])
    for k, v in b[1].items():
        bins[k] = round(bins.get(k, 0.0) + v * f, 3)
    return [a[0], bins]


def merge_clv(a: list, b: list) -> list:
    """Combine two ``[first_day, last_day, x, repeat_cents]`` statistics (a visitor's
    purchases before they identified, and the customer's). The purchase-day count is
    exact unless both bought on one day other than the first; the later side's
    first-day spend is not kept, so it is missing from the repeat spend."""
    early, late = (a, b) if a[0] <= b[0] else (b, a)
    same_first = early[0] == late[0]
    return [early[0], max(a[1], b[1]), a[2] + b[2] + (0 if same_first else 1), a[3] + b[3]]
