"""Parity of the fast train pipeline with the reference: both are given the same drawn
parameters (crop box, flip, angle, shift, colour factors and order) on real image files,
and their outputs compared per image (mean absolute difference in grey levels, PSNR),
split by crop scale, by enlarging vs reducing, by image size, with and without colour.

    python -m hw1.parity [--sets demo photos photos64 small] [--draws 4] [--images 24]
    python -m hw1.parity jpegs SRC DST [--min 20] [--max 40] [--seed 0]

``demo``: the demo's 32 px Fashion-MNIST PNGs at 32 px, with the demo's augmentation;
``photos``: quality-90 JPEGs around 500x375 at 224 px; ``photos64``: the same at 64 px,
most of them decoded at a reduced scale;
``small``: JPEGs of 24-56 px at 64 px, every crop enlarged. ``jpegs`` rewrites a data set
in the HW1 layout (e.g. the demo's) as quality-90 JPEGs whose longer side is drawn from
MIN..MAX px, a set to train at a size its images must be enlarged to.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hw1.benchmarks.parity import SETS, make_jpegs, measure, table
from hw1.utils.signals import started


def main(argv: list[str] | None = None) -> None:
    started()  # Ctrl-C is Python's again (hw1.utils.signals)
    parser = argparse.ArgumentParser(prog="python -m hw1.parity", description=__doc__)
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument("--images", type=int, default=24, help="files per set")
    parser.add_argument("--draws", type=int, default=4, help="parameter draws per file")
    parser.add_argument("--seed", type=int, default=0)
    sub = parser.add_subparsers(dest="command")
    jpegs = sub.add_parser("jpegs", help="a data set rewritten as JPEGs of varied sizes")
    jpegs.add_argument("source", type=Path)
    jpegs.add_argument("target", type=Path)
    jpegs.add_argument("--min", type=int, default=20, help="shortest longer side, px")
    jpegs.add_argument("--max", type=int, default=40, help="longest longer side, px")
    jpegs.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "jpegs":
        print(make_jpegs(args.source, args.target, (args.min, args.max), args.seed))
        return
    rows = []
    for name in args.sets:
        files, size, augment = SETS[name]
        rows += measure(files(args.images), size, args.draws, args.seed, name, **augment)
    print(
        f"{args.images} files per set, {args.draws} draws each, the report's augmentation "
        "(demo: the demo's); "
        "MAD: mean absolute difference in grey levels (mean), PSNR in dB (median); "
        "device: the deferred steps on the reference's own crop"
    )
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
