"""The experiment report's figures (domain.md section 7), from outcome records.

* Wilson's score interval for one proportion (no continuity correction);
* Newcombe's hybrid score interval for a difference of two proportions
  (Newcombe 1998, Statistics in Medicine 17:873-890, method 10): from each
  arm's Wilson interval ``(l, u)``, the difference ``d = p1 - p2`` has
  ``d - sqrt((p1 - l1)^2 + (u2 - p2)^2)`` to ``d + sqrt((u1 - p1)^2 + (p2 - l2)^2)``.

:class:`Tally` folds outcome records (one pass, constant memory per cell) and
:meth:`Tally.rows` gives the report's rows.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the 97.5% point of the standard normal
HOLDOUT = "holdout"
MIN_EXPOSURES = 100       # an arm with fewer says too little to report a difference in words
BANDS = ((0, 30, "0-29"), (30, 50, "30-49"), (50, 70, "50-69"), (70, 101, "70-100"))


def wilson(x: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for x successes in n trials."""
    if n <= 0:
        raise ValueError("no trials")
    p = x / n
    z2 = z * z
    denom = n + z2
    centre = (x + z2 / 2) / denom
    half = z * math.sqrt(n) / denom * math.sqrt(p * (1 - p) + z2 / (4 * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(x1: int, n1: int, x2: int, n2: int, z: float = Z95) -> tuple[float, float, float]:
    """The difference p1 - p2 and its hybrid score interval: (d, low, high)."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1, z)
    l2, u2 = wilson(x2, n2, z)
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def band(health) -> str:
    h = health if isinstance(health, (int, float)) else 0
    for lo, hi, name in BANDS:
        if lo <= h < hi:
            return name
    return BANDS[-1][2]


class Tally:
    """Exposures, conversions and value by (rule, arm, stage) and (rule, arm, health band)."""

    def __init__(self, delivered_ids=None):
        """``delivered_ids``: trigger ids known delivered besides what the records say (the ids
        ``journey dispatch`` recorded on journey.dispatch.delivered)."""
        # (rule, arm, group kind, group) -> [n, conversions, value in cents, exposures whose delivery
        # is known, of those delivered]: whole cents, so the sums do not depend on the order the
        # records come in (a topic's, a file's)
        self.cells: dict[tuple, list] = {}
        self.bad = 0                          # records that are not outcome records (skipped)
        self.delivered_ids = delivered_ids

    def add(self, rec) -> bool:
        try:
            rule, arm, stage = rec["rule"], rec["variant"], rec["stage"]
            converted = rec["converted"] is True
            value = float(rec.get("value") or 0) if converted else 0.0
            if not (isinstance(rule, str) and isinstance(arm, str) and isinstance(stage, str)) or not abs(value) < 1e13:
                raise TypeError
            cents = round(value * 100)
            hb = band(rec.get("health"))
            # did the message reach the customer? (outcomes of older versions do not say)
            delivered = rec.get("delivered")
            if delivered is not True and self.delivered_ids and rec.get("trigger_id") in self.delivered_ids:
                delivered = True
            known = delivered is True or delivered is False
        except (KeyError, TypeError, ValueError, AttributeError):
            self.bad += 1
            return False
        for key in ((rule, arm, "all", None), (rule, arm, "stage", stage), (rule, arm, "health", hb)):
            c = self.cells.get(key)
            if c is None:
                c = self.cells[key] = [0, 0, 0, 0, 0]
            c[0] += 1
            c[1] += converted
            c[2] += cents
            c[3] += known
            c[4] += delivered is True
        return True

    def merge(self, other: Tally) -> None:
        for k, c in other.cells.items():
            t = self.cells.setdefault(k, [0, 0, 0, 0, 0])
            for i in range(5):
                t[i] += c[i]
        self.bad += other.bad

    def reach(self) -> dict:
        """Per rule: ``measured`` (True: some treated exposure's message was reported delivered;
        False: none of those whose delivery is known was, so the figures measure nothing, as
        in a replay of past history; None: the records do not say), the treated exposures
        whose delivery is known and of those delivered, and the holdout's exposures reported
        delivered (customers who got the message all the same)."""
        out = {}
        for (rule, arm, kind, _g), c in self.cells.items():
            if kind != "all":
                continue
            r = out.setdefault(rule, {"measured": None, "treated_known": 0, "treated_delivered": 0,
                                      "holdout_delivered": 0})
            if arm == HOLDOUT:
                r["holdout_delivered"] += c[4]
            else:
                r["treated_known"] += c[3]
                r["treated_delivered"] += c[4]
        for r in out.values():
            r["measured"] = True if r["treated_delivered"] else False if r["treated_known"] else None
        return out

    def rows(self, by: str = "stage") -> list[dict]:
        """Rows per rule and arm (``stage`` None), then per rule, arm and ``by`` (stage or
        health band), holdout first; uplift against the holdout of the same group."""
        out = []
        groups = [("all", None)] + sorted({(k[2], k[3]) for k in self.cells if k[2] == by}, key=_group_order)
        for rule in sorted({k[0] for k in self.cells}):
            arms = sorted({k[1] for k in self.cells if k[0] == rule}, key=lambda a: (a != HOLDOUT, a))
            for kind, group in groups:
                base = self.cells.get((rule, HOLDOUT, kind, group))
                for arm in arms:
                    c = self.cells.get((rule, arm, kind, group))
                    if c is None:
                        continue
                    n, x, v = c[0], c[1], c[2]
                    row = {"rule": rule, "arm": arm, "stage": group if kind == "stage" else None}
                    if kind == "health":
                        row["health_band"] = group
                    row.update({"exposures": n, "conversions": x, "rate": x / n,
                                "value_per_exposure": v / 100 / n, "uplift": None, "ci_low": None,
                                "ci_high": None})
                    if arm != HOLDOUT and base is not None and base[0] > 0:
                        d, lo, hi = newcombe(x, n, base[1], base[0])
                        row.update(uplift=d, ci_low=lo, ci_high=hi)
                    out.append(row)
        return out


_STAGE_ORDER = {s: i for i, s in enumerate(("prospect", "new", "active", "loyal", "at_risk", "lapsed"))}


def _group_order(g):
    kind, name = g
    return (_STAGE_ORDER.get(name, len(_STAGE_ORDER)), name) if kind == "stage" else (0, name)


def reach_warnings(tally: Tally) -> list[str]:
    """Plain-words warnings where the figures cannot measure what they seem to: no treated
    message reached anyone, or the holdout got the message all the same."""
    out = []
    reach = tally.reach()
    none = [(rule, r) for rule, r in sorted(reach.items()) if r["measured"] is False]
    if none:
        names = ", ".join(f"{rule} ({r['treated_known']:,} treated exposures)" for rule, r in none)
        out.append(f"no message of {names} is known to have reached anyone: no message.delivered, opened, "
                   "clicked or complained event named its trigger id, nor did journey dispatch record it delivered. Outcomes "
                   "replayed from past history look like this: nobody received those messages, so the uplift "
                   "measures nothing. Measure live (journey worker and journey dispatch, the messaging system "
                   "reporting message.delivered back), or see the report on reacting customers with journey "
                   "simulate")
    for rule, r in sorted(reach.items()):
        if r["holdout_delivered"]:
            out.append(f"{r['holdout_delivered']:,} holdout exposure(s) of {rule} were reported delivered: those "
                       "customers got the message all the same, so the holdout does not hold out (history "
                       "replayed under an experiment added since?)")
    return out


def summary_lines(rows: list[dict], min_exposures: int = MIN_EXPOSURES) -> list[str]:
    """One plain-words line per rule and arm (all stages together), with a warning where an
    arm is too small to say anything."""
    lines = []
    overall = [r for r in rows if r["stage"] is None and "health_band" not in r]
    holdouts = {r["rule"]: r for r in overall if r["arm"] == HOLDOUT}
    for r in overall:
        if r["arm"] == HOLDOUT:
            continue
        base = holdouts.get(r["rule"])
        if base is None:
            lines.append(f"{r['rule']}, {r['arm']}: {r['exposures']:,} exposures, {100 * r['rate']:.1f}% converted; "
                         "no holdout to compare with (set holdout in the experiment)")
            continue
        total = r["exposures"] + base["exposures"]
        line = (f"{r['rule']}, {r['arm']} vs holdout: {_points(r['uplift'])} points (95% CI {_points(r['ci_low'])} "
                f"to {_points(r['ci_high'])}), {total:,} exposures")
        small = [f"{a['arm']} {a['exposures']:,}" for a in (r, base) if a["exposures"] < min_exposures]
        if small:
            line += (f"; too few exposures to say anything yet ({', '.join(small)}; fewer than "
                     f"{min_exposures:,})")
        elif r["ci_low"] > 0:
            line += "; it helps"
        elif r["ci_high"] < 0:
            line += "; it hurts"
        else:
            line += "; no difference shown yet"
        lines.append(line)
    return lines


def _points(x: float) -> str:
    return f"{100 * x:+.1f}"
