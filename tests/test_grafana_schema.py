"""The Grafana dashboard (deploy/grafana/dashboards/journey.json) against Grafana's own models.

* **Grafana's TypeScript schema.** ``@grafana/schema`` (the npm package Grafana publishes its
  dashboard and panel types in, pinned to the Grafana of docker-compose.yml) type-checks the JSON with
  ``tsc --strict``: the whole file as a ``Dashboard``, and each panel with its plugin's ``Options`` and
  ``FieldConfig`` (timeseries, stat, bargauge), string enums read as the strings a JSON file holds and
  every field optional (Grafana fills in its defaults). Object literals are *fresh* in TypeScript, so
  tsc rejects a key the types do not know (a typo, a setting of another Grafana version) and a value
  of the wrong type or outside an enum. ``Panel``'s own ``options`` and ``custom`` are open records,
  so the panels are checked against a closed version of it. The package and TypeScript are
  npm-installed once into a cache outside the repository (``$JOURNEY_TEST_CACHE``, else
  ``~/.cache/journey-tests``), keyed by their pins. Without node or npm the test skips, except on CI
  (``CI=true``), where it fails.
* **No key dropped.** The dashboard is written by ``deploy/grafana/build_dashboard.py`` (plain dicts):
  every key of the committed JSON is one the generator writes, and Grafana Labs' Python model
  (``grafana-foundation-sdk``, pinned in the ``test`` extra to the same Grafana) keeps every key when it
  loads the file and writes it back.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import cache_dir, locked

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "journey.json"
GRAFANA = "11.3.1"          # grafana/grafana in docker-compose.yml, and @grafana/schema
TYPESCRIPT = "5.6.3"
ON_CI = bool(os.environ.get("CI"))  # as tests/conftest.py need_tool reads it
INSTALL_TIMEOUT = 300
# panel type -> (module of @grafana/schema with its Options, whether it has a FieldConfig of its own)
PANEL_TYPES = {
    "timeseries": ("timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen", True),
    "stat": ("stat/panelcfg/x/StatPanelCfg_types.gen", False),
    "bargauge": ("bargauge/panelcfg/x/BarGaugePanelCfg_types.gen", False),
}


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _paths(o, at: str = "") -> set[str]:
    """Every key of a JSON document, as a path (list positions included)."""
    out = set()
    if isinstance(o, dict):
        for k, v in o.items():
            out.add(f"{at}/{k}")
            out |= _paths(v, f"{at}/{k}")
    elif isinstance(o, list):
        for i, v in enumerate(o):
            out |= _paths(v, f"{at}/{i}")
    return out


def test_grafana_is_the_one_the_schema_is_pinned_to():
    compose = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    assert f"image: grafana/grafana:{GRAFANA}\n" in compose, (
        "docker-compose.yml runs another Grafana: pin GRAFANA here (and grafana-foundation-sdk in "
        "pyproject.toml) to it")


def test_every_key_of_the_dashboard_is_one_its_generator_writes():
    ns = runpy.run_path(str(ROOT / "deploy" / "grafana" / "build_dashboard.py"))
    lost = _paths(_dashboard()) - _paths(ns["dashboard"]())
    assert not lost, f"keys of journey.json its generator does not write: {sorted(lost)[:20]}"


def test_grafanas_python_model_keeps_every_key_of_the_dashboard():
    from importlib.metadata import version

    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    sdk = version("grafana-foundation-sdk").split("!")[-1]
    want = ".".join(GRAFANA.split(".")[:2])
    assert sdk.startswith(want + "."), (
        f"grafana-foundation-sdk {sdk} models another Grafana than {GRAFANA}: pip install -e '.[test]'")
    register_default_plugins()
    raw = _dashboard()
    back = json.loads(json.dumps(Dashboard.from_json(raw), cls=JSONEncoder))
    dropped = sorted(_paths(raw) - _paths(back))
    assert not dropped, f"grafana-foundation-sdk {sdk} drops these keys of journey.json: {dropped[:20]}"


# -- @grafana/schema with tsc --strict -----------------------------------------------------------------

def _cannot(why: str):
    if ON_CI:
        pytest.fail(f"{why}; on CI (CI=true) the dashboard must be type-checked")
    pytest.skip(why)


def _run(cmd: list[str], what: str, timeout: float, **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)
    except subprocess.TimeoutExpired:
        _cannot(f"{what}: no result within {timeout:.0f} s (no network?)")
    except OSError as e:
        _cannot(f"{what}: cannot run {cmd[0]}: {e.strerror}")


@pytest.fixture(scope="session")
def schema_dir() -> Path:
    """A folder whose node_modules hold @grafana/schema@GRAFANA and typescript@TYPESCRIPT (cached)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _cannot(f"{'node' if node is None else 'npm'} is not installed: the dashboard's type check needs node "
                f"and npm (apt-get install nodejs npm)")
    d = cache_dir() / f"grafana-schema-{GRAFANA}-typescript-{TYPESCRIPT}"
    done = d / ".journey-installed"
    with locked(d.with_name(d.name + ".lock")):
        if not done.exists():
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            (d / "package.json").write_text('{"name": "journey-dashboard-check", "private": true}\n')
            what = f"npm install @grafana/schema@{GRAFANA} typescript@{TYPESCRIPT}"
            r = _run([npm, "install", "--no-audit", "--no-fund", "--ignore-scripts", "--no-save",
                      f"@grafana/schema@{GRAFANA}", f"typescript@{TYPESCRIPT}"], what, INSTALL_TIMEOUT, cwd=d)
            if r.returncode != 0:
                said = [x for x in (r.stderr + "\n" + r.stdout).splitlines() if re.search(r"(?i)\berr", x)]
                _cannot(f"{what} failed (exit {r.returncode}; no network?): {' | '.join(said[:4])[:700]}")
            done.write_text(f"@grafana/schema@{GRAFANA} typescript@{TYPESCRIPT}\n")
    return d


