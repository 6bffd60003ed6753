"""``journey intake``: events from any app over Segment's HTTP Tracking API, into the source topics.

A shell of its own: it depends on the core (the worker's intake checks every
message) and on ``journey.io`` (topics, the Kafka connection), never on the
other shells."""
