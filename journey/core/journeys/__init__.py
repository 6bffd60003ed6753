"""Journeys: rules that CRM and marketing-operations users write in the rule file
(``[journeys.NAME]``, domain.md section 6), run on the same machinery as the
built-in rules: event time, timers in customer state, the contact policy,
deterministic ids, audit records.

A journey is compiled once, at load, into a :class:`Journey` (a ``Rule``): its
CEL conditions and templates are compiled then, and it listens only to its own
event types (the engine indexes rules by event type). Instances live in
customer state: an absence or sequence instance is a timer (``name|key``) whose
data holds the entry event; count entries and the last start per key are in
``occ[name]``. Bounded: at most 20 open instances per customer and journey (the
oldest is dropped, audited ``instance_limit``), at most ``MAX_KEYS`` remembered
starts, and of an entry event only the props the journey's expressions name.

CEL (the ``common-expression-language`` package): props are JSON values in CEL's
JSON mapping (numbers are doubles); customer counts are ints; times are
timestamps. A condition that fails at run time counts as false and is counted
(``Stats.condition_errors``), never fatal.

The package, by concern: ``conditions`` (CEL and templates), ``settings`` (the table's
settings), ``instances`` (entry, keys, reenter, the open-instance bound), ``shapes`` (the
four shapes of section 6), ``steps`` (multi-step journeys, section 8).
"""

from __future__ import annotations

from .conditions import Compiled, Scope, customer_snapshot
from .instances import MAX_KEYS, MAX_OPEN
from .settings import _NAME, SETTINGS
from .shapes import Journey
from .steps import MAX_STEPS, StepJourney

__all__ = ["Compiled", "Journey", "Scope", "MAX_KEYS", "MAX_OPEN", "MAX_STEPS", "SETTINGS", "StepJourney", "customer_snapshot",
           "parse_journeys"]


def parse_journeys(given, rule_names, problems: list, warnings: list, custom=frozenset(),
                   clv: bool = True) -> dict[str, Journey]:
    """The ``[journeys]`` section: name -> compiled journey (problems and warnings listed);
    ``custom``: the event types the rule file declares (``[events] custom``); ``clv``: a CLV
    model is configured."""
    if given is None:
        return {}
    if not isinstance(given, dict):
        problems.append("journeys: expected a table of journey tables")
        return {}
    out = {}
    for name, spec in given.items():
        if name in rule_names:
            problems.append(f"journeys.{name}: a built-in rule has this name; choose another")
            continue
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            problems.append(f"journeys.{name}: a name is lower-case letters, digits and _, starting with a letter")
            continue
        if not isinstance(spec, dict):
            problems.append(f"journeys.{name}: expected a table")
            continue
        out[name] = (StepJourney if "steps" in spec else Journey)(name, spec, problems, warnings, custom, clv)
    return out
