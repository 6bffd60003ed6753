"""The settings of a ``[journeys.NAME]`` table (domain.md section 6): their kinds, defaults and help,
as ``journey rules show`` lists them."""

from __future__ import annotations

import re

from ..params import Param
from ..rules.base import PRIORITIES, RECOGNITION, RECOVERY, SEND_TIMES

_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")

SETTINGS = {
    "kind": Param("text", "", "recovery or recognition (required)", choices=(RECOVERY, RECOGNITION)),
    "transactional": Param("bool", False, "a service message: no caps, no quiet hours (consent still checked)"),
    "entry": Param("strs", [], "the event type(s) that start an instance (required)"),
    "if": Param("text", "", "CEL condition on the entry event"),
    "key": Param("text", "", "the prop that names an instance (one per customer without it)"),
    "wait": Param("duration", "0s", "absence: fire this long after entry unless an exit event came"),
    "exit": Param("strs", [], "absence: event types that end the instance unfired"),
    "exit_if": Param("text", "", "absence: CEL condition on the exit event"),
    "then": Param("strs", [], "sequence: the event type(s) that complete it"),
    "then_if": Param("text", "", "sequence: CEL condition on the then event"),
    "within": Param("duration", "0s", "sequence and count: the window"),
    "count": Param("int", 0, "count: entries within the window that fire it (at least 2)"),
    "reenter": Param("duration", "0s", "a new instance may start this long after the previous one started "
                                       "(without it, each customer and key enters once)"),
    "when": Param("text", "", "CEL condition checked when the journey is about to fire"),
    "channel": Param("str", "email", "the channel the trigger asks for"),
    "priority": Param("str", "normal", "priority carried by the trigger", choices=PRIORITIES),
    "offer": Param("table", {}, "offer carried by the trigger (string values are templates)"),
    "reason": Param("text", "", "the trigger's reason (a template)"),
    "send_time": Param("str", "now", "now, or optimal: at the customer's most engaged hour within send_within",
                       choices=SEND_TIMES),
    "send_within": Param("duration", "24h", "send_time optimal: how far past the due time it may go"),
    "steps": Param("tables", [], "multi-step: the steps an instance walks (name, wait, wait_for/within/where/"
                                 "timeout, if/else, send, next)"),
}
_STRS = ("entry", "exit", "then")  # a type or a list of types
