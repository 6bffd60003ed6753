"""The CEL fast path gives the CEL library's answer: for many expressions and many
contexts (missing props, wrong types, ints against doubles, null, lists), a value from
the fast path equals the library's, and wherever the library errs the fast path hands
over (Fallback) instead of answering."""

from __future__ import annotations

import random

import pytest

from journey.core.celfast import Fallback, compile_fast
from journey.core.journeys import Compiled

EXPRESSIONS = [
    "event.props.price >= 50.0", "event.props.price >= 50", "event.props.price < 10.5 || event.props.price > 90.0",
    "event.props.rating >= 4.0 && customer.orders >= 2", "customer.orders >= 2 && customer.open_tickets == 0",
    "customer.stage in ['prospect', 'new', 'active', 'loyal'] && customer.health >= 40.0",
    "customer.stage == 'lapsed'", "customer.stage != \"active\"", "!(customer.open_tickets > 0)",
    "event.props.code == 'E500'", "event.type == 'product.viewed'", "event.props.vip == true",
    "entry.props.product_id == then.props.product_id", "(event.props.price > 5.0) && !(event.props.vip == true)",
    "customer.tier in ['gold', 'silver'] || customer.net_spend > 500.0", "customer.health >= 40",
    "event.props.price", "entry.props.product_id", "customer.orders", "event.props.qty in [1, 2, 3]",
]
NOT_FAST = ["event.props.price * 2.0 > 10.0", "size(event.props.items) > 2", "event.time > timestamp('2026-01-01T00:00:00Z')",
            "has(event.props.price)", "event.props['price'] > 1.0", "customer.last_order < event.time", "-1 < 2",
            "event.props.price >= 1e3"]

PROP_VALUES = [None, 0, 5, 50, 60, 50.0, 49.99, 120.5, "50", "E500", "p1", True, False, [1, 2], {"a": 1}, 2, 3]


def _sources(rnd: random.Random) -> dict:
    def props():
        out = {}
        for k in ("price", "rating", "code", "vip", "product_id", "qty"):
            if rnd.random() < 0.8:
                out[k] = rnd.choice(PROP_VALUES)
        return out

    def ev():
        return (rnd.choice(["product.viewed", "order.completed"]), 1772359200000, props())

    customer = {"stage": rnd.choice(["prospect", "active", "lapsed", "loyal"]), "health": rnd.choice([12.0, 40.0, 77.5]),
                "orders": rnd.choice([0, 1, 2, 7]), "open_tickets": rnd.choice([0, 1]), "net_spend": 120.0,
                "tier": rnd.choice(["", "gold", "bronze"]), "timezone": "UTC"}
    for k in list(customer):
        if rnd.random() < 0.08:
            del customer[k]
    s = {"event": ev(), "entry": ev(), "then": ev() if rnd.random() < 0.7 else None}
    if rnd.random() < 0.9:
        s["customer"] = customer
    return s


def _library(c: Compiled, sources: dict):
    try:
        return ("value", c.program.execute(c.context(sources)))
    except Exception:
        return ("error", None)


@pytest.mark.parametrize("source", EXPRESSIONS)
def test_the_fast_path_answers_as_the_library_or_hands_over(source):
    problems = []
    c = Compiled(source, "t", problems)
    assert not problems and c.fast is not None, (source, problems)
    rnd = random.Random(source)
    answered = 0
    for _ in range(400):
        s = _sources(rnd)
        want = _library(c, s)
        try:
            got = c.fast(s)
        except Fallback:
            continue
        answered += 1
        assert want[0] == "value", (source, s, got)   # never an answer where CEL errs
        assert got == want[1] and type(got) is type(want[1]), (source, s, got, want)
        assert c.evaluate(s) == want[1]
    assert answered > 0  # the common case does take the fast path


@pytest.mark.parametrize("source", NOT_FAST)
def test_other_expressions_stay_on_the_library(source):
    assert compile_fast(source) is None
