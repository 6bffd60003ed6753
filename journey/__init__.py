"""journey: Kafka-native, event-time stream processor that turns customer
events into relationship-aware triggers.

Layout (the folder names tell the architecture; ``lint-imports`` keeps it so):

* ``journey.core``: the pure, deterministic core (intake, state, rules,
  policy, triggers, the engine); no I/O, no wall clock.
* ``journey.io``: what the shells share to reach files, Kafka and the terminal.
* shells, each on the core and never on each other: ``journey.history``
  (replay, backtest, bench, generate, CLV fit), ``journey.live`` (the Faust
  worker), ``journey.dispatch`` (webhooks).
* on top: ``journey.cli`` (the command line) and ``journey.demo``.
"""

__version__ = "0.1.0"

import os as _os
import sys as _sys
from importlib.machinery import EXTENSION_SUFFIXES as _EXT
from importlib.util import spec_from_file_location as _spec_at

_CORE = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "core")
_SUBPACKAGES = ("rules", "journeys")   # the core's packages (setup.py compiles their modules too)


def _compiled_beside(source: str) -> str | None:
    stem = source[:-3]
    for suffix in _EXT:
        if _os.path.exists(stem + suffix):
            return stem + suffix
    return None


def _why_pure() -> str | None:
    """Why the core must run as pure Python although compiled modules may be installed, or None."""
    if _os.environ.get("JOURNEY_PURE") == "1":
        return "JOURNEY_PURE=1"
    if not _os.path.exists(_os.path.join(_os.path.dirname(_os.path.dirname(_CORE)), "setup.py")):
        return None  # an installed package: its files are what was built
    # a source checkout: a module edited after the build would run stale compiled code; run all of it pure
    for folder in (_CORE, *(_os.path.join(_CORE, sub) for sub in _SUBPACKAGES)):
        for name in _os.listdir(folder):
            if name.endswith(".py") and name != "__init__.py":
                source = _os.path.join(folder, name)
                built = _compiled_beside(source)
                if built and _os.path.getmtime(source) > _os.path.getmtime(built):
                    return (f"{_os.path.relpath(source, _os.path.dirname(_os.path.dirname(_CORE)))} changed "
                            "since it was compiled: `pip install -e .` rebuilds it")
    return None


class _PureCore:
    """Import finder that takes journey.core's .py modules over its compiled ones (which Python would
    prefer) when the core must run pure: JOURNEY_PURE=1, or a source checkout edited since its build."""

    def __init__(self, why: str):
        self.why = why

    def find_spec(self, name, path, target=None):
        if not name.startswith("journey.core.") or not path:
            return None
        source = _os.path.join(path[0], name.rpartition(".")[2] + ".py")
        return _spec_at(name, source) if _os.path.isfile(source) else None


_why = _why_pure()
if _why is not None:
    _sys.meta_path.insert(0, _PureCore(_why))


def core_mode() -> str:
    """How the core runs here: 'compiled with Cython' (and how many modules) or 'pure Python' and why."""
    import importlib

    modules = []
    for folder, package in ((_CORE, "journey.core"),
                            *((_os.path.join(_CORE, sub), f"journey.core.{sub}") for sub in _SUBPACKAGES)):
        modules += [f"{package}.{n[:-3]}" for n in sorted(_os.listdir(folder))
                    if n.endswith(".py") and n != "__init__.py"]
    compiled = [m for m in modules if not importlib.import_module(m).__file__.endswith(".py")]
    if len(compiled) == len(modules):
        return f"compiled with Cython, {len(compiled)} modules"
    if compiled:
        return f"partly compiled with Cython ({len(compiled)} of {len(modules)} modules; the rest pure Python)"
    if _why is not None:
        return f"pure Python: {_why}"
    return "pure Python: no compiled modules installed (no C compiler or no Cython at install time)"
