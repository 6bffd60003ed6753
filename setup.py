"""Build journey with its pure core compiled by Cython where it can be.

The core (``journey/core``: no I/O, no wall clock) is plain Python that
Cython 3 also compiles, unchanged, into C extensions that run the same
code without the interpreter's dispatch. The compiled modules are optional:
without Cython, without a C compiler, or when one module does not compile,
the install goes on and that module runs as pure Python, which gives the
same output byte for byte (tests/test_compiled.py). ``journey --version``
says which one runs; ``JOURNEY_PURE=1`` at run time takes the pure Python
modules even where compiled ones are installed, and ``JOURNEY_PURE_BUILD=1``
at install time skips the build (an install in seconds instead of a minute
or two).

Everything else (metadata, dependencies, package data) is in pyproject.toml.
The generated C stays under build/ (neither in the repository nor in the
wheel).
"""

import glob
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

CORE = ["journey/core/*.py", "journey/core/rules/*.py", "journey/core/journeys/*.py"]


def _say(message: str) -> None:
    print(f"journey: {message}", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """build_ext where a module that does not build stays pure Python."""

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:  # one C compiler per core: the build takes half the time on two
            self.parallel = os.cpu_count() or 1

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler at all, a broken toolchain: the pure package still installs
            _say(f"the compiled core was not built ({type(exc).__name__}: {exc}); "
                 "the core runs as pure Python (the same results, 5-20% slower)")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            _say(f"{ext.name} was not compiled ({type(exc).__name__}: {exc}); it runs as pure Python")


def _extensions():
    if os.environ.get("JOURNEY_PURE_BUILD") == "1":
        _say("JOURNEY_PURE_BUILD=1: the core is installed as pure Python only")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        _say("Cython is not installed: the core is installed as pure Python only")
        return []
    sources = sorted(path for pattern in CORE for path in glob.glob(pattern)
                     if os.path.basename(path) != "__init__.py")
    try:
        return cythonize(
            sources,
            build_dir="build/cython",
            quiet=True,
            compiler_directives={
                "language_level": 3,
                # the core's annotations document; Cython must not enforce them (dict[int, dict] would reject
                # a defaultdict, an int annotation would reject a bool)
                "annotation_typing": False,
                # functions keep their signature, docstring and __module__, like pure Python ones
                "binding": True,
            },
        )
    except Exception as exc:  # a module Cython cannot translate: the whole core stays pure
        _say(f"Cython could not translate the core ({type(exc).__name__}: {exc}); it runs as pure Python")
        return []


def _with_flags(extensions):
    if os.name == "posix":
        for ext in extensions:
            # no debug information: a third of the build time and of the size; the optimisation level stays
            # the interpreter's own (setting CFLAGS would replace its -O3)
            ext.extra_compile_args = [*ext.extra_compile_args, "-g0"]
    for ext in extensions:
        ext.optional = True  # an editable install copies only the modules that were built
    return extensions


setup(ext_modules=_with_flags(_extensions()), cmdclass={"build_ext": OptionalBuildExt})
