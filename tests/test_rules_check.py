"""`journey rules check` refuses the mistakes that would silently break a journey (issue 31, point 2):
an unknown field of the customer or of an event in a condition, an unknown name in a template, an
event type that no event carries (a typo, or a Segment event name where the canonical type is
meant) in entry, exit, then, wait_for or an experiment's goal. Each is an error naming the journey
and the setting, with a did-you-mean; the example rule files still check clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def check(tmp_path, text: str) -> subprocess.CompletedProcess:
    f = tmp_path / "rules.toml"
    f.write_text(text)
    return subprocess.run([sys.executable, "-m", "journey", "rules", "check", str(f)], capture_output=True,
                          text=True, timeout=60)


J = '[journeys.j]\nkind = "recovery"\n'


@pytest.mark.parametrize("body,needles", [
    # an unknown customer field: audited as "condition was false" at run time before
    ('entry = "product.viewed"\nwhen = "customer.stag == \'loyal\'"\n',
     ["journeys.j.when: customer.stag is not a field (did you mean customer.stage?)"]),
    ('entry = "product.viewed"\nif = "event.prop.price > 5.0"\n',
     ["journeys.j.if: event.prop is not a field (did you mean event.props?)"]),
    ('entry = "product.viewed"\nif = "customer[\'order\'] > 1"\n',
     ["journeys.j.if: customer.order is not a field (did you mean customer.orders?)"]),
    # a typo inside a template: a customer-facing reason read "viewed ? twice within "
    ('entry = "product.viewed"\ncount = 2\nwithin = "1d"\nreason = "viewed {entri.props.product_id} twice within '
     '{witin}"\n',
     ["journeys.j.reason (position 8): unknown name 'entri' (did you mean 'entry'?)",
      "journeys.j.reason (position 46): unknown name 'witin' (did you mean 'within'?)"]),
    ('entry = "product.viewed"\nreason = "viewed {entry.props.product_id} within {within}"\n',
     ["journeys.j.reason (position 40): {within} shows nothing here: the journey sets no within"]),
    ('entry = "product.viewed"\nwhen = "then.type == \'x\'"\n',
     ["journeys.j.when: names then, which only a sequence journey (then/within) sets"]),
    ('entry = "product.viewed"\nif = "entry.props.price > 5.0"\n',
     ["journeys.j.if: names entry, which is not set here; here an expression may name event, customer"]),
    # event types: a typo, a Segment event name, in entry, exit and a goal
    ('entry = "prodcut.viewed"\n',
     ["journeys.j.entry: 'prodcut.viewed' is not a known event type (did you mean 'product.viewed'?)"]),
    ('entry = "Order Completed"\n',
     ["journeys.j.entry: 'Order Completed' is the Segment event name of the event type 'order.completed'"]),
    ('entry = "product.viewed"\nwait = "2h"\nexit = ["cart.product_added", "order.complete"]\n',
     ["journeys.j.exit: 'order.complete' is not a known event type (did you mean 'order.completed'?)"]),
    ('entry = "product.viewed"\n[journeys.j.experiment]\nsalt = "s"\ngoal = "Order Completed"\nwindow = "3d"\n',
     ["journeys.j.experiment.goal: 'Order Completed' is the Segment event name of the event type "
      "'order.completed': events arrive with their canonical type, so write 'order.completed'"]),
    ('entry = "product.viewed"\n[[journeys.j.steps]]\nname = "a"\nwait_for = "Email Opened"\nwithin = "1d"\n',
     ["journeys.j.steps[0].wait_for: 'Email Opened' is the Segment event name of the event type 'message.opened'"]),
])
def test_a_mistake_that_would_break_a_journey_is_an_error(tmp_path, body, needles):
    p = check(tmp_path, J + body)
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "ok" not in p.stdout and "Traceback" not in p.stderr
    for n in needles:
        assert n in p.stderr, p.stderr


def test_an_experiment_goal_condition_is_checked_too(tmp_path):
    p = check(tmp_path, '[rules.cart_abandoned.experiment]\nsalt = "s"\ngoal = "order.completed"\nwindow = "3d"\n'
                        'goal_if = "customer.net_spnd > 10.0"\n')
    assert p.returncode == 1
    assert ("rules.cart_abandoned.experiment.goal_if: customer.net_spnd is not a field (did you mean "
            "customer.net_spend?)") in p.stderr, p.stderr


def test_what_a_journey_may_name_still_checks_ok(tmp_path):
    """Macros, their bound names, functions, strings that look like names, index syntax, custom props."""
    p = check(tmp_path, J + 'entry = "product.viewed"\n'
                            'if = "has(event.props.tags) && event.props.tags.exists(t, t == \'customer.x\') '
                            '&& event.props[\'my_own_prop\'] != \'\' && event.time > timestamp(\'2020-01-01T00:00:00Z\')"\n'
                            'when = "customer.stage in [\'active\', \'loyal\'] && customer[\'health\'] >= 40.0"\n'
                            'reason = "viewed {entry.props.product_id} ({customer.tier})"\n')
    assert p.returncode == 0 and ": ok (" in p.stdout, p.stderr
    assert "warning" not in p.stderr


def test_a_near_miss_of_a_catalogue_prop_is_a_warning(tmp_path):
    """Props are free (an event may carry any), so a prop near one the catalogue knows is only warned of."""
    p = check(tmp_path, J + 'entry = "product.viewed"\nreason = "viewed {entry.props.prodcut_id}"\n')
    assert p.returncode == 0, p.stderr
    assert ("warning: journeys.j.reason (position 8): entry.props.prodcut_id: product.viewed events carry no such "
            "prop in the catalogue (did you mean entry.props.product_id?)") in p.stderr, p.stderr


def test_an_event_type_of_your_own_is_declared(tmp_path):
    body = J + 'entry = "webinar.attended"\n'
    assert check(tmp_path, body).returncode == 1
    p = check(tmp_path, '[events]\ncustom = ["webinar.attended"]\n' + body)
    assert p.returncode == 0 and "1 journey(s): j" in p.stdout, p.stderr
    p = check(tmp_path, '[events]\ncustom = ["Order Completed"]\n')
    assert p.returncode == 1
    assert "events.custom: 'Order Completed': events named so arrive as the event type 'order.completed'" in p.stderr


@pytest.mark.parametrize("path", ["deploy/journeys.example.toml", "deploy/rules.example.toml",
                                  "journey/examples/journeys.example.toml", "journey/examples/simulate.rules.toml"])
def test_the_example_rule_files_check_clean(path):
    p = subprocess.run([sys.executable, "-m", "journey", "rules", "check", str(ROOT / path)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and ": ok (" in p.stdout, p.stderr
    assert "warning" not in p.stderr, p.stderr


def test_a_clv_field_needs_a_clv_model(tmp_path):
    p = check(tmp_path, J + 'entry = "order.completed"\nwhen = "customer.p_alive < 0.5"\n')
    assert p.returncode == 1
    assert "journeys.j.when: customer.p_alive is set only with a CLV model ([clv] model" in p.stderr, p.stderr
