"""Every option of every command says what it does, and its default where it has one."""

from __future__ import annotations

import argparse
import subprocess
import sys

from journey.cli import build_parser


def _parsers(p, path="journey"):
    yield path, p
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_every_option_has_help_and_shows_its_default():
    missing = []
    for path, p in _parsers(build_parser()):
        for a in p._actions:
            if isinstance(a, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            name = "/".join(a.option_strings) or a.dest
            if not a.help:
                missing.append(f"{path} {name}: no help")
                continue
            d = a.default
            if d not in (None, False, argparse.SUPPRESS) and a.option_strings and "default" not in a.help:
                missing.append(f"{path} {name}: default {d!r} not shown")
    assert not missing, "\n".join(missing)


def test_a_reader_that_goes_away_ends_a_command_quietly():
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "journey", "rules", "show"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.readline()
    p.stdout.close()   # as `| head -1` does
    err = p.stderr.read().decode()
    assert p.wait(30) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_produce_without_a_broker_says_what_to_do_and_names_the_error_once(tmp_path):
    import subprocess
    import sys

    from journey.live.broker import free_port

    log = tmp_path / "e.jsonl"
    log.write_text('{"id":"e","customer_id":"c","type":"page.viewed","ts":"2026-03-01T10:00:00Z"}\n')
    env = {**__import__("os").environ, "JOURNEY_BROKER_WAIT": "1"}
    p = subprocess.run([sys.executable, "-m", "journey", "produce", str(log), "--broker",
                        f"kafka://127.0.0.1:{free_port()}", "-q"], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 1 and "Is a Kafka broker listening at" in p.stderr, p.stderr
    first = p.stderr.strip().splitlines()[-1]
    name = first.split("journey produce: ", 1)[1].split(":", 1)[0].split(".", 1)[0]
    assert first.count(name) == 1, first


def test_generate_writes_exactly_the_events_asked_and_says_what_else_is_there(tmp_path):
    import orjson

    out = tmp_path / "g.jsonl"
    p = subprocess.run([sys.executable, "-m", "journey", "generate", "--customers", "200", "--events", "3000",
                        "--out", str(out)], capture_output=True, text=True, check=True)
    assert "3,000 events of 200 customers" in p.stderr and "on purpose" in p.stderr
    s = subprocess.run([sys.executable, "-m", "journey", "replay", str(out), "--out", str(tmp_path / "t.jsonl"),
                        "--summary-json", str(tmp_path / "s.json"), "-q"], capture_output=True, check=True)
    summary = orjson.loads((tmp_path / "s.json").read_bytes())
    assert summary["valid"] - summary["duplicates"] == 3000, (summary, s.stderr)
    subprocess.run([sys.executable, "-m", "journey", "generate", "--customers", "200", "--events", "3000", "--clean",
                    "--out", str(out)], capture_output=True, check=True)
    assert len(out.read_bytes().splitlines()) == 3000


def test_worker_and_dispatch_without_a_broker_say_so_in_one_message(tmp_path):
    import os

    from journey.live.broker import free_port

    url = f"kafka://127.0.0.1:{free_port()}"  # nothing listens there
    env = {**os.environ, "JOURNEY_BROKER_WAIT": "1", "JOURNEY_CRM_SECRETS": "", "JOURNEY_SMS_SECRETS": ""}
    cfg = tmp_path / "d.toml"
    secret = subprocess.run([sys.executable, "-m", "journey", "dispatch", "--new-secret"], capture_output=True,
                            text=True, check=True).stdout.strip()
    cfg.write_text(f'[endpoints.crm]\nurl = "http://127.0.0.1:9/x"\nsecrets = ["{secret}"]\n'
                   '[[routes]]\nendpoints = ["crm"]\n')
    for cmd in (["worker", "--store", "memory://", "--data-dir", str(tmp_path / "data")],
                ["dispatch", "--config", str(cfg), "--web-port", str(free_port())]):
        p = subprocess.run([sys.executable, "-m", "journey", *cmd, "--broker", url], capture_output=True, text=True,
                           env=env, timeout=60, cwd=tmp_path)
        assert p.returncode == 1, p.stderr
        assert "Traceback" not in p.stderr and "ERROR aiokafka" not in p.stderr, p.stderr
        assert f"Is a Kafka broker listening at {url}?" in p.stderr.splitlines()[-1], p.stderr


def _journey(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "journey", *map(str, args)], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, **kw)


def test_no_help_text_shows_an_escaped_percent_sign():
    # argparse formats an option's help with %, but not a description (nor an epilog): a "%%" written
    # there is printed as it is
    shown = []
    for path, p in _parsers(build_parser()):
        text = p.format_help()
        if "%%" in text or "%(" in text:
            shown.append(f"{path}: " + next(line for line in text.splitlines() if "%%" in line or "%(" in line))
    assert not shown, "\n".join(shown)
    p = _journey("experiments", "--help")
    assert p.returncode == 0 and "95% confidence interval" in " ".join(p.stdout.split()) and "%%" not in p.stdout


def test_generate_refuses_counts_below_one_in_one_line(tmp_path):
    out = tmp_path / "g.jsonl"
    for flag, value in (("--customers", "0"), ("--events", "-5"), ("--events", "0"), ("--days", "0")):
        p = _journey("generate", flag, value, "--out", out)
        assert p.returncode == 2, (flag, value, p.stderr)
        assert p.stderr == f"journey generate: {flag} must be 1 or more (got {value})\n", p.stderr
        assert not out.exists()


def test_a_replay_where_nothing_was_valid_fails_and_says_where_the_dead_letters_went(tmp_path):
    log = tmp_path / "bad.jsonl"
    log.write_text('{"customer_id": "c1", "ts": "2026-03-01T10:00:00Z"}\nnot json\n')
    out, dl = tmp_path / "t.jsonl", tmp_path / "dl.jsonl"
    p = _journey("replay", log, "--out", out, "--deadletter", dl, "-q")
    assert p.returncode == 1, p.stderr
    assert p.stderr.startswith("journey replay: nothing was valid: all 2 line(s) were rejected"), p.stderr
    assert f"the dead letters, each line with its reason, are in {dl}" in p.stderr
    assert len(dl.read_text().splitlines()) == 2
    p = _journey("replay", log, "--out", out)
    assert p.returncode == 1 and "nothing was valid" in p.stderr and "--deadletter FILE" in p.stderr, p.stderr
    # one valid line is enough
    with open(log, "a") as f:
        f.write('{"id": "e1", "customer_id": "c1", "type": "page.viewed", "ts": "2026-03-01T10:00:00Z"}\n')
    p = _journey("replay", log, "--out", out, "-q")
    assert p.returncode == 0 and p.stderr == "", p.stderr
