"""The contact policy: one per-customer decision for every trigger of every rule.

Order of checks (the first that applies decides):

1. the visitor is anonymous -> ``unidentified`` (nobody to contact yet)
2. the trigger's channel is refused, or a marketing trigger and ``marketing``
   is refused -> ``no_consent`` (unstated consent takes ``consent_default``)
3. transactional triggers (service recovery) go out here: no gates, caps or quiet hours
4. an open ticket -> ``open_complaint``; health below the floor -> ``poor_relationship``
5. ``send_time = "optimal"`` (not chosen yet): the customer's most engaged hour
   within ``send_within``, when later -> deferred to it (``send_time``); then
   customer-local quiet hours -> deferred to their end (``quiet_hours``); both
   checked again then
6. more than ``max_per_window`` in ``window``, less than ``min_gap`` since
   the last marketing contact, or ``max_per_day`` already in the customer-local
   calendar day -> ``frequency_cap``
"""

from __future__ import annotations

from . import health, sendtime
from .timeutil import at_local, format_duration, local_date, minute_of_day, zone

SEND, DEFER, SUPPRESS = "send", "defer", "suppress"


class Decision:
    __slots__ = ("verdict", "reason", "detail", "until")

    def __init__(self, verdict, reason=None, detail="", until=None):
        self.verdict, self.reason, self.detail, self.until = verdict, reason, detail, until


_SEND = Decision(SEND)


def customer_zone(st, cfg):
    return zone(st.tz or cfg.policy.default_timezone)


def refused(st, key: str, default_granted: bool) -> bool:
    c = st.consent
    if c is None or key not in c:
        return not default_granted
    return c[key] is False


def open_tickets(st, now: int, max_age: int) -> list[str]:
    if not st.tickets:
        return []
    return [tid for tid, (opened, _prio, is_open) in st.tickets.items() if is_open and now - opened < max_age]


def quiet_until(now: int, tz, start: int, end: int) -> int | None:
    """If ``now`` is inside customer-local quiet hours [start, end), when they end."""
    if start == end:
        return None
    m = minute_of_day(now, tz)
    inside = (m >= start or m < end) if start > end else (start <= m < end)
    if not inside:
        return None
    day = local_date(now, tz)
    due = at_local(day, end, tz)
    while due <= now:
        day = day.fromordinal(day.toordinal() + 1)
        due = at_local(day, end, tz)
    return due


def decide(st, rule, p, now: int, cfg, channel: str | None = None, send_within: int | None = None) -> Decision:
    """``channel``: the trigger's channel when not the rule's own (an experiment's variant).
    ``send_within``: send_time optimal, not chosen yet (section 9): a trigger whose customer's most
    engaged hour within that long is later is deferred to it (``send_time``), before quiet hours and
    caps, which are checked again when it goes."""
    pol = cfg.policy
    if st.anon:
        return Decision(SUPPRESS, "unidentified", "anonymous visitor: no customer id to contact yet")
    granted = pol.consent_default == "granted"
    channel = channel or p.channel
    if refused(st, channel, granted):
        return Decision(SUPPRESS, "no_consent", f"channel {channel} not consented")
    marketing = not rule.transactional
    if marketing and refused(st, "marketing", granted):
        return Decision(SUPPRESS, "no_consent", "marketing not consented")
    if not marketing:
        return _SEND
    tickets = open_tickets(st, now, pol.open_ticket_max_age)
    if tickets:
        return Decision(SUPPRESS, "open_complaint", f"{len(tickets)} open ticket(s)")
    h = health.score(st.hdev, st.hts, now, cfg.health.half_life)
    if h < pol.health_floor:
        return Decision(SUPPRESS, "poor_relationship", f"health {h} below {pol.health_floor:g}")
    tz = customer_zone(st, cfg)
    if send_within is not None:
        at = sendtime.best(st.eh, now, send_within, tz, cfg)
        if at is not None and at > now:
            return Decision(DEFER, "send_time", f"the customer's most engaged hour within "
                                                f"{format_duration(send_within)}", at)
    until = quiet_until(now, tz, pol.quiet_start, pol.quiet_end)
    if until is not None:
        return Decision(DEFER, "quiet_hours", "customer-local quiet hours", until)
    capped = cap(st, now, cfg)
    if capped is not None:
        return Decision(SUPPRESS, "frequency_cap", capped)
    return _SEND


def cap(st, now: int, cfg, extra: int = 0) -> str | None:
    """Why the frequency caps hold back one more marketing contact at ``now`` (None: they allow it).
    ``extra``: contacts to count at ``now`` besides the customer's own (arbitration counts the held-out
    winners of a window that way, so a holdout is capped as a send would be)."""
    pol = cfg.policy
    recent = [c for c in st.contacts if now - c < pol.window]
    if len(recent) + extra >= pol.max_per_window:
        return f"{len(recent) + extra} marketing contacts in the last {format_duration(pol.window)}"
    if (extra or recent) and now - (now if extra else max(recent)) < pol.min_gap:
        return f"last marketing contact less than {format_duration(pol.min_gap)} ago"
    if pol.max_per_day:
        start = day_start(now, customer_zone(st, cfg))
        today = sum(1 for c in st.contacts if start <= c <= now) + extra
        if today >= pol.max_per_day:
            return f"{today} marketing contacts today (customer-local day), the most per day"
    return None


def day_start(now: int, tz) -> int:
    """Epoch ms of the start of ``now``'s calendar day in ``tz``."""
    return at_local(local_date(now, tz), 0, tz)


def record_contact(st, now: int, cfg) -> None:
    pol = cfg.policy
    n = pol.max_per_window - 1 or 1
    if not pol.max_per_day:
        st.contacts = [c for c in st.contacts if now - c < pol.window][-n:] + [now]
        return
    # the day cap counts the customer-local day's contacts too: keep those of the window and of the day
    start = day_start(now, customer_zone(st, cfg))
    st.contacts = [c for c in st.contacts if now - c < pol.window or c >= start][-max(n, pol.max_per_day):] + [now]
