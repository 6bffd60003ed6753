"""The deterministic core: events and due timers on one event-time timeline.

The engine does no I/O and never reads the wall clock. Its caller (replay,
or the live worker) decides *when* things happen:

* ``apply(ev)`` applies one event at its event time;
* ``fire_due(t)`` fires every timer due at or before ``t``, in (due, customer)
  order.

To honour domain.md section 4, a caller fires the timers due strictly before
an event's time, then applies the event (so at equal times the event comes
first), and fires timers up to the watermark when no event earlier than it
can arrive any more. ``timeline.Timeline`` does this for out-of-order input;
replay feeds sorted input directly.

Outputs go to ``sink`` (``trigger``, ``audit``, ``transition`` methods taking
dicts). Counters for summaries and metrics live in ``stats``.
"""

from __future__ import annotations

import heapq
from collections import Counter
from operator import itemgetter

from . import experiments, health, policy, privacy, sendtime
from .catalog import TOUCH_KINDS
from .clv import StreamModel, add_order
from .rules import REGISTRY
from .state import RECENT_ORDERS, RECENT_TOUCHES, CustomerState, id_hash
from .timeutil import format_time
from .triggers import audit_record, cloudevent, forget_ids, transition_record, trigger_id

DEFERRED = "_deferred"
STAGE = "_stage"
ARBITRATION = "_arb"     # a customer's open arbitration window: [close, [pending triggers]]
_PRIORITY = {"urgent": 0, "high": 1, "normal": 2, "low": 3}
# what became of an occasion handed to the contact policy (Engine.fire)
SENT, HELD_OUT, POSTPONED, HELD = "sent", "held_out", "postponed", "held"
SEND_WITHIN = 86_400_000   # send_within's default (24h)
# what Stats.instances and Stats.steps count of a multi-step journey (the metrics' outcome label)
INSTANCE_OUTCOMES = ("entered", "finished", "exited", "step_limit", "dropped")   # dropped: past 20 open
STEP_OUTCOMES = ("reached", "exited")


class Stats:
    """Counters of what the engine did (no customer data)."""

    def __init__(self):
        self.events = Counter()          # applied events by canonical type ("other" for unknown)
        self.touch = Counter()           # applied events by touch point
        self.duplicates = 0
        self.after_erasure = 0           # events of erased ids dropped (journey_events_erased_total)
        self.erasures = 0                # customers (or visitors) erased
        self.triggers = Counter()        # by rule
        self.suppressed = Counter()      # by (rule, reason)
        self.deferred = Counter()        # by rule
        self.transitions = Counter()     # by "from->to"
        self.timer_errors = 0            # timers whose rule failed (dropped, reported)
        self.condition_errors = Counter()  # journey -> CEL conditions or templates that failed (as false)
        self.outcomes: dict[tuple, list] = {}  # (rule, arm, stage) -> [exposures, conversions, value cents] closed
        self.exposures_untracked = 0     # exposures past the per-customer cap of open ones (not measured)
        self.instances = Counter()       # multi-step journeys: (journey, entered|exited|finished|step_limit|dropped)
        self.steps = Counter()           # multi-step journeys: (journey, step, reached|exited)

    def merge(self, other: Stats) -> None:
        """Add another engine's counters to these (the live worker sums its partitions)."""
        self.events.update(other.events)
        self.touch.update(other.touch)
        self.duplicates += other.duplicates
        self.after_erasure += other.after_erasure
        self.erasures += other.erasures
        self.triggers.update(other.triggers)
        self.suppressed.update(other.suppressed)
        self.deferred.update(other.deferred)
        self.transitions.update(other.transitions)
        self.timer_errors += other.timer_errors
        self.condition_errors.update(other.condition_errors)
        for k, v in other.outcomes.items():
            row = self.outcomes.get(k)
            if row is None:
                self.outcomes[k] = list(v)
            else:
                for i in range(3):
                    row[i] += v[i]
        self.exposures_untracked += other.exposures_untracked
        self.instances.update(other.instances)
        self.steps.update(other.steps)

    def suppressed_by_reason(self) -> Counter:
        c = Counter()
        for (_rule, reason), n in self.suppressed.items():
            c[reason] += n
        return c

    def as_dict(self) -> dict:
        return {
            "events": sum(self.events.values()),
            "events_by_type": dict(sorted(self.events.items())),
            "duplicates": self.duplicates,
            "after_erasure": self.after_erasure,
            "erasures": self.erasures,
            "triggers_by_rule": dict(sorted(self.triggers.items())),
            "suppressed_by_reason": dict(sorted(self.suppressed_by_reason().items())),
            "deferred_by_rule": dict(sorted(self.deferred.items())),
            "transitions": dict(sorted(self.transitions.items())),
            "timer_errors": self.timer_errors,
            "condition_errors": dict(sorted(self.condition_errors.items())),
            "outcomes": sum(v[0] for v in self.outcomes.values()),
            **self.journey_counts(),
        }

    def journey_counts(self) -> dict:
        """Multi-step journeys: ``instances`` {journey: {entered, exited, finished, step_limit: n}} and
        ``steps`` {journey: {step: {reached, exited: n}}}; empty without them."""
        out: dict = {}
        if self.instances:
            inst: dict = {}
            for (j, what), n in sorted(self.instances.items()):
                inst.setdefault(j, {})[what] = n
            out["instances"] = inst
        if self.steps:
            steps: dict = {}
            for (j, step, what), n in sorted(self.steps.items()):
                steps.setdefault(j, {}).setdefault(step, {})[what] = n
            out["steps"] = steps
        return out


