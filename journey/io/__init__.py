"""What the shells share to reach the outside world: log files (``logs``), rule
and model files (``rulefile``), the Kafka topic catalogue and connections
(``topics``, ``kafka``), and progress on the terminal (``progress``). It
depends only on ``journey.core``; no shell logic lives here."""
