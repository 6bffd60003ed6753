"""The event catalogue: canonical types, their Segment names, touch points,
and the fields the rules read (domain.md section 2)."""

from __future__ import annotations

PRODUCT, HUMAN, SYSTEM = "product", "human", "system"
TOUCH_KINDS = (PRODUCT, HUMAN, SYSTEM)

# Field kinds for the properties the rules read. Other properties are ignored
# (and never stored: they may carry personal data).
ID, MONEY, TIME, STR, SCORE = "id", "money", "time", "str", "score"

# canonical type -> (Segment event name, touch point, {prop: kind})
TYPES: dict[str, tuple[str | None, str, dict[str, str]]] = {
    "page.viewed": ("Page Viewed", SYSTEM, {}),
    "product.viewed": ("Product Viewed", PRODUCT, {"product_id": ID}),
    "cart.product_added": ("Product Added", PRODUCT, {"product_id": ID, "price": MONEY}),
    "checkout.started": ("Checkout Started", SYSTEM, {"checkout_id": ID, "value": MONEY}),
    "app.error": ("Error Occurred", SYSTEM, {"code": ID}),
    "order.completed": ("Order Completed", PRODUCT,
                        {"order_id": ID, "revenue": MONEY, "total": MONEY, "currency": STR}),
    "order.refunded": ("Order Refunded", PRODUCT, {"order_id": ID, "revenue": MONEY, "total": MONEY}),
    "order.cancelled": ("Order Cancelled", PRODUCT, {"order_id": ID}),
    "payment.failed": ("Payment Failed", SYSTEM, {"order_id": ID, "checkout_id": ID}),
    "order.shipped": ("Order Shipped", SYSTEM, {"order_id": ID, "promised_by": TIME}),
    "order.delivered": ("Order Delivered", SYSTEM, {"order_id": ID}),
    "ticket.opened": ("Ticket Opened", HUMAN, {"ticket_id": ID, "priority": STR}),
    "ticket.agent_replied": ("Ticket Agent Replied", HUMAN, {"ticket_id": ID}),
    "ticket.resolved": ("Ticket Resolved", HUMAN, {"ticket_id": ID}),
    "ticket.reopened": ("Ticket Reopened", HUMAN, {"ticket_id": ID, "priority": STR}),
    "survey.answered": ("Survey Answered", HUMAN, {"csat": SCORE, "nps": SCORE}),
    "review.submitted": ("Product Reviewed", PRODUCT, {"rating": SCORE}),
    "referral.sent": ("Referral Sent", HUMAN, {}),
    "profile.updated": (None, SYSTEM, {}),
    "customer.erased": ("Customer Erased", SYSTEM, {}),
    # engagement with the messages journey triggered (section 2; the messaging system reports them)
    "message.delivered": ("Email Delivered", SYSTEM, {"trigger_id": ID, "channel": STR}),
    "message.opened": ("Email Opened", SYSTEM, {"trigger_id": ID, "channel": STR}),
    "message.clicked": ("Email Link Clicked", SYSTEM, {"trigger_id": ID, "channel": STR}),
    "message.bounced": ("Email Bounced", SYSTEM, {"trigger_id": ID, "channel": STR}),
    "message.complained": ("Email Marked as Spam", SYSTEM, {"trigger_id": ID, "channel": STR}),
    "message.unsubscribed": ("Unsubscribed", SYSTEM, {"channel": STR}),
}

# Score ranges for SCORE fields.
SCORE_RANGE = {"csat": (1, 5), "nps": (0, 10), "rating": (1, 5)}
PRIORITIES = ("low", "normal", "high", "urgent")


def _key(name: str) -> str:
    """Case-, space-, dash- and underscore-insensitive form of an event name."""
    return "".join(name.lower().replace("_", " ").replace("-", " ").replace(".", " ").split())


