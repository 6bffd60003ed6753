from ..timeutil import format_time
from .base import RECOGNITION, Rule


class FirstPurchase(Rule):
    """The customer's first completed order."""

    name = "first_purchase"
    kind = RECOGNITION
    events = ("order.completed",)
    params = {}
    default_offer = {"type": "welcome"}

    def on_event(self, eng, st, ev, p):
        if eng.new_order and not st.occ.get(self.name):
            st.occ[self.name] = 1
            eng.fire(st, self, "first", ev.ts, f"first order {ev.f.get('order_id') or ev.id} at {format_time(ev.ts)}",
                     [ev.id])


RULE = FirstPurchase()
