from ..params import Param
from ..policy import customer_zone
from ..timeutil import MS_DAY, format_duration, next_yearly
from .base import RECOGNITION, Rule


class Birthday(Rule):
    """At ``at`` local time on the birthday (29 Feb -> 28 Feb in other years), for a recent buyer.

    The yearly timer is kept only while the customer can still qualify at the next birthday
    (an order within ``ordered_within`` before it); otherwise an order re-arms it."""

    name = "birthday"
    kind = RECOGNITION
    events = ("profile.updated", "order.completed")
    params = {
        "at": Param("clock", "09:00", "customer-local time of day"),
        "ordered_within": Param("duration", "365d", "only for customers who ordered within this"),
    }
    default_offer = {"type": "birthday_gift"}

    def on_event(self, eng, st, ev, p):
        if not st.birthday:
            return
        if ev.type == "order.completed":
            if eng.new_order and eng.timer(st, self, "next") is None:
                self.schedule(eng, st, ev.ts, p)
        elif ev.traits and ("birthday" in ev.traits or "timezone" in ev.traits):
            self.schedule(eng, st, ev.ts, p)

    def schedule(self, eng, st, after, p):
        month, day = map(int, st.birthday.split("-"))
        due, year = next_yearly(after, month, day, p.at, customer_zone(st, eng.cfg))
        if st.last_order is None or due - st.last_order > p.ordered_within:
            eng.cancel_timer(st, self, "next")  # cannot qualify then; an order re-arms it
            return
        eng.set_timer(st, self, "next", due, year)

    def on_timer(self, eng, st, key, year, due, p):
        if st.birthday is None:
            return
        if st.occ.get(self.name, 0) < year and st.last_order is not None and due - st.last_order <= p.ordered_within:
            st.occ[self.name] = year
            eng.fire(st, self, year, due,
                     f"birthday {st.birthday}; last order within {format_duration(p.ordered_within)}", [])
        self.schedule(eng, st, due + MS_DAY // 2, p)


RULE = Birthday()
