"""``journey dispatch``: deliver triggers from ``journey.triggers`` to HTTP
endpoints, signed per the Standard Webhooks specification, with retries, and
without losing or doubling a message.

Pure parts (no I/O, no clock): ``config`` (the validated routing file),
``signing`` (Standard Webhooks signatures), ``policy`` (what a response means
and how long to wait), ``ledger`` (commit offsets and the delivered-id record),
``records`` (what a trigger record must be before it is routed), ``redact``
(URLs shown without credentials or query).
The shell: ``service`` (Kafka consumer, HTTP client, producer) and ``metrics``.
"""
