"""The compiled core (setup.py: Cython, optional) against the pure one (issue 17, item 1).

Where the compiled modules are built, a replay with journeys, experiments and
rejected lines, and a CLV fit, write the same bytes compiled and pure
(JOURNEY_PURE=1). A source checkout edited after its build runs pure Python
and says why; an install without a C compiler falls back to pure Python and
says so. CI builds the compiled core (its install has gcc), so there the
comparison must not skip."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from conftest import CAL_END

import journey
from journey.history.synth import write_log

ROOT = Path(journey.__file__).resolve().parent.parent
EXAMPLE = ROOT / "journey" / "examples" / "journeys.example.toml"
COMPILED = journey.core_mode().startswith("compiled")
MODULES = sum(1 for d in ("core", "core/rules", "core/journeys") for f in (ROOT / "journey" / d).glob("*.py") if f.name != "__init__.py")
needs_build = pytest.mark.skipif(not COMPILED, reason=f"core: {journey.core_mode()}")


def journey_cli(args, pure: bool, cwd=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "JOURNEY_PURE"}
    if pure:
        env["JOURNEY_PURE"] = "1"
    r = subprocess.run([sys.executable, "-m", "journey", *args], env=env, cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r


def test_ci_runs_the_compiled_core():
    if os.environ.get("CI") != "true":
        pytest.skip("only CI must have built it (its install has a C compiler)")
    assert COMPILED, f"CI installs with gcc, so the core must be compiled; it runs as {journey.core_mode()}"


@needs_build
def test_version_says_how_the_core_runs():
    assert f"(core: compiled with Cython, {MODULES} modules)" in journey_cli(["--version"], pure=False).stdout
    assert "(core: pure Python: JOURNEY_PURE=1)" in journey_cli(["--version"], pure=True).stdout


@needs_build
def test_compiled_and_pure_write_the_same_bytes(tmp_path, cdnow):
    synth = tmp_path / "synth.jsonl"
    write_log(str(synth), 400, 12_000, 7, sort=False)
    lines = synth.read_bytes().splitlines()
    lines += [b'{"type": "order.completed", "ts": "not a time"}', b"\xff\xfe", b"[]"]
    random.Random(7).shuffle(lines)
    log = tmp_path / "log.jsonl"
    log.write_bytes(b"\n".join(lines) + b"\n")
    outputs = {}
    for mode in ("compiled", "pure"):
        files = [f"{mode}.{k}" for k in ("out", "audit", "dl", "tr", "oc")]
        journey_cli(["replay", str(log), "--rules", str(EXAMPLE), "--until", "2026-12-31T00:00:00Z", "-q",
                     "--out", files[0], "--audit", files[1], "--deadletter", files[2], "--transitions", files[3],
                     "--outcomes", files[4], "--workers", "1"], pure=mode == "pure", cwd=tmp_path)
        journey_cli(["clv", "fit", str(cdnow[0]), "--calibration-end", CAL_END, "--out", f"{mode}.model"],
                    pure=mode == "pure", cwd=tmp_path)
        outputs[mode] = {f.split(".")[1]: (tmp_path / f).read_bytes() for f in [*files, f"{mode}.model"]}
    assert outputs["compiled"]["out"].count(b"\n") > 100, "the log must fire triggers to compare"
    assert outputs["compiled"]["dl"].count(b"\n") >= 3
    assert outputs["compiled"]["oc"], "the experiments must close exposures to compare"
    for mode in outputs:  # the model file records how long the fit took
        model = orjson.loads(outputs[mode]["model"])
        assert model["diagnostics"].pop("read_seconds") >= 0 and model["diagnostics"].pop("fit_seconds") > 0
        outputs[mode]["model"] = orjson.dumps(model)
    for name, data in outputs["compiled"].items():
        assert data == outputs["pure"][name], f"compiled and pure differ in {name}"


def _copy_of_the_checkout(tmp_path: Path) -> Path:
    tree = tmp_path / "checkout"
    shutil.copytree(ROOT / "journey", tree / "journey", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.py", tree / "setup.py")
    return tree


def _mode_of(tree: Path) -> str:
    # the editable install's import hook would find /work's journey first: run the copy's, not it
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
            f"sys.path.insert(0, {str(tree)!r}); import journey; assert journey.__file__.startswith({str(tree)!r}); "
            "print(journey.core_mode())")
    env = {k: v for k, v in os.environ.items() if k != "JOURNEY_PURE"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@needs_build
def test_a_checkout_edited_after_its_build_runs_pure_and_says_which_file(tmp_path):
    tree = _copy_of_the_checkout(tmp_path)
    assert _mode_of(tree) == f"compiled with Cython, {MODULES} modules"
    edited = tree / "journey" / "core" / "rules" / "birthday.py"
    later = time.time() + 5
    os.utime(edited, (later, later))
    assert _mode_of(tree) == ("pure Python: journey/core/rules/birthday.py changed since it was compiled: "
                              "`pip install -e .` rebuilds it")


def test_an_install_without_a_compiler_falls_back_to_pure_python(tmp_path):
    import Cython  # noqa: F401 - the test extra installs it: a broken install fails here, never skips
    tree = tmp_path / "checkout"
    for part in ("", "core", "core/rules"):
        (tree / "journey" / part).mkdir(parents=True, exist_ok=True)
        (tree / "journey" / part / "__init__.py").write_text("")
    shutil.copy(ROOT / "journey" / "core" / "params.py", tree / "journey" / "core" / "params.py")
    shutil.copy(ROOT / "setup.py", tree / "setup.py")
    env = {**os.environ, "CC": "/nonexistent/cc", "LDSHARED": "/nonexistent/cc -shared"}
    env.pop("JOURNEY_PURE_BUILD", None)
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tree, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "journey.core.params was not compiled" in r.stderr and "runs as pure Python" in r.stderr
    assert (tree / "build" / "cython").is_dir(), "Cython translated it; only the C compiler was missing"
    assert not list(tree.rglob("*.so")), "nothing compiled, nothing half-built left beside the sources"
    assert not list((tree / "journey").rglob("*.c")), "the generated C stays under build/"
