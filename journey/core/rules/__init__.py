"""The rule registry. Adding a rule: write one module defining ``RULE`` and
name it here."""

from . import (
               advocate,
               anniversary,
               birthday,
               cart_abandoned,
               delivery_late,
               first_purchase,
               order_milestone,
               payment_failed,
               service_recovery,
               spend_tier,
               steady_customer,
               support_sla_breach,
               win_back,
)

REGISTRY = {m.RULE.name: m.RULE for m in (
    # recovery
    cart_abandoned, payment_failed, support_sla_breach, service_recovery, delivery_late, win_back,
    # recognition
    first_purchase, order_milestone, spend_tier, birthday, anniversary, advocate, steady_customer,
)}
