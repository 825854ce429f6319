"""Turn job directories into paper-style tables and figures, beside the paper's numbers.

    python analyze.py outputs/sweeps/table1 [more dirs ...] [--out DIR] [--no-figures]

Writes results.csv, tables.md, tables.tex and figures (PNG + PDF) into DIR/analysis
(the first DIR) or --out, and prints the Markdown tables.
"""

import argparse
import logging
import sys
from pathlib import Path

from posinfo.errors import PosinfoError
from posinfo.report import write_report
from posinfo.io import quiet_closed_pipe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", help="sweep or job folders, searched recursively for result.json")
    parser.add_argument("--out", help="output folder (default: DIR/analysis of the first DIR)")
    parser.add_argument("--no-figures", action="store_true", help="write the CSV and tables only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        with quiet_closed_pipe():  # `python analyze.py … | head`
            write_report(args.dirs, args.out, figures=not args.no_figures)
    except PosinfoError as e:
        print(f"analyze: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # --out names a file, or a folder that cannot be written
        where = e.filename or args.out
        why = "is a file" if args.out and Path(args.out).is_file() else f"cannot be written ({e.strerror or e})"
        print(f"analyze: error: {where} {why}: give --out a folder that can be written (new or existing)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