def typescript_of(dashboard: dict) -> str:
    """The dashboard as TypeScript: ``const dashboard: Dashboard = <json>``, then each panel typed by
    its plugin's options and field config (rows as ``RowPanel``)."""
    base = "@grafana/schema/dist/esm/raw/composable"
    lines = ["import { Dashboard, FieldConfig, FieldConfigSource, Panel, RowPanel } from '@grafana/schema';"]
    for name, (module, _) in PANEL_TYPES.items():
        lines.append(f"import * as {name} from '{base}/{module}';")
    lines.append("""
// A JSON file holds a string enum's values as strings, and leaves out what Grafana fills in
type Json<T> = T extends string ? `${T}` : T extends number | boolean | null | undefined ? T
  : T extends Array<infer U> ? Array<Json<U>> : { [K in keyof T]?: Json<T[K]> };
// Panel<TOptions, TCustom> leaves options and custom open (Record<string, unknown>): close them
type Typed<O, C> = Omit<Panel, 'options' | 'fieldConfig'> & {
  options?: Json<O>;
  fieldConfig?: Omit<FieldConfigSource, 'defaults'> & { defaults: Omit<FieldConfig, 'custom'> & { custom?: Json<C> } };
};
type NoCustom = Record<string, never>;
""")
    lines.append(f"export const dashboard: Dashboard = {json.dumps(dashboard, indent=1, ensure_ascii=False)};")
    for i, p in enumerate(dashboard["panels"]):
        kind = p["type"]
        if kind == "row":
            typ = "RowPanel"
        else:
            assert kind in PANEL_TYPES, f"panel {p.get('title')!r}: add {kind}'s types to PANEL_TYPES"
            custom = f"{kind}.FieldConfig" if PANEL_TYPES[kind][1] else "NoCustom"
            typ = f"Typed<{kind}.Options, {custom}>"
        lines.append(f"// {p.get('title')}")
        lines.append(f"export const panel{i}: {typ} = {json.dumps(p, ensure_ascii=False)};")
    return "\n".join(lines) + "\n"


def _tsc(schema_dir: Path, source: str, name: str) -> subprocess.CompletedProcess:
    ts = schema_dir / name
    ts.write_text(source, encoding="utf-8")
    tsc = schema_dir / "node_modules" / "typescript" / "bin" / "tsc"
    return _run([shutil.which("node") or "node", str(tsc), "--strict", "--noEmit", "--target", "es2020",
                 "--module", "commonjs", "--moduleResolution", "node", name], "tsc", 300, cwd=schema_dir)


def test_the_dashboard_type_checks_against_grafanas_schema(schema_dir):
    r = _tsc(schema_dir, typescript_of(_dashboard()), f"journey-dashboard-{os.getpid()}.ts")
    assert r.returncode == 0, ("deploy/grafana/dashboards/journey.json does not type-check against "
                               f"@grafana/schema {GRAFANA}:\n{(r.stdout + r.stderr)[-4000:]}")


@pytest.mark.parametrize("where, change", [
    ("a key Grafana does not know", lambda d: d.update(refreshh="10s")),
    ("a typo in a panel's options", lambda d: _panel(d, "bargauge")["options"].update(namePlacment="auto")),
    ("a value outside an enum", lambda d: _panel(d, "stat")["options"].update(colorMode="valu")),
    ("a typo in a series' style", lambda d: _panel(d, "timeseries")["fieldConfig"]["defaults"]["custom"].update(
        fillOpacty=10)),
    ("a grid position of the wrong type", lambda d: _panel(d, "timeseries")["gridPos"].update(w="8")),
])
def test_the_type_check_rejects_what_grafana_would_not_read(schema_dir, where, change):
    d = _dashboard()
    change(d)
    r = _tsc(schema_dir, typescript_of(d), f"journey-dashboard-bad-{os.getpid()}.ts")
    assert r.returncode != 0 and "error TS" in r.stdout, f"{where}: tsc accepted it"


def _panel(d: dict, kind: str) -> dict:
    return next(p for p in d["panels"] if p["type"] == kind)
