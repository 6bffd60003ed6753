"""What a rule is.

A rule is one small class: the event types it listens to, its parameters
(every number configurable), and up to three hooks:

* ``on_event(eng, st, ev, p)``: an event of one of ``events`` was applied to
  the customer's state ``st`` (state is already updated); ``p`` holds the
  rule's parameters.
* ``on_timer(eng, st, key, data, due, p)``: a timer the rule set with
  ``eng.set_timer`` is due (event time ``due``).
* ``still_valid(eng, st, pending, now, p)``: a trigger deferred by quiet hours
  is about to go out; return a suppression reason if it no longer should.

Rules fire with ``eng.fire(st, rule, occasion, time, reason, evidence)``; the
contact policy decides the rest. An occasion fires at most once: the trigger
id is a pure function of (customer, rule, occasion).
"""

from __future__ import annotations

from ..params import Param

RECOVERY, RECOGNITION = "recovery", "recognition"
PRIORITIES = ("low", "normal", "high", "urgent")
SEND_TIMES = ("now", "optimal")


class Rule:
    name: str = ""
    kind: str = RECOVERY
    transactional: bool = False  # service messages: no caps, no quiet hours, consent still checked
    events: tuple[str, ...] = ()
    params: dict[str, Param] = {}
    default_priority = "normal"
    default_offer: dict = {}
    summary = ""

    @classmethod
    def all_params(cls) -> dict[str, Param]:
        common = {
            "enabled": Param("bool", True, "run this rule"),
            "channel": Param("str", "email", "the channel the trigger asks for"),
            "priority": Param("str", cls.default_priority, "priority carried by the trigger", choices=PRIORITIES),
            "offer": Param("table", dict(cls.default_offer), "offer carried by the trigger (free-form)"),
            "send_time": Param("str", "now", "now, or optimal: at the customer's most engaged hour within "
                                             "send_within (section 9)", choices=SEND_TIMES),
            "send_within": Param("duration", "24h", "send_time optimal: how far past the due time it may go"),
        }
        return {**common, **cls.params}

    def check(self, config) -> list[str]:
        """Cross-setting problems of this rule in ``config`` (after parsing)."""
        return []

    def on_event(self, eng, st, ev, p) -> None:
        pass

    def on_timer(self, eng, st, key: str, data, due: int, p) -> None:
        pass

    def still_valid(self, eng, st, pending: dict, now: int, p) -> str | None:
        return None
