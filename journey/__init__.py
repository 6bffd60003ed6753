"""journey: Kafka-native, event-time stream processor that turns customer
events into relationship-aware triggers.

Layout (the folder names tell the architecture; ``lint-imports`` keeps it so):

* ``journey.core``: the pure, deterministic core (intake, state, rules,
  policy, triggers, the engine); no I/O, no wall clock.
* ``journey.io``: what the shells share to reach files, Kafka and the terminal.
* shells, each on the core and never on each other: ``journey.history``
  (replay, backtest, bench, generate, CLV fit), ``journey.live`` (the Faust
  worker), ``journey.dispatch`` (webhooks).
* on top: ``journey.cli`` (the command line) and ``journey.demo``.
"""

__version__ = "0.1.0"
