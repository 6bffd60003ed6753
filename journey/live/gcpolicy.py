"""Garbage-collector policy of the worker process (see :func:`tune_gc`)."""

from __future__ import annotations

import gc


def tune_gc(gen0: int) -> None:
    """Python's cyclic garbage collector, set for a process holding many long-lived
    customer states and allocating a few dozen short-lived objects per event.

    * Young passes every ``gen0`` allocations instead of 700: with the default, the
      collector took about a quarter of the worker's time.
    * Full passes walk every tracked object, and the customer states are most of them
      (about 20 per customer: a pause of about 0.2 s per 13,000 customers, 1 s and more
      for a large partition, in the middle of the stream). So what exists at each
      checkpoint is frozen (``gc.freeze``: moved out of the collector's sight; it is
      still freed by reference counting as usual), and full passes only see what is
      newer. The one thing freezing could keep is a reference cycle that becomes garbage
      after it was frozen; measured, the worker makes none in steady state (only at
      start-up, about 800 objects), and ``full_gc`` collects everything after each
      assignment, while processing is stopped anyway."""
    gc.freeze()
    _g0, g1, g2 = gc.get_threshold()
    gc.set_threshold(max(1, gen0), g1, g2)


def full_gc() -> None:
    """A complete collection, frozen objects included, then freeze again (after an assignment)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
