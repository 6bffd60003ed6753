"""History on files: replay and backtest of JSON-lines logs, the benchmark, the
synthetic population, the CLV fit and score commands, and the replay metrics
file. A shell around ``journey.core``; it never imports ``journey.live`` or
``journey.dispatch``."""
