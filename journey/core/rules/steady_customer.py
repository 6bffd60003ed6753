from ..params import Param
from ..policy import customer_zone
from ..timeutil import month_index
from .base import RECOGNITION, Rule


class SteadyCustomer(Rule):
    """Orders in each of ``months`` consecutive calendar months (customer-local), for a customer
    below ``below_tier``: recognition is not only for the top tier. Once per streak."""

    name = "steady_customer"
    kind = RECOGNITION
    events = ("order.completed",)
    params = {
        "months": Param("int", 3, "consecutive calendar months with an order", minimum=2),
        "below_tier": Param("str", "gold", "only for customers below this spend tier (a spend_tier tier name)"),
    }
    default_offer = {"type": "thank_you"}

    def check(self, config):
        tiers = config.rules["spend_tier"].tiers
        below = config.rules[self.name].below_tier
        if below not in tiers:
            return [f"rules.{self.name}.below_tier: {below!r} is not a tier of rules.spend_tier.tiers "
                    f"({', '.join(tiers)})"]
        return []

    def on_event(self, eng, st, ev, p):
        if not eng.new_order:
            return
        month = month_index(ev.ts, customer_zone(st, eng.cfg))
        last, length, fired = st.occ.get(self.name, (None, 0, None))
        if month == last or (last is not None and month < last):
            return
        length = length + 1 if last is not None and month == last + 1 else 1
        start = month - length + 1
        st.occ[self.name] = [month, length, fired]
        if length >= p.months and fired != start and st.spend / 100 < eng.cfg.rules["spend_tier"].tiers[p.below_tier]:
            st.occ[self.name] = [month, length, start]
            label = f"{start // 12:04d}-{start % 12 + 1:02d}"
            eng.fire(st, self, label, ev.ts, f"orders in {length} consecutive months since {label}", [ev.id],
                     {"months": length})


RULE = SteadyCustomer()
