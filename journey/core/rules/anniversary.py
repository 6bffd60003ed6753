from ..params import Param
from ..policy import customer_zone
from ..timeutil import MS_DAY, format_duration, format_time, next_yearly, wall
from .base import RECOGNITION, Rule


class Anniversary(Rule):
    """At ``at`` local time on each yearly anniversary of the first order, for a recent buyer.

    The yearly timer is kept only while the customer can still qualify at the next
    anniversary (an order within ``ordered_within`` before it); a customer who cannot has
    no timer until they order again (no dead timers in state)."""

    name = "anniversary"
    kind = RECOGNITION
    events = ("order.completed", "profile.updated")
    params = {
        "at": Param("clock", "09:00", "customer-local time of day"),
        "ordered_within": Param("duration", "365d", "only for customers who ordered within this"),
    }
    default_offer = {"type": "anniversary_thanks"}

    def on_event(self, eng, st, ev, p):
        if st.first_order is None:
            return
        if ev.type == "order.completed" and eng.new_order:
            if st.orders == 1 or eng.timer(st, self, "next") is None:  # the first order, or back after a gap
                self.schedule(eng, st, ev.ts, p)
        elif ev.type == "profile.updated" and ev.traits and "timezone" in ev.traits:
            self.schedule(eng, st, ev.ts, p)

    def schedule(self, eng, st, after, p):
        first = wall(st.first_order, customer_zone(st, eng.cfg))
        due, year = next_yearly(max(after, st.first_order + MS_DAY), first.month, first.day, p.at,
                                customer_zone(st, eng.cfg))
        if st.last_order is None or due - st.last_order > p.ordered_within:
            eng.cancel_timer(st, self, "next")  # cannot qualify then; an order re-arms it
            return
        eng.set_timer(st, self, "next", due, year - first.year)

    def on_timer(self, eng, st, key, years, due, p):
        if st.first_order is None:
            return
        if (years > st.occ.get(self.name, 0) and st.last_order is not None
                and due - st.last_order <= p.ordered_within):
            st.occ[self.name] = years
            eng.fire(st, self, years, due,
                     f"{years} year(s) since the first order ({format_time(st.first_order)}); "
                     f"last order within {format_duration(p.ordered_within)}", [], {"years": years})
        self.schedule(eng, st, due + MS_DAY // 2, p)


RULE = Anniversary()
