from ..params import Param
from .base import RECOGNITION, Rule


class SpendTier(Rule):
    """Net spend (completed revenue less refunds) first reaches a tier; each tier once.

    When one order crosses several tiers, the highest is recognized and the
    lower ones count as reached (one message, not a burst)."""

    name = "spend_tier"
    kind = RECOGNITION
    events = ("order.completed",)
    params = {"tiers": Param("tiers", {"silver": 500, "gold": 2000, "platinum": 5000},
                             "tier name = net spend that reaches it, ascending")}
    default_offer = {"type": "tier_upgrade"}

    def on_event(self, eng, st, ev, p):
        if not eng.new_order:
            return
        spend = st.spend / 100
        names = list(p.tiers)
        idx = max((i for i, n in enumerate(names) if spend >= p.tiers[n]), default=-1)
        if idx > st.occ.get(self.name, -1):
            st.occ[self.name] = idx
            tier = names[idx]
            eng.fire(st, self, tier, ev.ts, f"net spend {spend:.2f} reached the {tier} tier ({p.tiers[tier]:g})",
                     [ev.id], {"tier": tier})


def tier_of(spend_cents: int, tiers: dict) -> str | None:
    name = None
    for n, threshold in tiers.items():
        if spend_cents / 100 >= threshold:
            name = n
    return name


RULE = SpendTier()
