"""The compatibility matrix (family x check -> pass/FAIL) from a test run, for the README.

The test suite writes build/compat.json; ``python -m workbench.compat README.md`` rewrites the
table between the README's markers, and ``--check`` fails when the README is out of date.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

START, END = "<!-- compat:start -->", "<!-- compat:end -->"
MARK = {"pass": "pass", "FAIL": "**FAIL**", "skip": "n/a"}  # skipped: the family lacks what is checked


def render(results: dict[str, dict[str, str]]) -> str:
    checks = sorted({c for per in results.values() for c in per})
    lines = ["| family | " + " | ".join(checks) + " |", "|---" * (len(checks) + 1) + "|"]
    for family in sorted(results):
        cells = [MARK.get(results[family].get(c, ""), "-") for c in checks]
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def replace_block(text: str, table: str) -> str:
    if START not in text or END not in text:
        raise SystemExit(f"README has no {START} ... {END} block")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("readme", type=Path)
    parser.add_argument("--results", type=Path, default=Path("build/compat.json"))
    parser.add_argument("--check", action="store_true", help="fail if the README table is stale")
    args = parser.parse_args(argv)
    if not args.results.exists():
        print(f"{args.results} not found: run the test suite first", file=sys.stderr)
        return 1
    table = render(json.loads(args.results.read_text()))
    text = args.readme.read_text()
    new = replace_block(text, table)
    if args.check:
        if new != text:
            print("README compatibility matrix differs from this test run; run `make compat`",
                  file=sys.stderr)
            print(table, file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
