from ..params import Param
from ..timeutil import format_duration, format_time
from .base import RECOVERY, Rule


class PaymentFailed(Rule):
    """A failed payment not followed by a completed order within ``delay``."""

    name = "payment_failed"
    kind = RECOVERY
    transactional = True
    events = ("payment.failed", "order.completed")
    params = {"delay": Param("duration", "15m", "how long after a failed payment without an order")}
    default_priority = "high"
    default_offer = {"type": "payment_help"}

    def on_event(self, eng, st, ev, p):
        if ev.type == "payment.failed":
            ref = ev.f.get("order_id") or ev.f.get("checkout_id") or ev.id
            eng.set_timer(st, self, ref, ev.ts + p.delay, {"ref": ref, "s": ev.ts, "e": [ev.id]})
        else:
            for tk in [k for k in st.timers if k.startswith(self.name + "|")]:
                if ev.ts >= st.timers[tk][1]["s"]:
                    eng.cancel_timer(st, self, tk.partition("|")[2])

    def on_timer(self, eng, st, key, data, due, p):
        eng.fire(st, self, data["e"][0], due,
                 f"payment for {data['ref']} failed {format_time(data['s'])}, no order within "
                 f"{format_duration(p.delay)}", data["e"], {"reference": data["ref"]})


RULE = PaymentFailed()
