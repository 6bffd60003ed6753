from ..params import Param
from ..timeutil import format_duration, format_time
from .base import RECOVERY, Rule


class SupportSlaBreach(Rule):
    """An opened (or reopened) ticket with neither an agent reply nor a resolution within its SLA."""

    name = "support_sla_breach"
    kind = RECOVERY
    transactional = True
    events = ("ticket.opened", "ticket.reopened", "ticket.agent_replied", "ticket.resolved")
    params = {
        "urgent_sla": Param("duration", "1h", "SLA for high and urgent tickets"),
        "normal_sla": Param("duration", "8h", "SLA for low and normal tickets"),
    }
    default_priority = "urgent"
    default_offer = {"type": "escalation"}

    def on_event(self, eng, st, ev, p):
        tid = ev.f.get("ticket_id") or ev.id
        if ev.type in ("ticket.opened", "ticket.reopened"):
            prio = st.tickets.get(tid, [0, "normal"])[1]
            sla = p.urgent_sla if prio in ("high", "urgent") else p.normal_sla
            eng.set_timer(st, self, tid, ev.ts + sla, {"tk": tid, "s": ev.ts, "p": prio, "sla": sla, "e": [ev.id]})
        else:
            eng.cancel_timer(st, self, tid)

    def on_timer(self, eng, st, key, data, due, p):
        eng.outcome(st, "human", "ticket.sla_breached", due)
        eng.fire(st, self, data["e"][0], due,
                 f"ticket {data['tk']} ({data['p']}) opened {format_time(data['s'])}, no agent reply or "
                 f"resolution within {format_duration(data['sla'])}", data["e"],
                 {"ticket_id": data["tk"], "ticket_priority": data["p"]})


RULE = SupportSlaBreach()
