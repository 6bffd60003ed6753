"""The live shell: the Faust worker around ``journey.core`` (settings, the
customer table and its changelog tail recovery, the per-partition runtime,
outputs and checkpoints, the app wiring), and the Kafka-side commands
(``produce``, ``topics``, the embedded broker). It never imports
``journey.history`` or ``journey.dispatch``."""
