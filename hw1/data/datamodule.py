"""The data: folders in the HW1 layout, wrapped in a LightningDataModule.

<root>/train/<class>/<image>
<root>/val/<class>/<image>
<root>/test/<image>          (flat, unlabeled; optional)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from hw1.data import demo
from hw1.data.datasets import LAYOUT, ClassFolders, UnlabeledImages, view_loader
from hw1.data.device_batches import DeviceBatches
from hw1.data.samplers import BalancedSampler
from hw1.data.scan import (
    check_test_images,
    class_names,
    display_path,
    image_files,
    is_utf8,
    labelled_files,
    readable_samples,
)
from hw1.data.splits import fold_split, stratified_split
from hw1.transforms.device import FinishOnDevice
from hw1.transforms.fast_pipeline import DraftDecoder, FastTrainPreset
from hw1.transforms.presets import EvalSpec, eval_preset, eval_spec, train_preset
from hw1.utils.errors import UserFileNotFoundError, UserValueError
from hw1.utils.weights import resolve_weights

log = logging.getLogger(__name__)


# data.deferred: where the fast pipeline's last steps run (FolderDataModule.deferred_in_workers)
DEFERRED = ("auto", "workers", "device")


def train_pipeline(name: str, spec: EvalSpec, **augment: Any):
    """``data.pipeline``: ``fast`` (uint8 out, normalised on the device) or ``reference``
    (torchvision's transforms, normalised float out; the yardstick)."""
    if name == "fast":
        return FastTrainPreset(spec, **augment)
    if name == "reference":
        return train_preset(spec, **augment)
    raise UserValueError(f"data.pipeline={name}: use fast or reference")


def local_rank() -> int:
    """This process's rank on its node, before any process group exists: DDP's launchers
    (Lightning's, torchrun, SLURM's srun) put it in the environment; 0 without DDP."""
    for name in ("LOCAL_RANK", "SLURM_LOCALID"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


class FolderLayout:
    """Which images are labelled with which class, in the HW1 layout: ``ROOT/train/<class>/``,
    ``ROOT/val/<class>/`` (or a seeded, stratified part of train: ``val_split``; or K folds
    of train and val pooled: ``folds``/``fold``) and ``ROOT/test/``. Reads folders and the
    image check's results; builds no dataset and no transform (the data module does)."""

    def __init__(
        self,
        root: str | os.PathLike,
        seed: int = 0,
        val_split: float | None = None,
        folds: int | None = None,
        fold: int = 0,
        max_image_pixels: int | None = None,
    ) -> None:
        if val_split is not None and not 0 < val_split < 1:
            raise UserValueError(f"data.val_split={val_split}: use null or a fraction in (0, 1)")
        if folds is not None and not (folds >= 2 and 0 <= fold < folds):
            raise UserValueError(
                f"data.folds={folds} data.fold={fold}: use folds >= 2, 0 <= fold < folds"
            )
        self.root = Path(root).expanduser()
        self.seed, self.val_split, self.folds, self.fold = seed, val_split, folds, fold
        self.max_image_pixels = max_image_pixels

    @property
    def test_dir(self) -> Path:
        return self.root / "test"

    def test_images(self) -> list[Path]:
        """The test folder's images; none without a test/ folder."""
        return image_files(self.test_dir) if self.test_dir.is_dir() else []

    def has_val_dir(self) -> bool:
        return (self.root / "val").is_dir()

    def check(self) -> None:
        """The folders training needs: root, train/, and val/ unless data.val_split."""
        if not self.root.is_dir():
            raise UserFileNotFoundError(f"data.root={self.root}: no such folder.\n{LAYOUT}")
        if not (self.root / "train").is_dir():
            raise UserFileNotFoundError(f"data.root={self.root} has no train/ folder.\n{LAYOUT}")
        if not self.has_val_dir() and self.val_split is None and self.folds is None:
            raise UserFileNotFoundError(
                f"data.root={self.root} has no val/ folder: add one, or hold out a seeded, "
                f"stratified part of train with data.val_split=0.1.\n{LAYOUT}"
            )

    def class_names(self) -> list[str]:
        """train/'s class folders, in hw1's order; val/ must hold the same ones."""
        names = class_names(self.root / "train")
        if not names:
            raise UserFileNotFoundError(f"{self.root / 'train'} has no class folders.\n{LAYOUT}")
        not_utf8 = [display_path(self.root / "train" / n) for n in names if not is_utf8(n)]
        if not_utf8:
            raise UserValueError(
                f"class folder names that are not valid UTF-8, which prediction.csv cannot "
                f"hold: {', '.join(not_utf8)}. Rename them (in val/ too)."
            )
        val = set(class_names(self.root / "val")) if self.has_val_dir() else set(names)
        if val != set(names):
            raise UserValueError(
                f"train/ and val/ under {self.root} have different class folders: "
                f"missing in val: {sorted(set(names) - val)}; "
                f"missing in train: {sorted(val - set(names))}"
            )
        return names

    def labelled(self, names: list[str]) -> dict[str, list[tuple[str, int]]]:
        """(path, class index) for train and val: unreadable images left out with one warning
        (found by a parallel decode, cached in the data root); val split off train when
        there is no val/ folder and data.val_split is set."""
        splits = ("train", "val") if self.has_val_dir() else ("train",)
        found = {split: labelled_files(self.root / split, names) for split in splits}
        every = [x for s in splits for x in found[s]]
        readable = set(readable_samples(every, self.root, self.max_image_pixels))
        kept = {s: [x for x in found[s] if x in readable] for s in splits}
        empty = [
            str(self.root / split / names[c])
            for split in splits
            for c in sorted(set(range(len(names))) - {c for _, c in kept[split]})
        ]
        if empty:
            raise UserValueError(
                "class folders without a readable image: " + ", ".join(empty) + ". Add "
                "images or remove the folder (from train/ and val/ alike)."
            )
        if self.folds is not None:
            pooled = kept["train"] + kept.get("val", [])
            kept["train"], kept["val"] = fold_split(pooled, self.folds, self.fold, self.seed)
        elif not self.has_val_dir():
            kept["train"], kept["val"] = stratified_split(kept["train"], self.val_split, self.seed)
        return kept


class FolderDataModule(DeviceBatches):
    """Train/val/test folders in the HW1 layout with the report's augmentation.

    ``arch`` and ``weights`` are the model's (conf/data interpolates them): the eval resize
    and normalisation come from the weights' own transforms. Nothing is read from disk
    until ``validate`` (or ``setup``, which validates if no one has).
    """

    def __init__(
        self,
        root: str | os.PathLike = "data",
        image_size: int = 224,
        batch_size: int = 64,
        num_workers: int = 4,
        arch: str = "resnet50",
        weights: str | None = None,
        augment: dict[str, Any] | None = None,
        tta: str = "report",
        seed: int = 0,
        val_split: float | None = None,
        pipeline: str = "fast",
        folds: int | None = None,
        fold: int = 0,
        eval_size: int | None = None,
        max_image_pixels: int | None = None,
        sampler: str | None = None,
        deferred: str = "auto",
    ) -> None:
        """``pipeline``: the train augmentation's implementation, ``fast`` or
        ``reference`` (``train_pipeline``). ``folds=K``: cross-validation,
        train and val pooled and dealt into K stratified, seeded folds; ``fold`` is the one
        validated on. ``eval_size``: evaluate (val, TTA, predict) at another size than
        ``image_size`` trains at, e.g. train at 224 and test at 288. ``max_image_pixels``:
        larger images are left out (test images: an error), their size reported; default
        Pillow's limit (``hw1.data.scan.DEFAULT_MAX_PIXELS``). ``sampler``: null (shuffle) or
        ``balanced`` (``hw1.data.samplers.BalancedSampler``: every class equally often).
        ``deferred``: where the fast pipeline's colour jitter, rotation and shift run
        (``deferred_in_workers``): ``auto``, ``workers`` or ``device``."""
        super().__init__()
        if sampler not in (None, "balanced"):
            raise UserValueError(f"data.sampler={sampler}: use null (shuffle) or balanced")
        if deferred not in DEFERRED:
            raise UserValueError(f"data.deferred={deferred}: use {', '.join(DEFERRED)}")
        self.layout = FolderLayout(root, seed, val_split, folds, fold, max_image_pixels)
        # Not logged: train logs the whole run's settings. Kept in checkpoints, which load
        # with weights_only, hence a plain string for the root.
        self.save_hyperparameters(logger=False)
        self.hparams.root = os.fspath(root)
        self.root = self.layout.root
        resolved = resolve_weights(arch, weights)
        # A local state-dict file says nothing about its preprocessing: ImageNet defaults.
        known = resolved if not isinstance(resolved, Path) else None
        self.eval_spec: EvalSpec = eval_spec(eval_size or image_size, known)
        train_spec = eval_spec(image_size, known) if eval_size else self.eval_spec
        self.train_transform = train_pipeline(pipeline, train_spec, **(augment or {}))
        self.eval_transform = eval_preset(self.eval_spec)
        self.finish = FinishOnDevice(self.eval_spec.mean, self.eval_spec.std)
        # Filled by validate():
        self.class_names: list[str] | None = None
        self.samples: dict[str, list[tuple[str, int]]] | None = None
        self.train_set = self.val_set = self.test_set = None

    def validate(self, test_images: bool = True) -> None:
        """Raise what would stop training, before any model is built: a missing folder,
        unreadable test images (unless ``test_images=False``), class folders that differ
        between train/ and val/ or hold no readable image. Sets ``class_names`` and
        ``samples``; every image is decoded once, the results cached in the data root.

        Under DDP every process validates: only local rank zero decodes the images (and
        sets ``samples``); the others check the folders and read its cache in ``setup``."""
        self.layout.check()
        decodes = local_rank() == 0
        if decodes and test_images and self.layout.test_dir.is_dir():
            tests = check_test_images(self.layout.test_dir, self.hparams.max_image_pixels)
            if not tests:
                log.warning(
                    "test/ has no images: no prediction.csv will be written (%s)",
                    display_path(self.layout.test_dir),
                )
        self.class_names = self.layout.class_names()
        if decodes:
            self.samples = self.layout.labelled(self.class_names)

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", "validate", None) and self.val_set is None:
            if self.class_names is None:
                self.validate()
            if self.trainer is not None:  # DDP: wait for local rank zero's image check
                self.trainer.strategy.barrier("hw1 image check")
            if self.samples is None:  # another process decoded them: its cache has them
                self.samples = self.layout.labelled(self.class_names)
            train, val = self.samples["train"], self.samples["val"]
            folder = self.root / "train"
            if isinstance(self.train_transform, FastTrainPreset):  # it decodes, too
                decoder = DraftDecoder(self.train_transform, self.deferred_in_workers())
                self.train_set = ClassFolders(folder, self.class_names, None, train, decoder)
            else:
                self.train_set = ClassFolders(folder, self.class_names, self.train_transform, train)
            val_folder = self.root / "val" if self.layout.has_val_dir() else folder
            self.val_set = ClassFolders(val_folder, self.class_names, self.eval_transform, val)
        test_dir = self.layout.test_dir
        if stage in ("predict", None) and self.test_set is None and test_dir.is_dir():
            self.test_set = UnlabeledImages(test_dir)

    def deferred_in_workers(self) -> bool:
        """Whether the loader workers finish the fast pipeline's images (its colour jitter,
        rotation and shift, with the reference's PIL kernels: ``FastTrainPreset.
        finish_as_reference``) rather than the device, batched (``Deferred``). ``auto``: the
        workers when the trainer's device is the CPU, where PIL's integer kernels cost less
        than the batched float steps and run beside the training step, not between steps
        (docs/performance.md); outside a trainer, when no GPU is found. Either way the same
        draws, the same images within a level at a few pixels (tests/test_data.py)."""
        if self.hparams.deferred != "auto":
            return self.hparams.deferred == "workers"
        if self.trainer is not None:
            return self.trainer.strategy.root_device.type == "cpu"
        return not torch.cuda.is_available()

    def _loader(self, dataset: Dataset, shuffle: bool = False) -> DataLoader:
        balanced = shuffle and self.hparams.sampler == "balanced"
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            shuffle=shuffle and not balanced,
            sampler=BalancedSampler(dataset.targets, self.hparams.seed) if balanced else None,
            # BatchNorm heads (v3, v4) cannot train on a last batch of one image.
            drop_last=shuffle and len(dataset) > self.hparams.batch_size,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def predict_dataloader(self) -> DataLoader:
        """The test folder, each image as its TTA views (``tta``: report or none)."""
        if self.test_set is None:
            raise UserFileNotFoundError(f"{self.layout.test_dir}: no test folder to predict")
        hp = self.hparams
        return view_loader(
            self.test_set, self.eval_spec, hp.tta, hp.seed, hp.batch_size, hp.num_workers
        )


class DemoDataModule(FolderDataModule):
    """The embedded Fashion-MNIST subset, written out under ``root`` on first use."""

    def prepare_data(self) -> None:
        demo.extract(self.root)
