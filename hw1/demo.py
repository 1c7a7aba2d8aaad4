"""The demo's data set: ``python -m hw1.demo build`` remakes the archive from Debian's
``dataset-fashion-mnist``; ``python -m hw1.demo subset ROOT`` draws a second set from it
without any of the demo's images (hw1.data.demo).
"""

from __future__ import annotations

from hw1.data.demo import build_archive, make_subset
from hw1.utils.errors import reported

USAGE = """usage:
  python -m hw1.demo build                    remake the demo archive from dataset-fashion-mnist
  python -m hw1.demo subset ROOT [--seed N]   a second set without the demo's images"""


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m hw1.demo", usage=USAGE)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build")
    subset = sub.add_parser("subset")
    subset.add_argument("root")
    subset.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    with reported():
        print(
            build_archive() if args.command == "build" else make_subset(args.root, seed=args.seed)
        )


if __name__ == "__main__":
    main()
