"""Journey instances: the key an event names, whether an entry may start an instance (open
already, ``reenter``), the starts remembered, the open-instance bound, and which open
instances an exit or then event counts for. Instances are timers ``name|key`` in customer
state; starts and counts are in ``occ[name]``."""

from __future__ import annotations

from .conditions import _show

MAX_OPEN = 20        # open instances per customer and journey
MAX_KEYS = 200       # starts remembered per customer and journey (for reenter / enter once)


class Instances:
    """The instance book-keeping a :class:`~journey.core.journeys.shapes.Journey` inherits (it sets
    ``name``, ``p`` and ``reenter``)."""

    def _key(self, ev) -> str | None:
        """The instance key of an event (None: it does not carry the key prop)."""
        if not self.p.key:
            return ""
        props = ev.props if ev.props is not None else ev.f
        v = (props or {}).get(self.p.key)
        if v is None or isinstance(v, (dict, list)):
            return None
        return _show(v)

    def _book(self, st) -> dict:
        b = st.occ.get(self.name)
        if b is None:
            b = st.occ[self.name] = {"s": {}}
        return b

    def _may_start(self, st, key: str, ts: int) -> bool:
        if st.timers.get(f"{self.name}|{key}") is not None:
            return False  # an instance of this key is open
        last = self._book(st)["s"].get(key)
        if last is None:
            return True
        return self.reenter is not None and ts - last >= self.reenter

    def _started(self, eng, st, key: str, ts: int) -> None:
        starts = self._book(st)["s"]
        starts.pop(key, None)
        starts[key] = ts
        if len(starts) > MAX_KEYS:
            del starts[next(iter(starts))]

    def _open(self, eng, st, key: str, due: int, data) -> None:
        prefix = self.name + "|"
        # without a key, one instance per customer: nothing to count
        open_ = [(v[1]["s"], k) for k, v in st.timers.items() if k.startswith(prefix)] if self.p.key else ()
        if len(open_) >= MAX_OPEN:
            _s, oldest = min(open_)
            t = st.timers.pop(oldest)
            d = t[1]
            eng.audit_occasion(st, self, f"{d['k']}:{d['e']}", d["s"], "instance_limit",
                               f"more than {MAX_OPEN} open instances: the oldest is dropped", [d["e"]])
            if "i" in d:  # a multi-step instance: counted with the others' ends
                eng.stats.instances[(self.name, "dropped")] += 1
        eng.set_timer(st, self, key, due, data)
