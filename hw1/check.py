"""The dataset report: ``python -m hw1.check data.root=ROOT`` (takes any training override).

Prints the classes, images per split and per class, class imbalance, unreadable files,
files duplicated across splits and image sizes; exits with status 1 when something would
stop training. Decoding is shared with training: its results are cached in the data root.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from hw1.data.datamodule import FolderDataModule
from hw1.data.image_check import ImageInfo, check_test_images, inspect_images, left_out_lines
from hw1.data.samplers import IMBALANCED
from hw1.data.scan import class_names, display_path, image_files, labelled_files
from hw1.utils.config import CONF_PATH
from hw1.utils.errors import reported


def spread(values: list[int]) -> str:
    return f"{min(values)} / {statistics.median(values):g} / {max(values)}" if values else "-"


def split_files(root: Path) -> dict[str, list[tuple[Path, str | None]]]:
    """Every image of each split present, with its class folder (None in test/)."""
    found: dict[str, list[tuple[Path, str | None]]] = {}
    for split in ("train", "val"):
        if (root / split).is_dir():
            names = class_names(root / split)
            found[split] = [(Path(p), names[c]) for p, c in labelled_files(root / split, names)]
    if (root / "test").is_dir():
        found["test"] = [(p, None) for p in image_files(root / "test")]
    return found


def table(root: Path, found: dict, info: dict[Path, ImageInfo]) -> list[str]:
    lines = [f"{'split':<6}{'images':>8}  {'per class min / median / max':<30}{'max/min':>8}"]
    advice = []
    for split, files in found.items():
        readable = [(p, c) for p, c in files if info[p].readable]
        per_class, ratio = "", ""
        if split != "test":
            counts = Counter(c for _, c in readable)
            sizes = [counts.get(name, 0) for name in class_names(root / split)]
            per_class = spread(sizes)
            imbalance = max(sizes) / min(sizes) if sizes and min(sizes) else math.inf
            ratio = f"{imbalance:.1f}"
            if split == "train" and IMBALANCED <= imbalance < math.inf:
                advice.append(
                    f"train's classes are imbalanced (max/min {ratio}): to draw each class "
                    "equally often train with data.sampler=balanced, or weight the loss "
                    "with loss.class_weights=balanced"
                )
        lines.append(f"{split:<6}{len(readable):>8}  {per_class:<30}{ratio:>8}")
    lines += advice
    lines.append("image sizes (width; height: min / median / max)")
    for split, files in found.items():
        kept = [info[p] for p, _ in files if info[p].readable]
        widths, heights = [i.width for i in kept], [i.height for i in kept]
        lines.append(f"  {split:<6}{spread(widths)}; {spread(heights)}")
    return lines


def duplicates(root: Path, found: dict, info: dict[Path, ImageInfo]) -> list[list[str]]:
    """Groups of identical readable files (same SHA-1) that span more than one split."""
    by_hash: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    for split, files in found.items():
        for p, _ in files:
            if info[p].readable:
                by_hash[info[p].sha1].append((split, p))
    return sorted(
        [display_path(p.relative_to(root)) for _, p in group]
        for group in by_hash.values()
        if len({split for split, _ in group}) > 1
    )


def report(cfg: DictConfig) -> tuple[str, list[str]]:
    """(the report's text, the problems that would stop training)."""
    datamodule: FolderDataModule = instantiate(cfg.data)
    if datamodule.hparams.source != "folder":
        return source_report(datamodule)
    root = datamodule.root
    try:
        datamodule.layout.check()
    except FileNotFoundError as e:
        return "\n".join([f"dataset {root}", *problem_lines([str(e)])]), [str(e)]
    found = split_files(root)
    limit = datamodule.hparams.max_image_pixels
    info = inspect_images([p for files in found.values() for p, _ in files], root, limit)

    problems = []
    # what training meets: class folders, empty classes; the test images are checked next
    checks = [lambda: datamodule.validate(test_images=False)]
    if "test" in found:
        checks.append(lambda: check_test_images(datamodule.layout.test_dir, limit))
    for check in checks:
        try:
            check()
        except (FileNotFoundError, ValueError) as e:
            problems.append(str(e))

    names = class_names(root / "train")
    listed = ", ".join(display_path(n) for n in names[:30]) + (", ..." if len(names) > 30 else "")
    lines = [f"dataset {display_path(root)}", f"classes: {len(names)} ({listed})"]
    hp = datamodule.hparams
    if hp.folds:
        lines.append(
            f"val: cross-validation, train and val pooled into data.folds={hp.folds},"
            f" fold {hp.fold} validated on"
        )
    elif not datamodule.layout.has_val_dir():
        lines.append(f"val: no val/ folder; data.val_split={hp.val_split} of train")
    lines += table(root, found, info)
    if "test" in found and not found["test"]:
        lines.append("test/ has no images: no prediction.csv will be written")
    bad = [p for files in found.values() for p, _ in files if not info[p].readable]
    lines.append(f"unreadable files: {len(bad)} (train/val ones are left out of training)")
    lines += [f"  {line}" for line in left_out_lines(bad, info, limit, root)]
    groups = duplicates(root, found, info)
    lines.append(f"files duplicated across splits: {len(groups)}")
    lines += ["  " + " = ".join(group) for group in groups]
    return "\n".join(lines + problem_lines(problems)), problems


def source_report(datamodule: FolderDataModule) -> tuple[str, list[str]]:
    """The report of a CSV, datasets or shards source: what training meets (the image
    check leaves unreadable files out, named in its warning), the classes and the images
    per split and class."""
    hp = datamodule.hparams
    lines = [f"dataset {hp.root} (data.source={hp.source})"]
    try:
        datamodule.validate()
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        return "\n".join(lines + problem_lines([str(e)])), [str(e)]
    names = datamodule.class_names
    listed = ", ".join(names[:30]) + (", ..." if len(names) > 30 else "")
    lines.append(f"classes: {len(names)} ({listed})")
    lines.append(f"{'split':<6}{'images':>8}  {'per class min / median / max':<30}{'max/min':>8}")
    for split, samples in datamodule.samples.items():
        counts = Counter(c for _, c in samples)
        sizes = [counts.get(c, 0) for c in range(len(names))]
        ratio = max(sizes) / min(sizes) if min(sizes) else math.inf
        lines.append(f"{split:<6}{len(samples):>8}  {spread(sizes):<30}{ratio:>8.1f}")
    lines.append(f"{'test':<6}{len(datamodule.layout.test_images()):>8}")
    return "\n".join(lines + problem_lines([])), []


def problem_lines(problems: list[str]) -> list[str]:
    if not problems:
        return ["training can start"]
    return [f"problems that stop training: {len(problems)}"] + [
        "  " + "\n  ".join(p.splitlines()) for p in problems
    ]


@hydra.main(version_base="1.3", config_path=CONF_PATH, config_name="check")
def main(cfg: DictConfig) -> None:
    with reported():
        text, problems = report(cfg)
    print(text)
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
