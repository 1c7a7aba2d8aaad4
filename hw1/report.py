"""Summarise training runs against the report: ``python -m hw1.report DIR [DIR ...]``.

Reads every run under the given directories (a run is a directory with a ``metrics.json``,
as ``python -m hw1.train -m experiment=depth`` leaves under ``outputs/multirun/...``) and
writes, into ``--out`` (default: the first DIR):

- ``report.md``: a table per family, one row per report ID, with its settings, parameters,
  best validation accuracy and its 95 % confidence interval, best epoch, epochs, wall time,
  test accuracy when the data has test labels, and the report's own number beside it;
- ``report.csv``: the same rows, one line each, for spreadsheets;
- ``curves.png``: validation accuracy per epoch of every run, one panel per family, read
  from the runs' TensorBoard event files.

Runs of one ID with several seeds become one row: mean ± standard deviation.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hw1.reporting.runs import report
from hw1.utils.errors import reported


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m hw1.report", description=__doc__.split("\n")[0]
    )
    parser.add_argument("dirs", nargs="*", type=Path, help="multirun or run directories")
    parser.add_argument("--out", type=Path, help="where to write (default: the first DIR)")
    parser.add_argument(
        "--mlflow",
        nargs=2,
        metavar=("URI", "EXPERIMENT"),
        help="read the runs from an MLflow experiment instead (a sweep's: its directory)",
    )
    args = parser.parse_args(argv)
    if bool(args.dirs) == bool(args.mlflow):
        parser.error("give run directories, or --mlflow URI EXPERIMENT (with --out DIR)")
    if args.mlflow and not args.out:
        parser.error("--mlflow needs --out DIR")
    out = args.out or args.dirs[0]
    rows = report(args.dirs, out, mlflow=tuple(args.mlflow) if args.mlflow else None)
    print(f"{len(rows)} IDs from {sum(r['runs'] for r in rows)} runs")
    for name in ("report.md", "report.csv", "curves.png"):
        print(f"  {out / name}")


if __name__ == "__main__":
    with reported():
        main()
