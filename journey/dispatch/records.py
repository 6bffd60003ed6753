"""What a ``journey.triggers`` record must look like before the dispatcher
routes it. Pure.

Only what the dispatcher itself relies on is checked (a full schema check is
the producers' contract): a JSON object; ``id`` a short printable-ASCII
string (it is sent as the ``webhook-id`` header and keys the delivered
record); ``data`` an object whose ``rule`` and ``kind`` are strings and whose
``channel`` is a string or absent (they are matched against the routes);
``time``, when present, a string. A record that fails goes to
``journey.triggers.deadletter`` as ``not_a_trigger`` with the problem; it
never stops the dispatcher.
"""

from __future__ import annotations

import re

import orjson

MAX_ID = 256
ID = re.compile(r"[\x21-\x7e]{1,256}")      # 1 to MAX_ID printable ASCII characters, no spaces

# the problem labels of journey_dispatch_invalid_records_total (a fixed set: no value ever becomes a label)
PROBLEMS = ("not_json", "not_an_object", "id", "data", "data.rule", "data.kind", "data.channel", "time")


class InvalidTrigger(ValueError):
    def __init__(self, problem: str, detail: str):
        super().__init__(f"{problem}: {detail}")
        self.problem, self.detail = problem, detail


def _kind(v) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def parse_trigger(value) -> dict:
    """The trigger in a record's value, or :class:`InvalidTrigger` saying what is wrong."""
    try:
        t = orjson.loads(value)
    except (orjson.JSONDecodeError, TypeError) as e:
        raise InvalidTrigger("not_json", "the record value is not JSON" if value is not None
                             else "the record has no value") from e
    if not isinstance(t, dict):
        raise InvalidTrigger("not_an_object", f"the record is {_kind(t)}, not a JSON object")
    tid = t.get("id")
    if not isinstance(tid, str):
        raise InvalidTrigger("id", "no id" if "id" not in t else f"id is {_kind(tid)}, not a string")
    if not ID.fullmatch(tid):
        raise InvalidTrigger("id", f"id must be 1 to {MAX_ID} printable ASCII characters without spaces "
                                   f"(it is sent as the webhook-id header)")
    data = t.get("data")
    if not isinstance(data, dict):
        raise InvalidTrigger("data", "no data" if "data" not in t else f"data is {_kind(data)}, not an object")
    for key in ("rule", "kind"):
        if not isinstance(data.get(key), str):
            raise InvalidTrigger(f"data.{key}", f"no data.{key}" if key not in data
                                 else f"data.{key} is {_kind(data[key])}, not a string")
    if data.get("channel") is not None and not isinstance(data["channel"], str):
        raise InvalidTrigger("data.channel", f"data.channel is {_kind(data['channel'])}, not a string")
    if "time" in t and not isinstance(t["time"], str):
        raise InvalidTrigger("time", f"time is {_kind(t['time'])}, not a string")
    return t
