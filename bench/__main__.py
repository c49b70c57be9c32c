"""``python -m bench``: list the groups, run one, or write the performance tables from the results.

    python -m bench list
    python -m bench run decode --quick
    python -m bench run catalog --set n=52224
    python -m bench report

Exit status 2 for a usage error (an unknown group or parameter), 1 when a run fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import groups
from bench.harness import RESULTS, read_rows, stamp, write_rows
from bench.report import DOCS_RESULTS, render


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="name the groups")
    run = sub.add_parser("run", help="run one group and store its rows")
    run.add_argument("group")
    run.add_argument("--quick", action="store_true", help="small N: a minute or two on 2 cores")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override one of the group's parameters (repeatable)")  # fmt: skip
    run.add_argument("--results", type=Path, default=RESULTS, help="folder of the GROUP.jsonl files")
    report = sub.add_parser("report", help="write the performance tables from the stored rows")
    report.add_argument("--results", type=Path, default=RESULTS)
    report.add_argument("--out", type=Path, default=DOCS_RESULTS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the command; return the exit status."""
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.command == "list":
        for name in groups.NAMES:
            print(f"{name:<16} {groups.summary(groups.load(name))}")
        return 0
    if args.command == "report":
        rows = [r for p in sorted(args.results.glob("*.jsonl")) for r in read_rows(p)]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        summaries = {name: groups.summary(groups.load(name)) for name in groups.NAMES}
        args.out.write_text(render(rows, order=groups.NAMES, summaries=summaries))
        print(f"wrote {args.out} ({len(rows)} rows)")
        return 0
    try:
        module = groups.load(args.group)
        params = groups.with_overrides(module.QUICK if args.quick else module.Params(), args.set)
    except (groups.UnknownGroup, ValueError) as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    try:
        rows = stamp(args.group, params, args.quick, lambda: module.run(params))
    except SystemExit as e:  # a CLI called in-process ends with SystemExit even when it succeeds
        print(f"error: group {args.group} exited ({e.code}) before returning its rows", file=sys.stderr)
        return 1
    if not rows:
        print(f"error: group {args.group} measured nothing", file=sys.stderr)
        return 1
    path = args.results / f"{args.group}.jsonl"
    write_rows(path, rows)
    for r in rows:
        print(f"{r.case:<48} {r.metric:<24} {r.value:>12.6g} {r.unit}")
    print(f"{len(rows)} rows -> {path} (load average {rows[0].load_start} -> {rows[0].load_end})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
