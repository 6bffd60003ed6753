from ..params import Param
from ..timeutil import format_duration, format_time
from .base import RECOVERY, Rule


class CartAbandoned(Rule):
    """A checkout not followed by an order within ``delay``; a newer checkout replaces the older."""

    name = "cart_abandoned"
    kind = RECOVERY
    events = ("checkout.started", "order.completed")
    params = {"delay": Param("duration", "30m", "how long after a checkout starts without an order")}
    default_priority = "high"
    default_offer = {"type": "cart_reminder"}

    def on_event(self, eng, st, ev, p):
        if ev.type == "checkout.started":
            checkout = ev.f.get("checkout_id") or ev.id
            eng.set_timer(st, self, "cart", ev.ts + p.delay,
                          {"c": checkout, "s": ev.ts, "v": ev.f.get("value"), "e": [ev.id]})
        else:  # an order at or before the deadline saves the cart
            t = eng.timer(st, self, "cart")
            if t is not None and ev.ts >= t[1]["s"]:
                eng.cancel_timer(st, self, "cart")

    def on_timer(self, eng, st, key, data, due, p):
        extra = {"checkout_id": data["c"]}
        if data.get("v") is not None:
            extra["value"] = data["v"] / 100
        eng.fire(st, self, data["c"], due,
                 f"checkout {data['c']} started {format_time(data['s'])}, no order within "
                 f"{format_duration(p.delay)} (by {format_time(due)})", data["e"], extra)

    def still_valid(self, eng, st, pending, now, p):
        started = pending["t"] - p.delay  # the checkout's start: its deadline less the delay
        if st.last_order is not None and st.last_order >= started:
            return "resolved_before_delivery"
        return None


RULE = CartAbandoned()
