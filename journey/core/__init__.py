"""The pure, deterministic core: event intake and the event catalogue, customer
state, health and stage, time helpers, the event-time timeline, the engine,
the contact policy, trigger records, the rule configuration model, the stream
side of CLV, and ``rules/`` (one module per built-in rule).

No I/O, no wall clock, no Kafka, no files: the shells (``journey.history``,
``journey.live``, ``journey.dispatch``) feed it events and write what it
emits. Data flows one way: intake -> state -> rules -> policy -> triggers.
"""
