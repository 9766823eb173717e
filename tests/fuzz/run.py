"""Run the fuzz targets coverage-guided with atheris: ``make fuzz SECONDS=N [TARGET=name]``.

Each target runs in a process of its own for SECONDS (libFuzzer's ``-max_total_time``), starting
from its committed seeds (``tests/fuzz/corpus/<target>/``) plus what earlier runs found
(``.fuzz/corpus/<target>/``, not committed). A crash or a failed property is written to
``.fuzz/crashes/<target>/`` and makes the run fail; turn it into a regression test, and add the
input to the seeds if it taught the fuzzer something.
"""
from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import time
from pathlib import Path

from tests.fuzz import CORPUS, targets

WORK = Path(".fuzz")


def fuzz_one(name: str, seconds: int) -> None:
    """In this process: instrument authproxy, load the target and hand it to libFuzzer."""
    import atheris

    # atheris documents instrument_imports, but its partial stubs do not re-export it
    with atheris.instrument_imports(include=["authproxy", "tests.fuzz"]):  # type: ignore[attr-defined]
        target = importlib.import_module(f"tests.fuzz.{name}")
    found = WORK / "corpus" / name
    crashes = WORK / "crashes" / name
    found.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    argv = [sys.argv[0], f"-max_total_time={seconds}", "-rss_limit_mb=2048", "-timeout=10",
            "-print_final_stats=1", f"-artifact_prefix={crashes}/", str(found), str(CORPUS / name)]
    atheris.Setup(argv, target.check)
    atheris.Fuzz()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60, help="per target")
    parser.add_argument("--target", action="append", choices=targets(),
                        help="a target to run (repeatable); all of them by default")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        fuzz_one(args.one, args.seconds)
        return 0
    failed = []
    for name in args.target or targets():
        started = time.monotonic()
        run = subprocess.run([sys.executable, "-m", "tests.fuzz.run", "--one", name,
                              "--seconds", str(args.seconds)], capture_output=True, text=True)
        stats = [line for line in run.stderr.splitlines()
                 if line.startswith(("stat::number_of_executed_units", "stat::new_units_added"))]
        took = time.monotonic() - started
        verdict = "ok" if run.returncode == 0 else f"FAILED (exit {run.returncode})"
        print(f"{name:<16} {verdict:<18} {took:6.1f} s  " + "  ".join(s.split("::")[1] for s in stats))
        if run.returncode != 0:
            failed.append(name)
            print("\n".join(run.stderr.splitlines()[-40:]), file=sys.stderr)
    if failed:
        print(f"crashes or failed properties in: {', '.join(failed)} (see .fuzz/crashes/)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
