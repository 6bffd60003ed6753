"""Every option of every command says what it does, and its default where it has one."""

from __future__ import annotations

import argparse

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
