"""Fuzz targets: one module per parser that reads outside input.

A target module defines::

    def check(data: bytes) -> None

which feeds ``data`` to one parser and asserts the parser's *properties* (not only "no
exception"): it raises AssertionError when a property fails, and any other exception escaping
it is a crash. The same function is run two ways:

- bounded, by hypothesis, in ``make test`` (``tests/test_fuzz_*.py``), with strategies that
  aim at the parser's grammar as well as raw bytes;
- coverage-guided, by atheris, under ``make fuzz SECONDS=N`` (``python -m tests.fuzz.run``),
  starting from the seed corpus committed in ``tests/fuzz/corpus/<target>/``.

Every crash either finds becomes a regression test next to the target's hypothesis test.
"""
from __future__ import annotations

import atexit
import os
import pkgutil
import shutil
import tempfile
from functools import cache
from pathlib import Path

HERE = Path(__file__).parent
CORPUS = HERE / "corpus"


def targets() -> list[str]:
    """The names of the target modules in this package."""
    return sorted(m.name for m in pkgutil.iter_modules([str(HERE)]) if m.name != "run")


@cache
def _scratch() -> str:
    """A directory of this process's own for the inputs of the loaders that take a path
    (removed at exit)."""
    directory = tempfile.mkdtemp(prefix="authproxy-fuzz-")
    atexit.register(shutil.rmtree, directory, True)
    return directory


def as_file(name: str, data: bytes) -> str:
    """Write ``data`` to this process's scratch file ``name``; its path."""
    path = os.path.join(_scratch(), name)
    with open(path, "wb") as fh:
        fh.write(data)
    return path
