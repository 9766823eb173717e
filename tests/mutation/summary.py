"""Print the per-module score of the last ``mutmut run`` (``make mutate``).

Reads ``mutmut results --all true`` and tests/mutation/equivalent.txt, the survivors a
reviewer judged equivalent (no observable difference), each with its reason; a reason that
begins with ``gap:`` marks a known gap instead (a real difference no test catches yet,
counted apart). A survivor not in that file is an unexamined gap: the summary lists it and
exits 1.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

EQUIVALENT = Path(__file__).with_name("equivalent.txt")
# "    authproxy.core.policy.xǁPolicyǁcheck__mutmut_24: survived"
RESULT = re.compile(r"^\s*(?P<name>(?P<module>[\w.]+?)\.x[ǁ_]\S*__mutmut_\d+): (?P<status>.+)$")
COLUMNS = ("killed", "survived", "equivalent", "gap", "timeout", "other")


def equivalent_mutants(text: str) -> dict[str, str]:
    """Mutant name -> the reason it is equivalent, from lines ``name  reason`` (# comments)."""
    reasons = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, reason = line.partition(" ")
            reasons[name] = reason.strip()
    return reasons


def tally(results: str, equivalent: dict[str, str]) -> tuple[dict[str, Counter[str]], list[str]]:
    """Per module, mutants by column; and the survivors nobody explained."""
    counts: dict[str, Counter[str]] = {}
    unexplained = []
    for line in results.splitlines():
        match = RESULT.match(line)
        if not match or match["status"] == "not checked":
            continue
        status, name = match["status"], match["name"]
        if status == "survived":
            if name in equivalent:
                status = "gap" if equivalent[name].startswith("gap:") else "equivalent"
            else:
                unexplained.append(name)
        column = status if status in COLUMNS else "other"
        counts.setdefault(match["module"], Counter())[column] += 1
    return counts, unexplained


def main() -> int:
    results = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"],
                             check=True, capture_output=True, text=True).stdout
    counts, unexplained = tally(results, equivalent_mutants(EQUIVALENT.read_text("utf-8")))
    print(f"{'module':28} {'total':>6} " + " ".join(f"{c:>10}" for c in COLUMNS))
    for module, counter in sorted(counts.items()):
        print(f"{module:28} {sum(counter.values()):>6} "
              + " ".join(f"{counter[c]:>10}" for c in COLUMNS))
    for name in unexplained:
        print(f"survived, not explained: {name}")
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
