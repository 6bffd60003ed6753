"""The documentation: the reference pages generated from the code are current, and the site builds.

* ``docs/reference/*.md`` are written by ``python -m journey.docsgen`` from the argparse parser, the
  parameter tables, the event catalogue, the topic catalogue and the Prometheus registries; a page that
  differs from what the generator writes now is stale.
* ``mkdocs build --strict`` (Material for MkDocs, the ``docs`` extra) builds the site without a warning:
  no broken link or anchor, no page left out of the navigation. Without mkdocs installed the test
  skips, except on CI (``CI=true``), where it must run.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from journey import docsgen

ROOT = Path(__file__).resolve().parent.parent
ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def test_the_reference_pages_are_what_the_generator_writes():
    pages = docsgen.render()
    assert set(pages) == {f"docs/reference/{n}" for n in docsgen.PAGES}
    stale = []
    for path, want in pages.items():
        f = ROOT / path
        have = f.read_text(encoding="utf-8") if f.exists() else ""
        if have != want:
            diff = difflib.unified_diff(have.splitlines(), want.splitlines(), f"{path} (committed)",
                                        f"{path} (from the code)", lineterm="", n=0)
            stale.append("\n".join(list(diff)[:30]))
    assert not stale, ("reference pages are stale; regenerate them with: python -m journey.docsgen\n\n"
                       + "\n\n".join(stale))


def test_the_generator_check_mode_names_a_stale_page(tmp_path):
    (tmp_path / "docs" / "reference").mkdir(parents=True)
    for path, text in docsgen.render().items():
        (tmp_path / path).write_text(text, encoding="utf-8")
    assert docsgen.main(["--check", "--root", str(tmp_path)]) == 0
    (tmp_path / "docs" / "reference" / "cli.md").write_text("# old\n", encoding="utf-8")
    assert docsgen.stale(tmp_path) == ["docs/reference/cli.md"]
    assert docsgen.main(["--check", "--root", str(tmp_path)]) == 1


def test_every_command_and_subcommand_is_on_the_cli_page():
    import argparse

    text = (ROOT / "docs" / "reference" / "cli.md").read_text(encoding="utf-8")
    parser = docsgen._parser()

    def walk(p):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for child in a.choices.values():
                    yield child
                    yield from walk(child)

    progs = [c.prog for c in walk(parser)]
    assert {"journey replay", "journey clv fit", "journey clv score", "journey simulate"} <= set(progs)
    for prog in progs:
        assert f"\n## {prog}\n" in text or f"\n### {prog}\n" in text, prog
        for a in next(c for c in walk(parser) if c.prog == prog)._actions:
            for opt in a.option_strings:
                if opt not in ("-h", "--help"):
                    assert f"`{opt}" in text or f", {opt}" in text, (prog, opt)
