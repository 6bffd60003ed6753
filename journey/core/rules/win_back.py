from ..params import Param
from ..timeutil import format_time
from .base import RECOVERY, Rule


class WinBack(Rule):
    """A customer with at least ``min_orders`` orders whose P(alive) falls below
    ``p_alive_below``, valued at least ``value_floor``. Only with a fitted CLV
    model (``[clv] model``). On event time: each purchase computes when P(alive)
    will cross the threshold if nothing else is bought, and sets one timer for
    that moment; no customer is polled."""

    name = "win_back"
    kind = RECOVERY
    events = ("order.completed",)
    params = {
        "p_alive_below": Param("number", 0.3, "fires when P(alive) falls below this"),
        "min_orders": Param("int", 2, "only for customers with at least this many orders", minimum=2),
        "value_floor": Param("number", 50, "only for customers whose CLV over the horizon is at least this", minimum=0),
    }
    default_priority = "normal"
    default_offer = {"type": "win_back", "discount_percent": 15}

    def on_event(self, eng, st, ev, p):
        if eng.clv is None or not eng.new_order:
            return
        if st.orders < p.min_orders:
            return
        due = eng.clv.crossing(st, p.p_alive_below)
        if due is not None:
            eng.set_timer(st, self, "lapse", due, {"lo": st.last_order, "e": [ev.id]})

    def on_timer(self, eng, st, key, data, due, p):
        if eng.clv is None or st.last_order != data["lo"]:
            return
        pa, expected, value = eng.clv.value(st, due)
        if pa >= p.p_alive_below or (value is not None and value < p.value_floor):
            return
        eng.fire(st, self, f"after:{data['lo']}", due,
                 f"P(alive) fell to {pa:.2f} (below {p.p_alive_below:g}) with no order since "
                 f"{format_time(data['lo'])}; {st.orders} orders, CLV {value if value is None else round(value, 2)}",
                 data["e"], {"p_alive": round(pa, 4), "clv": None if value is None else round(value, 2)})

    def still_valid(self, eng, st, pending, now, p):
        if st.last_order is not None and str(st.last_order) != pending["o"].split(":", 1)[1]:
            return "resolved_before_delivery"  # they came back before the message went out
        return None


RULE = WinBack()