# Segment track names (and the canonical names themselves) -> canonical type.
SEGMENT_NAMES: dict[str, str] = {}
# the Segment event names and the other tracking plans' names, as written -> canonical type
_OTHER_NAMES: dict[str, str] = {}
for _canon, (_seg, _touch, _fields) in TYPES.items():
    SEGMENT_NAMES[_key(_canon)] = _canon
    if _seg:
        SEGMENT_NAMES[_key(_seg)] = _OTHER_NAMES[_seg] = _canon
# A few names other tracking plans use for the same things.
ALIASES: dict[str, str] = {
    "Order Canceled": "order.cancelled",
    "Product Added To Cart": "cart.product_added",
    "Added To Cart": "cart.product_added",
    "Payment Declined": "payment.failed",
    "Review Submitted": "review.submitted",
    "Ticket Reopened": "ticket.reopened",
    "Ticket Replied": "ticket.agent_replied",
    "Ticket Closed": "ticket.resolved",
    "Order Placed": "order.completed",
    "Screen Viewed": "page.viewed",
    "Push Notification Received": "message.delivered",
    "Push Notification Tapped": "message.opened",
}
for _alias, _canon in ALIASES.items():
    SEGMENT_NAMES[_key(_alias)] = _OTHER_NAMES[_alias] = _canon


_EXACT: dict[str, str | None] = {}


def canonical_type(name: str) -> str | None:
    """The canonical type for a Segment event name or canonical type, else None."""
    try:
        return _EXACT[name]
    except KeyError:
        found = SEGMENT_NAMES.get(_key(name))
        if len(_EXACT) < 4096 and len(name) <= 64:  # names seen verbatim; bounded (in bytes too) against junk
            _EXACT[name] = found
        return found


def touch_of(ctype: str) -> str:
    entry = TYPES.get(ctype)
    return entry[1] if entry else SYSTEM


def fields_of(ctype: str) -> dict[str, str]:
    entry = TYPES.get(ctype)
    return entry[2] if entry else {}


def type_problem(name: str, custom=()) -> str | None:
    """Why a rule file may not name ``name`` as an event type (an entry, exit, then, wait_for or
    goal), or None when it may: a canonical type of the catalogue, or one the file declares in
    ``[events] custom``. Events arrive with their canonical type (a Segment name such as
    "Order Completed" is mapped to ``order.completed`` on intake), so any other name would never
    match an event."""
    if name in TYPES or name in custom:
        return None
    mapped = SEGMENT_NAMES.get(_key(name))
    if mapped is not None:
        if name in _OTHER_NAMES:
            return (f"{name!r} is the Segment event name of the event type {mapped!r}: events arrive with "
                    f"their canonical type, so write {mapped!r}")
        if _key(name) == _key(mapped):
            return f"{name!r} is written differently from the event type {mapped!r} (types are exact): write {mapped!r}"
        return (f"{name!r} is another name of the event type {mapped!r}: events arrive with their canonical "
                f"type, so write {mapped!r}")
    import difflib

    near = difflib.get_close_matches(_key(name), list(SEGMENT_NAMES), n=1, cutoff=0.75)
    hint = f" (did you mean {SEGMENT_NAMES[near[0]]!r}?)" if near else ""
    if not hint:
        near = difflib.get_close_matches(name, list(custom), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
    return (f"{name!r} is not a known event type{hint}: no event would ever match it (a type of your own, "
            "which the catalogue does not know, is declared in [events] custom)")


def custom_type_problem(name: str) -> str | None:
    """Why ``[events] custom`` may not declare ``name``, or None: it must be a name intake keeps as it
    is (an event name the catalogue does not map: trimmed, at most 64 characters)."""
    if not name.strip() or name != name.strip() or len(name) > 64:
        return f"{name!r}: an event type is 1 to 64 characters without surrounding spaces"
    if name in TYPES:
        return f"{name!r} is a type of the catalogue already"
    mapped = SEGMENT_NAMES.get(_key(name))
    if mapped is not None:
        return f"{name!r}: events named so arrive as the event type {mapped!r}; name that instead"
    return None
