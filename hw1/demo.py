"""The embedded demo data set: a small, balanced subset of real Fashion-MNIST.

Fashion-MNIST (Zalando SE, MIT licence) comes from Debian's ``dataset-fashion-mnist``
package. The subset is stored in the package as one compressed NumPy archive and written
out in the HW1 layout the first time ``data=demo`` is used:

    <root>/train/<garment>/<name>.png
    <root>/val/<garment>/<name>.png
    <root>/test/<name>.png
    <root>/test_labels.csv            (the test answers, so the demo can report test accuracy)

``python -m hw1.demo build`` remakes the archive from the Debian package; ``python -m hw1.demo
subset ROOT`` draws a second set from it without any of the demo's images.
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
