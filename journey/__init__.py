"""journey: Kafka-native, event-time stream processor that turns customer
events into relationship-aware triggers.

The package is split into a pure, deterministic core (``intake``, ``state``,
``rules``, ``policy``, ``triggers``, ``engine``) and thin shells around it
(``replay``, ``backtest``, ``cli``, and the live worker in ``live``). The core
never reads the wall clock and does no I/O.
"""

__version__ = "0.1.0"
