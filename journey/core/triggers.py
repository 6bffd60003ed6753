"""Output records: trigger CloudEvents, audit records, dead letters, transitions.

A trigger id is a pure function of (customer, rule, occasion), so a
redelivered or replayed trigger carries the same id (domain.md section 3).
"""

from __future__ import annotations

import base64
import hashlib
import uuid

from .timeutil import format_time

NAMESPACE = uuid.UUID("6f1c1d0e-7a57-4a5e-9c3b-6a6f75726e79")
SOURCE = "journey"


_NS = NAMESPACE.bytes


_TIDS: dict[tuple, str] = {}  # (customer, rule, occasion) -> id: a trigger's id is asked for at each decision


def trigger_id(customer_id: str, rule: str, occasion: str) -> str:
    """RFC 4122 name-based UUID (version 5, SHA-1) of (customer, rule, occasion);
    equal to ``uuid.uuid5(NAMESPACE, name)``, computed without building UUID objects."""
    k = (customer_id, rule, occasion)
    tid = _TIDS.get(k)
    if tid is None:
        x = hashlib.sha1(_NS + f"{customer_id}\x1f{rule}\x1f{occasion}".encode()).hexdigest()
        # the version (5) and the variant (10xx) bits
        tid = f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-{x[20:32]}"
        if len(_TIDS) >= 65536:
            _TIDS.clear()  # bounded; the ids asked for again are those of recent decisions
        _TIDS[k] = tid
    return tid


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def forget_ids() -> None:
    """Drop the memo of trigger ids (an erasure: no customer id stays in this process's memory)."""
    _TIDS.clear()


def cloudevent(tid: str, customer_id: str, rule: str, kind: str, time: int, data: dict) -> dict:
    """A CloudEvents 1.0 event in structured JSON mode."""
    return {
        "specversion": "1.0",
        "id": tid,
        "source": SOURCE,
        "type": f"journey.{kind}.{rule}",
        "subject": customer_id,
        "time": format_time(time),
        "datacontenttype": "application/json",
        "data": data,
    }


def audit_record(tid: str, customer_id: str, rule: str, kind: str, reason: str, time: int,
                 detail: str, occasion: str, evidence: list, deferred_until: int | None = None) -> dict:
    rec = {
        "trigger_id": tid,
        "customer_id": customer_id,
        "rule": rule,
        "kind": kind,
        "reason": reason,
        "time": format_time(time),
        "detail": detail,
        "occasion": occasion,
        "evidence": evidence,
    }
    if deferred_until is not None:
        rec["deferred_until"] = format_time(deferred_until)
    return rec


def deadletter_record(reason: str, detail: str, origin: dict, raw: bytes) -> dict:
    """A rejected record. The original bytes go as text when they are UTF-8,
    else base64 (``raw_base64``)."""
    rec = {"reason": reason, "detail": detail, **origin}
    try:
        rec["raw"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        rec["raw_base64"] = base64.b64encode(raw).decode()
    return rec


def transition_record(customer_id: str, before: str, after: str, time: int, why: str) -> dict:
    return {"customer_id": customer_id, "from": before, "to": after, "time": format_time(time), "reason": why}
