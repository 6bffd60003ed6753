from ..params import Param
from .base import RECOGNITION, Rule


class OrderMilestone(Rule):
    """The count of distinct completed orders reaches a milestone."""

    name = "order_milestone"
    kind = RECOGNITION
    events = ("order.completed",)
    params = {"milestones": Param("ints", [5, 10, 25, 50, 100], "order counts that are recognized")}
    default_offer = {"type": "thank_you"}

    def on_event(self, eng, st, ev, p):
        if not eng.new_order:
            return
        n = st.orders
        reached = [m for m in p.milestones if m <= n and m > st.occ.get(self.name, 0)]
        if reached:
            m = reached[-1]
            st.occ[self.name] = m
            eng.fire(st, self, m, ev.ts, f"{n} completed orders (milestone {m})", [ev.id], {"milestone": m})


RULE = OrderMilestone()
