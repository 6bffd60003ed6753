from ..params import Param
from .base import RECOVERY, Rule


class ServiceRecovery(Rule):
    """A poor survey answer or review: recover promptly (the service recovery paradox)."""

    name = "service_recovery"
    kind = RECOVERY
    transactional = True
    events = ("survey.answered", "review.submitted")
    params = {
        "csat_at_most": Param("number", 2, "CSAT (1-5) at or below this fires"),
        "nps_at_most": Param("number", 6, "NPS (0-10) at or below this fires"),
        "rating_at_most": Param("number", 2, "review rating (1-5) at or below this fires"),
    }
    default_priority = "high"
    default_offer = {"type": "apology", "credit": 10}

    def on_event(self, eng, st, ev, p):
        f = ev.f
        why = None
        if "csat" in f and f["csat"] <= p.csat_at_most:
            why = f"survey CSAT {f['csat']:g} (at most {p.csat_at_most:g})"
        elif "nps" in f and f["nps"] <= p.nps_at_most:
            why = f"survey NPS {f['nps']:g} (at most {p.nps_at_most:g})"
        elif "rating" in f and f["rating"] <= p.rating_at_most:
            why = f"review rated {f['rating']:g} (at most {p.rating_at_most:g})"
        if why:
            eng.fire(st, self, ev.id, ev.ts, why, [ev.id])


RULE = ServiceRecovery()
