from ..params import Param
from .base import RECOGNITION, Rule


class Advocate(Rule):
    """Advocacy: a promoter score, a top review, or a referral."""

    name = "advocate"
    kind = RECOGNITION
    events = ("survey.answered", "review.submitted", "referral.sent")
    params = {
        "nps_at_least": Param("number", 9, "NPS at or above this is a promoter"),
        "rating_at_least": Param("number", 5, "review rating at or above this is an advocate"),
    }
    default_offer = {"type": "advocate_thanks"}

    def on_event(self, eng, st, ev, p):
        f = ev.f
        why = None
        if ev.type == "referral.sent":
            why = "sent a referral"
        elif "nps" in f and f["nps"] >= p.nps_at_least:
            why = f"promoter: NPS {f['nps']:g}"
        elif "rating" in f and f["rating"] >= p.rating_at_least:
            why = f"review rated {f['rating']:g}"
        if why:
            eng.fire(st, self, ev.id, ev.ts, why, [ev.id])


RULE = Advocate()
