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
ON_CI = bool(os.environ.get("CI"))  # as tests/conftest.py need_tool reads it


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


# -- the site ----------------------------------------------------------------------------------------

def _need(module: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        if ON_CI:
            pytest.fail(f"{what} is not installed, and CI=true: install the docs extra (pip install -e '.[docs]')")
        pytest.skip(f"{what} is not installed (pip install -e '.[docs]')")


def test_the_site_builds_without_a_warning(tmp_path):
    _need("mkdocs", "mkdocs")
    _need("material", "mkdocs-material")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, f"mkdocs build --strict failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    for page in ("index.html", "getting-started/index.html", "reference/cli/index.html",
                 "operations/kubernetes/index.html"):
        assert (tmp_path / "site" / page).exists(), page
    # the Kubernetes page is deploy/kubernetes/README.md, included whole
    k8s = (tmp_path / "site" / "operations" / "kubernetes" / "index.html").read_text(encoding="utf-8")
    assert "journey on Kubernetes" in k8s and "How the worker stops" in k8s


# -- the README --------------------------------------------------------------------------------------

DEMO = "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/journey demo"
TESTS = "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/python -m pytest"


def test_the_readme_is_short_and_its_first_screen_has_the_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text) <= 15_000, f"README.md has {len(text):,} characters; move detail to docs/"
    first_screen = "\n".join(text.splitlines()[:40])
    assert DEMO in first_screen and TESTS in first_screen


def test_the_readme_links_resolve():
    import re

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = [m for m in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text) if "://" not in m]
    assert any(x.startswith("docs/") for x in links)
    for link in links:
        assert (ROOT / link).exists(), f"README.md links to {link}, which does not exist"


# -- examples in the pages ---------------------------------------------------------------------------

def _blocks(lang: str) -> list[tuple[str, str, str]]:
    """(page, the heading above, text) of every fenced block in ``lang`` of the README and docs/."""
    import re

    out = []
    pages = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
    for page in pages:
        heading = ""
        lines = page.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            line = lines[i]
            if re.match(r"#{1,6} ", line):
                heading = line.lstrip("#").strip()
            m = re.match(r"(\s*)```(\w+)\s*$", line)
            if m:
                indent, block = len(m.group(1)), []
                i += 1
                while not lines[i].strip().startswith("```"):
                    block.append(lines[i][indent:])
                    i += 1
                if m.group(2) == lang:
                    out.append((str(page.relative_to(ROOT)), heading, "\n".join(block) + "\n"))
            i += 1
    return out


def _subset(part, whole) -> bool:
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(k in whole and _subset(v, whole[k]) for k, v in part.items())
    return part == whole


def test_every_toml_example_is_a_valid_file_or_a_piece_of_a_packaged_one():
    import tomllib

    from journey.core.config import Config, ConfigError
    from journey.dispatch.config import parse_dispatch_config
    from journey.dispatch.signing import new_secret

    examples = {name: tomllib.loads((ROOT / path).read_text(encoding="utf-8")) for name, path in (
        ("journeys", "journey/examples/journeys.example.toml"),
        ("simulate", "journey/examples/simulate.example.toml"),
        ("simulate rules", "journey/examples/simulate.rules.toml"),
        ("dispatch", "deploy/dispatch.example.toml"))}
    blocks = _blocks("toml")
    assert len(blocks) >= 15
    for page, heading, text in blocks:
        data = tomllib.loads(text)
        where = f"{page} ({heading})"
        if set(data) <= {"simulation", "reactions"}:
            assert _subset(data, examples["simulate"]), f"{where}: not as in simulate.example.toml"
            continue
        if set(data) <= {"dispatch", "endpoints", "routes"}:
            env = {e["secrets_env"]: new_secret() for e in data.get("endpoints", {}).values() if "secrets_env" in e}
            parse_dispatch_config(data, where, env=env)
            continue
        try:
            Config(data, where)
        except ConfigError as e:
            assert any(_subset(data, examples[k]) for k in ("journeys", "simulate rules")), (
                f"{where}: neither a valid rule file nor a piece of a packaged example:\n  "
                + "\n  ".join(e.problems))


def test_the_cookbook_is_the_example_file():
    import tomllib

    example = tomllib.loads((ROOT / "deploy" / "journeys.example.toml").read_text(encoding="utf-8"))
    assert example == tomllib.loads(
        (ROOT / "journey" / "examples" / "journeys.example.toml").read_text(encoding="utf-8"))
    text = (ROOT / "docs" / "journeys.md").read_text(encoding="utf-8")
    cookbook = text[text.index("\n## Cookbook\n"):]
    shown = set()
    for page, heading, block in _blocks("toml"):
        if page == "docs/journeys.md" and f"\n### {heading}\n" in cookbook:
            data = tomllib.loads(block)
            assert _subset(data, example), f"cookbook, {heading}: not as in deploy/journeys.example.toml"
            shown |= {name for name, j in data["journeys"].items() if "kind" in j}
    assert shown == set(example["journeys"]), "every journey of the example file is in the cookbook"


def test_the_provider_snippets_load_as_connection_settings(tmp_path):
    from journey.io import connection

    snippets = [b for p, h, b in _blocks("properties") if p == "docs/operations/kafka.md"]
    assert len(snippets) == 4
    for i, text in enumerate(snippets):
        path = tmp_path / f"client{i}.properties"
        path.write_text(text, encoding="utf-8")
        got = connection.from_properties(connection.read_properties(str(path)), str(path))
        assert got.get("bootstrap") and got.get("protocol") in ("SSL", "SASL_SSL"), text
        if got["protocol"] == "SASL_SSL":
            assert got.get("mechanism") and got.get("username") and got.get("password"), text
            c = connection.load(str(path), environ={})
            assert c.protocol == "SASL_SSL"
        else:
            assert got.get("cafile") and got.get("certfile") and got.get("keyfile"), text
