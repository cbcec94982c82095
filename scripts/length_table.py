"""Write explistops_jax/lengths_table.json: the token counts of every built-in split.

For each built-in dataset and split: the examples, the longest input (bracket and
LRA's parenthesized notation) and the longest target of each explanation style, in
domain-vocabulary tokens with EOS, and their totals (for padding shares). The
table lets a run check its lengths without a pass over its data
(explistops_jax.lengths); tests regenerate the CPU datasets' rows and spot-check
explistops30's.

    python scripts/length_table.py            # every built-in dataset, rewrites the file
    python scripts/length_table.py --check    # compare instead of writing (exit 1 if stale)
"""

from __future__ import annotations

import argparse
import sys
import time

from explistops_jax import data, lengths, rundir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    args = parser.parse_args(argv)
    started = time.time()
    rows = lengths.build_table(data.BUILTIN, workers=args.workers)
    text = lengths.table_text(rows)
    print(f"{sum(len(r) for r in rows.values())} splits of {len(rows)} datasets "
          f"in {time.time() - started:.0f} s", file=sys.stderr)
    if args.check:
        same = lengths.TABLE_PATH.read_text() == text
        print("up to date" if same else f"{lengths.TABLE_PATH} is stale", file=sys.stderr)
        return 0 if same else 1
    rundir.write_text(lengths.TABLE_PATH, text)
    print(f"wrote {lengths.TABLE_PATH}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