class ListSink:
    """Collects outputs in lists (tests, backtest)."""

    def __init__(self):
        self.triggers, self.audits, self.transitions, self.outcomes = [], [], [], []
        self.trigger, self.audit, self.transition = self.triggers.append, self.audits.append, self.transitions.append
        self.outcome = self.outcomes.append


class Engine:
    def __init__(self, config, sink=None, states: dict | None = None):
        self.cfg = config
        self.sink = sink if sink is not None else ListSink()
        self.states: dict[str, CustomerState] = states if states is not None else {}
        self.aliases: dict[str, str] = {}   # anonymous id -> customer id
        self.heap: list[tuple[int, str]] = []
        self.stats = Stats()
        self.by_type: dict[str, list] = {}
        self.rules = {}
        for name, rule in REGISTRY.items():
            p = config.rules[name]
            if not p.enabled:
                continue
            self.rules[name] = (rule, p)
            for t in rule.events:
                self.by_type.setdefault(t, []).append((rule, p))
        for name, journey in getattr(config, "journeys", {}).items():  # after the built-in rules
            self.rules[name] = (journey, journey.p)
            for t in journey.events:
                self.by_type.setdefault(t, []).append((journey, journey.p))
        self._hl = config.health.half_life
        # experiments: by rule, and the rules whose goal each event type is
        self.experiments = {n: e for n, e in getattr(config, "experiments", {}).items() if n in self.rules}
        self.goal_types: dict[str, list] = {}
        for n, e in self.experiments.items():
            for t in e.goal:
                self.goal_types.setdefault(t, []).append(n)
        self._global = (config.policy.global_holdout, config.policy.global_salt)
        self._window = config.policy.arbitration_window          # 0: arbitration off
        self._rank = {name: i for i, name in enumerate(config.policy.rank)}
        self._outcome = getattr(self.sink, "outcome", None)  # sinks that take no outcomes skip them
        self._dedup_window = config.engine.dedup_window
        self._dedup_max = config.engine.dedup_max_ids
        self.key = None         # the customer being processed
        self.new_order = False  # the current event is a new distinct completed order
        self.timers_changed = False
        self.clv = StreamModel(config.clv_model, config) if config.clv_model is not None else None
        self.want_transitions = getattr(self.sink, "wants_transitions", True)
        # the live worker sets a set here to learn which customers' state changed (to persist
        # them); replay leaves it None
        self.dirty: set | None = None
        # live only: ``owns(key)`` tells whether a state key lives on this engine's partition,
        # and ``handoffs`` collects what must go to another partition (see ``hand_off``)
        self.owns = None
        self.handoffs: list | None = None
        # erasure (domain.md section 9): the digests of the erased keys (``privacy.erasure_hash``),
        # looked up only for a key without state (an erased key has none), so the hot path never
        # hashes; the live worker sets ``erased_new`` to a list to learn the digests to persist
        self.salt = config.privacy.erasure_salt
        self.erased: set[str] = set()
        self.erased_new: list | None = None
        # on_timer_error(due, exception): a timer whose rule failed (the shells count and log
        # it; no customer id is passed on); without it, the error propagates
        self.on_timer_error = None
        # on_step(journey, instance occasion, step, what, time): a multi-step instance reached or exited a
        # step, its awaited event arrived or timed out, its if was true or false, or it ended after the step
        # (what: reached, exited, arrived, timed_out, if_true, if_false, ended; journey explain shows the
        # path; the customer is self.key)
        self.on_step = None

    # -- the timeline --------------------------------------------------------------
    def fire_due(self, upto: int) -> None:
        """Fire all timers due at or before ``upto``."""
        heap = self.heap
        if not heap or heap[0][0] > upto:
            return
        while heap and heap[0][0] <= upto:
            due, key = heapq.heappop(heap)
            st = self.states.get(key)
            if st is None or st.heap_due != due:
                continue  # stale entry: the customer's timers changed since it was pushed
            st.heap_due = None
            self.key = key
            if self.dirty is not None:
                self.dirty.add(key)
            try:
                self._run_timers(st, due)
            except Exception as e:
                # a timer that fails is dropped (it would fail again), counted, and reported;
                # the customer's other timers and everyone else's go on
                self.stats.timer_errors += 1
                if self.on_timer_error is None:
                    raise
                self.on_timer_error(due, e)
            self._reschedule(key, st)

    def timers_pending(self) -> int:
        """Customers with an event-time timer waiting (each counts once)."""
        return sum(1 for st in self.states.values() if st.heap_due is not None)

    def next_due(self) -> int | None:
        """The earliest pending timer (skipping stale heap entries)."""
        heap = self.heap
        while heap:
            due, key = heap[0]
            st = self.states.get(key)
            if st is not None and st.heap_due == due:
                return due
            heapq.heappop(heap)
        return None

    def rebuild_timers(self) -> None:
        """Rebuild the timer heap from state (after loading state from a store)."""
        self.heap.clear()  # in place: the timeline holds on to this list
        for key, st in self.states.items():
            st.heap_due = None
            self._reschedule(key, st)

    def _reschedule(self, key: str, st: CustomerState) -> None:
        nd = st.next_due()
        if nd is None:
            st.heap_due = None
        elif nd != st.heap_due:
            st.heap_due = nd
            heapq.heappush(self.heap, (nd, key))

    def _run_timers(self, st: CustomerState, upto: int) -> None:
        timers = st.timers
        while True:
            # the earliest timer due by upto, ties by key (a timer may set or cancel others: looked up each time)
            due, tk = None, None
            for k, v in timers.items():
                d = v[0]
                if d <= upto and (due is None or d < due or (d == due and k < tk)):
                    due, tk = d, k
            if due is None:
                return
            data = timers.pop(tk)[1]
            name, _, tkey = tk.partition("|")
            if name == DEFERRED:
                self._deliver_deferred(st, data, due)
            elif name == ARBITRATION:
                self._close_window(st, data, due)
            elif name == STAGE:
                self._update_stage(st, due)
                self._schedule_stage(st, due)
            elif name == experiments.OUTCOME:
                self._close_exposure(tkey, data, due)
            else:
                entry = self.rules.get(name)
                if entry is not None:  # a rule disabled since the timer was set: drop it
                    entry[0].on_timer(self, st, tkey, data, due, entry[1])

    # -- events ----------------------------------------------------------------------
    def apply(self, ev) -> None:
        """Apply one validated event (``intake.Event``) at its event time."""
        cid = ev.cid
        states = self.states
        if cid is None:
            key = self.aliases.get(ev.anon)
            if key is None:
                key = "anon:" + ev.anon
            elif self.owns is not None and not self.owns(key):
                # live: the visitor was handed off to a customer on another partition
                self.handoffs.append(("forward", key, ev))
                return
            st = states.get(key)
            if st is None and self.erased and self.is_erased(key):
                self.stats.after_erasure += 1
                return
        else:
            key = cid
            st = states.get(key)
            if st is None and self.erased and self.is_erased(key):
                self.stats.after_erasure += 1
                return
            if ev.anon is not None and self.aliases.get(ev.anon) != cid:
                self._link(ev.anon, cid)
                st = states.get(key)
        if self.dirty is not None:
            self.dirty.add(key)
        if st is None:
            st = states[key] = CustomerState()
            st.anon = key.startswith("anon:") and cid is None
        if st.erased is not None:
            # a marker of an erased customer written by an older version: the digest is kept instead
            self._forget(key, st)
            self.stats.after_erasure += 1
            return
        if self._duplicate(st, ev):
            self.stats.duplicates += 1
            return
        ts = ev.ts
        if st.last_ts is None or ts > st.last_ts:
            st.last_ts = ts
        stats = self.stats
        stats.events[ev.type if ev.known else "other"] += 1
        stats.touch[ev.touch] += 1
        if ev.type == "customer.erased":
            self._erase(key, st, ev)
            return
        self.key = key
        self.timers_changed = False
        self._update(st, ev)
        if self.new_order:
            self._update_stage(st, ts)  # only orders move the stage forward; timers move it back
        if ev.type in self.goal_types and st.timers and (self.new_order or ev.type != "order.completed"):
            self._convert(st, ev)  # before the rules: an exposure made by this event cannot count it
        for rule, p in self.by_type.get(ev.type, ()):
            rule.on_event(self, st, ev, p)
        if self.timers_changed:
            self._reschedule(key, st)

    def _duplicate(self, st: CustomerState, ev) -> bool:
        h = id_hash(ev.id)
        seen = st.seen
        if h in seen:
            return True
        if st.last_ts is not None and ev.ts < st.last_ts - self._dedup_window:
            # older than the ids remembered: it cannot be told from a redelivery (after a
            # restart, Kafka redelivers from the last committed offset), so it counts as one
            return True
        floor = st.seen_floor
        if floor is not None and ev.ts < floor:
            return True  # the same, for a customer so busy that the memory forgot ids of the window
        seen[h] = ev.ts
        if st.last_ts is not None and ev.ts < st.last_ts:
            # an event older than the customer's newest (late, or a visitor's event forwarded
            # live): keep the memory oldest first, as in-order input leaves it
            st.seen = seen = dict(sorted(seen.items(), key=itemgetter(1)))
        if len(seen) > self._dedup_max or next(iter(seen.values())) < ev.ts - self._dedup_window:
            # forget ids older than the window, and the oldest beyond the cap (down to 3/4 of
            # it, so the pruning is amortized over several events)
            horizon = max(ev.ts, st.last_ts or ev.ts) - self._dedup_window
            if len(seen) <= self._dedup_max:
                # the usual case: a few of the oldest ids left the window; the memory is
                # oldest first, so they are a prefix (deleted in place, no copy)
                old = []
                for k, v in seen.items():
                    if v >= horizon:
                        break
                    old.append(k)
                for k in old:
                    del seen[k]
                if st.seen_floor is not None and st.seen_floor < horizon:
                    st.seen_floor = None
                return False
            keep = [(k, v) for k, v in seen.items() if v >= horizon]
            if len(keep) > self._dedup_max:
                keep = keep[-(self._dedup_max * 3 // 4 or 1):]
                # ids of the window forgotten: anything older than what is remembered now counts
                # as a redelivery (as beyond the window), so redelivery stays harmless at any rate
                st.seen_floor = keep[0][1]
            elif st.seen_floor is not None and st.seen_floor < horizon:
                st.seen_floor = None  # the window rule covers it now
            st.seen = dict(keep)
        return False

    def _link(self, anon: str, cid: str) -> None:
        """Attribute an anonymous visitor to a customer (identify, alias, or an event with both ids).

        Live, the visitor's state may live on another partition: then it is asked for there
        (a ``link`` hand-off) and arrives later through ``absorb_visitor``. An erased visitor
        is not linked (its id is not kept anywhere again)."""
        vkey = "anon:" + anon
        if self.erased and vkey not in self.states and self.is_erased(vkey):
            return
        self.aliases[anon] = cid
        if self.owns is not None and not self.owns(vkey):
            self.handoffs.append(("link", vkey, anon, cid))
            old = None
        else:
            old = self.states.pop(vkey, None)
        if self.dirty is not None:
            self.dirty.add(cid)
            if old is not None:
                self.dirty.add(vkey)
        st = self.states.get(cid)
        if st is None:
            st = self.states[cid] = CustomerState()
        if st.erased is not None:
            return
        if anon not in st.anons:
            st.anons.append(anon)
        if old is not None:
            st.absorb(old)
            self._reschedule(cid, st)

    # -- live: a visitor and its customer on different partitions --------------------
    def hand_off(self, anon: str, cid: str) -> CustomerState | None:
        """On the visitor's partition: the visitor is now ``cid`` (a ``link`` hand-off). Its
        state is replaced by a forwarding stub (so later events of the visitor go to the
        customer, also after a restart) and returned, to be absorbed where ``cid`` lives;
        None when there is nothing to hand over (no state, or already handed off)."""
        vkey = "anon:" + anon
        old = self.states.get(vkey)
        if old is None and self.erased and self.is_erased(vkey):
            return None  # an erased visitor: nothing is kept of it, not even a stub
        self.aliases[anon] = cid
        if old is not None and old.fwd == cid:
            return None  # a hand-off read again (redelivery)
        stub = CustomerState()
        stub.anon = True
        stub.fwd = cid
        self.states[vkey] = stub
        if self.dirty is not None:
            self.dirty.add(vkey)
        if old is None or old.fwd is not None or old.erased is not None:
            return None
        return old

    def absorb_visitor(self, cid: str, anon: str, old: CustomerState) -> None:
        """On the customer's partition: merge a visitor's state handed over by ``hand_off``
        (once per visitor, however often the hand-off is delivered)."""
        st = self.states.get(cid)
        if st is None:
            if self.erased and self.is_erased(cid):
                return  # erased meanwhile: the visitor's state goes with it
            st = self.states[cid] = CustomerState()
        if st.erased is not None or anon in st.merged:
            return
        st.merged.append(anon)
        if anon not in st.anons:
            st.anons.append(anon)
        self.aliases[anon] = cid
        st.absorb(old)
        if self.dirty is not None:
            self.dirty.add(cid)
        self._reschedule(cid, st)

    def is_erased(self, key: str) -> bool:
        """Was this state key erased? (Hashes: call it only for a key without state.)"""
        return privacy.erasure_hash(self.salt, key) in self.erased

    def mark_erased(self, key: str) -> None:
        h = privacy.erasure_hash(self.salt, key)
        if h not in self.erased:
            self.erased.add(h)
            if self.erased_new is not None:
                self.erased_new.append(h)

    def _forget(self, key: str, st: CustomerState) -> None:
        """Delete a state and keep only the digest of its key (a tombstone, live)."""
        self.states.pop(key, None)
        st.heap_due = None  # its heap entries are stale now
        if self.dirty is not None:
            self.dirty.add(key)
        self.mark_erased(key)

    def _erase(self, key: str, st: CustomerState, ev) -> None:
        """``customer.erased``: delete the customer's state and their visitors' (domain.md
        section 9). Deferred triggers are audited ``erased``; open exposures go with the
        state; one ``journey.privacy.erased`` record tells the systems downstream. What is
        kept is the digest of each key, so later events of the id are dropped."""
        self.key = key
        ts = ev.ts
        for tk, (_due, data) in sorted(st.timers.items()):
            if tk.startswith(DEFERRED + "|"):
                self._audit(st, data, "erased", ts, "customer erased before delivery")
            elif tk.startswith(ARBITRATION + "|"):
                for pd in data:
                    self._audit(st, pd, "erased", ts, "customer erased before delivery")
        visitors = sorted(set(st.anons) | set(st.merged))
        for anon in visitors:
            vkey = "anon:" + anon
            self.aliases.pop(anon, None)
            if self.owns is not None and not self.owns(vkey):
                # live: the visitor's own key (a forwarding stub) is on another partition
                self.handoffs.append(("erase", vkey, privacy.erasure_hash(self.salt, vkey)))
                self.mark_erased(vkey)
                continue
            old = self.states.get(vkey)
            if old is not None:
                old.heap_due = None
            self._forget(vkey, old if old is not None else CustomerState())
        if key.startswith("anon:"):
            self.aliases.pop(key[len("anon:"):], None)
        self._forget(key, st)
        self.stats.erasures += 1
        self.stats.triggers[privacy.RULE] += 1  # a record on the triggers output, as every trigger
        self.sink.trigger(privacy_record(key, ev, visitors))
        forget_ids()  # the memo of trigger ids holds the erased ids too

    def erase_visitor(self, vkey: str) -> None:
        """Live, on a visitor's partition: its customer was erased elsewhere (an ``erase``
        hand-off); its forwarding stub goes, its digest stays."""
        self.aliases.pop(vkey[len("anon:"):], None)
        old = self.states.get(vkey)
        if old is not None:
            old.heap_due = None
        self._forget(vkey, old if old is not None else CustomerState())

    def _update(self, st: CustomerState, ev) -> None:
        """Fold the event into the customer's state (before the rules see it)."""
        t, ts, f = ev.type, ev.ts, ev.f
        rec = st.touch.get(ev.touch)
        if rec is None:
            rec = st.touch[ev.touch] = [ts, 0, 0, []]
        elif ts > rec[0]:
            rec[0] = ts
        self.new_order = False
        if t == "order.completed":
            oid = f.get("order_id") or ev.id
            ro = st.recent_orders
            if any(r[0] == oid for r in ro):
                return  # the same order again under another event id: counted once, health included
        w = health.weight_of(ev)
        if w:
            self.outcome(st, ev.touch, t, ts, w)
        if t == "order.completed":
            self.new_order = True
            cents = f.get("revenue", 0)
            st.orders += 1
            if st.first_order is None or ts < st.first_order:
                st.first_order = ts
            if st.last_order is None or ts > st.last_order:
                st.last_order = ts
            st.spend += cents
            ro.append([oid, ts, cents])
            if len(ro) > RECENT_ORDERS:
                del ro[0]
            st.clv = add_order(st.clv, ts, cents)
            self._schedule_stage(st, ts)
        elif t == "order.refunded":
            oid = f.get("order_id")
            cents = f.get("revenue")
            if cents is None:
                cents = next((r[2] for r in st.recent_orders if r[0] == oid), 0)
            st.spend -= abs(cents)
            st.refunded += abs(cents)
        elif t == "order.cancelled":
            oid = f.get("order_id")
            for r in st.recent_orders:
                if r[0] == oid and r[2]:
                    st.spend -= r[2]
                    r[2] = 0
        elif t in ("ticket.opened", "ticket.reopened"):
            tid = f.get("ticket_id") or ev.id
            prev = st.tickets.get(tid)
            prio = f.get("priority") or (prev[1] if prev else "normal")
            st.tickets[tid] = [ts, prio, 1]
        elif t == "ticket.resolved":
            rec = st.tickets.get(f.get("ticket_id") or "")
            if rec is not None:
                rec[2] = 0  # closed; kept (until it ages out) so a reopening keeps its priority
        elif t == "profile.updated" and ev.traits:
            tr = ev.traits
            if "timezone" in tr:
                st.tz = tr["timezone"]
            if "birthday" in tr:
                st.birthday = tr["birthday"]
            if "locale" in tr:
                st.locale = tr["locale"]
            if "consent" in tr:
                st.consent = {**(st.consent or {}), **tr["consent"]}
        elif t == "message.unsubscribed":
            # refuses consent for its channel (without one: marketing) from now on, as a consent trait would
            channel = (f.get("channel") or "").strip().lower() or "marketing"
            st.consent = {**(st.consent or {}), channel: False}
        elif t == "message.complained":
            st.consent = {**(st.consent or {}), "marketing": False}
        if t in experiments.REACHED and st.timers:
            # the messaging system got this exposure's message to the customer: the outcome says so
            # (a report on exposures none of which reached anyone measures nothing)
            tid = f.get("trigger_id")
            tm = st.timers.get(experiments.OUTCOME + "|" + tid) if type(tid) is str else None
            if tm is not None and len(tm[1]) == 7:
                tm[1].append(1)
        if t in sendtime.WEIGHT:   # opened, clicked: the customer's engagement rhythm (send time)
            st.eh = sendtime.record(st.eh, ts, sendtime.WEIGHT[t], sendtime.bin_of(ts, policy.customer_zone(st, self.cfg)),
                                    self.cfg.send_time.half_life)
        if st.tickets and len(st.tickets) > 1:
            # tickets no longer gating (older than the max age) are forgotten
            max_age = self.cfg.policy.open_ticket_max_age
            st.tickets = {k: v for k, v in st.tickets.items() if ts - v[0] < max_age}

    def outcome(self, st: CustomerState, kind: str, what: str, ts: int, w: float | None = None) -> None:
        """Record a good (w > 0) or bad (w < 0) touch point outcome and its health weight
        (by default the weight of ``what`` in ``health.WEIGHTS``)."""
        if w is None:
            w = health.WEIGHTS[what]
        rec = st.touch.get(kind)
        if rec is None:
            rec = st.touch[kind] = [ts, 0, 0, []]
        rec[1 if w > 0 else 2] += 1
        recent = rec[3]
        recent.append([ts, what, 1 if w > 0 else -1])
        if len(recent) > RECENT_TOUCHES:
            del recent[0]
        st.hdev, st.hts = health.add(st.hdev, st.hts, w, ts, self._hl)

    # -- stages ----------------------------------------------------------------------
    def _stage_of(self, st: CustomerState, now: int) -> str:
        if self.clv is not None:
            return self.clv.stage(self, st, now)
        return health.stage(st.orders, st.last_order, now, self.cfg.stages)

    def _update_stage(self, st: CustomerState, now: int) -> None:
        new = self._stage_of(st, now)
        if new != st.stage:
            old, st.stage = st.stage, new
            self.stats.transitions[f"{old}->{new}"] += 1
            if not st.anon and self.want_transitions:
                self.sink.transition(transition_record(self.key, old, new, now, _stage_reason(st, new)))

    def _schedule_stage(self, st: CustomerState, now: int) -> None:
        """A timer at the next moment the stage would move back if nothing is bought
        (no order for at_risk_after / lapsed_after, or P(alive) crossing its thresholds)."""
        if st.last_order is None:
            return
        if self.clv is not None:
            times = self.clv.stage_times(st)
        else:
            times = (st.last_order + self.cfg.stages.at_risk_after, st.last_order + self.cfg.stages.lapsed_after)
        due = min((t for t in times if t > now), default=None)
        if due is None:
            self.cancel_timer(st, STAGE, "risk")
        else:
            self.set_timer(st, STAGE, "risk", due, None)

    # -- the API rules use -------------------------------------------------------------
    def set_timer(self, st: CustomerState, rule, key: str, due: int, data) -> None:
        name = rule if isinstance(rule, str) else rule.name
        st.timers[f"{name}|{key}"] = [due, data]
        self.timers_changed = True

    def cancel_timer(self, st: CustomerState, rule, key: str):
        """Cancel a timer; returns its [due, data] or None."""
        name = rule if isinstance(rule, str) else rule.name
        self.timers_changed = True
        return st.timers.pop(f"{name}|{key}", None)

    def timer(self, st: CustomerState, rule, key: str):
        name = rule if isinstance(rule, str) else rule.name
        return st.timers.get(f"{name}|{key}")

    def fire(self, st: CustomerState, rule, occasion, time: int, reason: str, evidence: list,
             extra: dict | None = None, offer: dict | None = None, step: dict | None = None) -> str:
        """A rule's occasion is due at ``time``: apply the contact policy and emit. ``offer``
        replaces the configured one (a journey's rendered templates). ``step``: a multi-step
        journey's send (``st`` step name, ``ch``/``pr`` channel and priority, ``j`` instance key,
        ``nx`` set once the instance was exposed to its experiment). Returns the verdict:
        SENT, HELD_OUT (an experiment's holdout), POSTPONED (deferred) or HELD (held back for good)."""
        pending = {"r": rule.name, "o": str(occasion), "t": time, "why": reason, "ev": list(evidence)}
        if extra:
            pending["x"] = extra
        if offer is not None:
            pending["of"] = offer
        if step is not None:
            pending.update(step)
        return self._decide(st, pending, time)

    def audit_occasion(self, st: CustomerState, rule, occasion, time: int, reason: str, detail: str,
                       evidence: list, why: str | None = None, step: str | None = None) -> None:
        """An occasion that does not fire, for a reason of the rule's own (a journey's
        ``condition_not_met``, ``instance_limit``, ``exited``): audited like a suppression.
        ``step``: the multi-step journey's step it concerns."""
        pd = {"r": rule.name, "o": str(occasion), "t": time, "why": why or rule.name, "ev": list(evidence)}
        if step is not None:
            pd["st"] = step
        self._audit(st, pd, reason, time, detail)

    def _decide(self, st: CustomerState, pd: dict, now: int, arbitrated: bool = False) -> str:
        rule, p = self.rules[pd["r"]]
        if self._window and not arbitrated and not rule.transactional and not st.anon:
            return self._arbitrate(st, pd, now)
        exp = self.experiments.get(rule.name) if self.experiments else None
        arm = exp.assign(self.key) if exp is not None and not st.anon else None
        channel = arm.channel if arm is not None and arm.channel is not None else pd.get("ch")
        within = None
        if not pd.get("sd"):  # send time: chosen once, then the trigger goes when it comes
            mode = arm.send_time if arm is not None and arm.send_time is not None else \
                pd.get("stm") or getattr(p, "send_time", "now")
            if mode == "optimal":
                within = pd.get("sw") or getattr(p, "send_within", SEND_WITHIN)
        d = policy.decide(st, rule, p, now, self.cfg, channel, within)
        if d.verdict == policy.SEND:
            # the holdouts are decided here: both groups are customers who would have been contacted
            share, salt = self._global
            # a multi-step instance is exposed once, at its first send the policy lets out
            expose = not pd.get("nx")
            if share and not rule.transactional and experiments.unit(salt, experiments.GLOBAL, self.key) < share:
                self._audit(st, pd, "global_holdout", now, f"in the global holdout ({share:.0%} of customers)")
                return HELD_OUT
            if exp is None:
                self._emit(st, rule, p, pd, now)
                return SENT
            if arm is None:
                tag = exp.tag(None)
                self._audit(st, pd, experiments.HOLDOUT, now,
                            f"held out by experiment {exp.name} ({exp.holdout:.0%} of customers)", experiment=tag)
                if expose:
                    self._expose(st, exp, experiments.HOLDOUT, pd, now)
                return HELD_OUT
            self._emit(st, rule, p, pd, now, exp, arm)
            if expose:
                self._expose(st, exp, arm.name, pd, now)
            return SENT
        if d.verdict == policy.DEFER:
            if d.reason == "send_time":
                pd["sd"] = 1
            self.stats.deferred[rule.name] += 1
            self._audit(st, pd, d.reason, now, d.detail, d.until)
            self.set_timer(st, DEFERRED, f"{rule.name}|{pd['o']}", d.until, pd)
            return POSTPONED
        self._audit(st, pd, d.reason, now, d.detail)
        return HELD

    # -- arbitration (section 9) -------------------------------------------------------------
    def _arbitrate(self, st: CustomerState, pd: dict, now: int) -> str:
        """A marketing trigger comes due with arbitration on: it waits in the customer's window (opened
        now if none is), decided with the others when the window closes."""
        tk = ARBITRATION + "|w"
        win = st.timers.get(tk)
        if win is not None and now >= win[0]:  # the window closes at this very instant: decide it first
            st.timers.pop(tk)
            self._close_window(st, win[1], win[0])
            win = None
        if win is None:
            st.timers[tk] = [now + self._window, [pd]]
        else:
            win[1].append(pd)
        self.timers_changed = True
        return POSTPONED

    def _rank_of(self, pd: dict) -> tuple:
        rule, p = self.rules[pd["r"]]
        prio = pd.get("pr") or p.priority
        order = self._rank.get(rule.name)
        return (_PRIORITY.get(prio, 2), 0 if order is not None else 1, order if order is not None else 0, rule.name,
                pd["t"], trigger_id(self.key, rule.name, pd["o"]))

    def _close_window(self, st: CustomerState, pending: list, close: int) -> None:
        """A window closes: its triggers by priority, rank, due time and id; they go out while the caps
        allow (a held-out winner counts as a send would), the rest are audited ``outranked``."""
        winner, held_out = None, 0
        for pd in sorted((pd for pd in pending if pd.get("r") in self.rules), key=self._rank_of):
            rule, p = self.rules[pd["r"]]
            why = rule.still_valid(self, st, pd, close, p)   # checked again when it goes, as a deferral is
            if why:
                self._audit(st, pd, why, close, "no longer applies at delivery time")
                verdict = HELD
            elif winner is not None and policy.cap(st, close, self.cfg, held_out) is not None:
                self._audit(st, pd, "outranked", close, f"outranked by {winner} (arbitration window)")
                verdict = HELD
            else:
                verdict = self._decide(st, pd, close, arbitrated=True)
                if verdict in (SENT, HELD_OUT):
                    winner = winner or trigger_id(self.key, rule.name, pd["o"])
                    held_out += verdict == HELD_OUT
            if "j" in pd:  # a multi-step journey's send: its instance goes on
                rule.resolved(self, st, pd, verdict, close)

    def _deliver_deferred(self, st: CustomerState, pd: dict, due: int) -> None:
        entry = self.rules.get(pd["r"])
        if entry is None:
            return
        rule, p = entry
        why = rule.still_valid(self, st, pd, due, p)
        if why:
            self._audit(st, pd, why, due, "no longer applies at delivery time")
            return
        verdict = self._decide(st, pd, due)
        if "j" in pd:  # a multi-step journey's send: its instance goes on once it is out (or held back)
            rule.resolved(self, st, pd, verdict, due)

    def _audit(self, st, pd: dict, reason: str, now: int, detail: str, until: int | None = None,
               experiment: dict | None = None) -> None:
        entry = self.rules.get(pd["r"])
        rule = entry[0] if entry is not None else REGISTRY[pd["r"]]
        if until is None:
            self.stats.suppressed[(rule.name, reason)] += 1
        rec = audit_record(trigger_id(self.key, rule.name, pd["o"]), self.key, rule.name, rule.kind,
                           reason, now, f"{pd['why']}; {detail}", pd["o"], pd["ev"], until)
        if experiment is not None:
            rec["experiment"] = experiment
            rec["stage"] = st.stage  # the arm's stage at the decision, as the outcome will have it
        if "st" in pd:
            rec["step"] = pd["st"]
        self.sink.audit(rec)

    # -- experiments -----------------------------------------------------------------------
    def _expose(self, st: CustomerState, exp, arm: str, pd: dict, now: int) -> None:
        """Keep an exposure (sent or held out) open until now + window."""
        if sum(1 for k in st.timers if k.startswith(experiments.OUTCOME)) >= experiments.MAX_OPEN:
            self.stats.exposures_untracked += 1
            return
        tid = trigger_id(self.key, exp.rule, pd["o"])
        h = health.score(st.hdev, st.hts, now, self._hl)
        # [rule, arm, stage, health, exposed_at, converted_at, value cents], and a last 1 once a
        # message.delivered (opened, clicked, complained) names its trigger id
        self.set_timer(st, experiments.OUTCOME, tid, now + exp.window, [exp.rule, arm, st.stage, h, now, None, 0])

    def _convert(self, st: CustomerState, ev) -> None:
        """A goal event: the first in an open exposure's window converts it."""
        ts = ev.ts
        prefix = experiments.OUTCOME + "|"
        for tk, (due, data) in st.timers.items():
            if not tk.startswith(prefix) or data[5] is not None or not data[4] < ts <= due:
                continue
            exp = self.experiments.get(data[0])
            if exp is None or ev.type not in exp.goal:
                continue
            if exp.goal_if is not None and not self._goal_true(st, exp, ev):
                continue
            data[5] = ts
            data[6] = ev.f.get("revenue", 0) if ev.type == "order.completed" else _cents(ev)

    def _goal_true(self, st: CustomerState, exp, ev) -> bool:
        cond = exp.goal_if
        props = (ev.props if ev.props is not None else ev.f) or {}
        sources = {"event": (ev.type, ev.ts, props)}
        if cond.customer:
            from .journeys import customer_snapshot

            sources["customer"] = customer_snapshot(self, st, ev.ts)
        try:
            return cond.evaluate(sources) is True
        except Exception:  # a missing prop, a type error: false, and counted
            self.stats.condition_errors[exp.rule] += 1
            return False

    def _close_exposure(self, tid: str, data: list, due: int) -> None:
        rule, arm, stage, h, exposed, converted, cents = data[:7]
        row = self.stats.outcomes.get((rule, arm, stage))
        if row is None:
            row = self.stats.outcomes[(rule, arm, stage)] = [0, 0, 0]
        row[0] += 1
        if converted is not None:
            row[1] += 1
            row[2] += cents
        if self._outcome is None or self.key.startswith("anon:"):
            return
        exp = self.experiments.get(rule)
        self._outcome({
            "trigger_id": tid, "customer_id": self.key, "rule": rule,
            "experiment": exp.name if exp is not None else rule, "variant": arm, "stage": stage, "health": h,
            "exposed_at": format_time(exposed), "converted": converted is not None,
            "converted_at": format_time(converted) if converted is not None else None,
            "value": round(cents / 100, 2), "time": format_time(due), "delivered": len(data) > 7,
        })

    def _emit(self, st: CustomerState, rule, p, pd: dict, now: int, exp=None, arm=None) -> None:
        if not rule.transactional:
            policy.record_contact(st, now, self.cfg)
        self.stats.triggers[rule.name] += 1
        data = {
            "customer_id": self.key,
            "rule": rule.name,
            "kind": rule.kind,
            "occasion": pd["o"],
            "reason": pd["why"],
            "evidence": pd["ev"],
            "channel": pd.get("ch") or p.channel,
            "priority": pd.get("pr") or p.priority,
            "offer": pd.get("of", p.offer),
            "relationship": self.relationship(st, now),
        }
        if arm is not None:
            if arm.offer is not None:
                data["offer"] = arm.offer
            if arm.channel is not None:
                data["channel"] = arm.channel
            if arm.priority is not None:
                data["priority"] = arm.priority
            data["experiment"] = exp.tag(arm)
        if "st" in pd:
            data["step"] = pd["st"]
        if pd.get("x"):
            data["details"] = pd["x"]
        if pd["t"] != now:
            data["deferred_from"] = format_time(pd["t"])
        self.sink.trigger(cloudevent(trigger_id(self.key, rule.name, pd["o"]), self.key, rule.name, rule.kind,
                                     now, data))

    def relationship(self, st: CustomerState, now: int) -> dict:
        """The relationship snapshot carried by every trigger."""
        touch = {}
        for kind in TOUCH_KINDS:
            rec = st.touch.get(kind)
            last = rec[3][-1] if rec and rec[3] else None
            touch[kind] = "good" if last and last[2] > 0 else ("bad" if last else None)
        snap = {
            "stage": st.stage,
            "health": health.score(st.hdev, st.hts, now, self._hl),
            "orders": st.orders,
            "net_spend": round(st.spend / 100, 2),
            "first_order": format_time(st.first_order) if st.first_order is not None else None,
            "last_order": format_time(st.last_order) if st.last_order is not None else None,
            "open_tickets": len(policy.open_tickets(st, now, self.cfg.policy.open_ticket_max_age)),
            "touchpoints": touch,
        }
        if self.clv is not None:
            snap.update(self.clv.snapshot(self, st, now))
        return snap

    # -- reporting -------------------------------------------------------------------------
    def not_run(self) -> dict[str, list[int]]:
        """Rules and journeys the customers' state knows of that this configuration does not
        run (removed from the rule file, renamed, or disabled): name -> [customers whose state
        holds something of it, pending items: its timers, deferred or waiting triggers and open
        experiment exposures, which are dropped when due without a trigger or an audit record].
        For the log line of a worker that loaded saved state."""
        run = self.rules
        out: dict[str, list[int]] = {}
        for st in self.states.values():
            names: set = set()
            for tk, (_due, data) in st.timers.items():
                name = tk.partition("|")[0]
                if name == STAGE:
                    continue
                if name == DEFERRED:
                    found = [data.get("r")] if isinstance(data, dict) else []
                elif name == ARBITRATION:
                    found = [pd.get("r") for pd in data if isinstance(pd, dict)] if isinstance(data, list) else []
                elif name == experiments.OUTCOME:
                    found = [data[0]] if isinstance(data, list) and data else []
                else:
                    found = [name]
                for n in found:
                    if isinstance(n, str) and n not in run:
                        names.add(n)
                        out.setdefault(n, [0, 0])[1] += 1
            names.update(n for n in st.occ if n not in run)
            for n in names:
                out.setdefault(n, [0, 0])[0] += 1
        return out

    def rule_kinds(self) -> dict[str, str]:
        """rule -> kind of every record this engine may write to the triggers output (the
        erasure record counts as rule ``erased``, kind ``privacy``)."""
        return {**{name: rule.kind for name, (rule, _p) in self.rules.items()}, privacy.RULE: privacy.KIND}

    def journey_steps(self) -> dict[str, list[str]]:
        """multi-step journey -> its step names in the order written (the label values of the step
        metrics: bounded by the rule file, from 0 before anything happened)."""
        return {name: [s.name for s in rule.steps] for name, (rule, _p) in self.rules.items()
                if getattr(rule, "multi", False)}

    def customers(self) -> int:
        return sum(1 for s in self.states.values() if s.erased is None and not s.anon)


def privacy_record(key: str, ev, visitors: list) -> dict:
    """The ``journey.privacy.erased`` record of an erasure (to ``journey.triggers``): the
    id erased, and its visitor ids, so the systems downstream can delete them too."""
    data = {"customer_id": key, "rule": privacy.RULE, "kind": privacy.KIND, "occasion": ev.id,
            "reason": "customer.erased: the customer's state was deleted", "evidence": [ev.id],
            "visitor_ids": visitors}
    return cloudevent(trigger_id(key, privacy.RULE, ev.id), key, privacy.RULE, privacy.KIND, ev.ts, data)


def _cents(ev) -> int:
    """The revenue of a goal event other than an order (a prop ``revenue``, when kept)."""
    v = (ev.props or {}).get("revenue") if ev.props is not None else None
    if type(v) in (int, float) and abs(v) < 1e12:
        return round(v * 100)
    return 0


def _stage_reason(st: CustomerState, new: str) -> str:
    if new == "prospect":
        return "no order yet"
    if new in ("at_risk", "lapsed"):
        return f"no order since {format_time(st.last_order)}"
    return f"{st.orders} completed order(s)"
