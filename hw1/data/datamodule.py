"""The LightningDataModule: a source (``hw1.data.sources``: the HW1 folder layout by
default, a CSV, a datasets dataset or LitData shards) says which images are labelled with
which class; ``FolderDataModule`` builds the train and eval pipelines, datasets and
loaders from it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from hw1.data import demo
from hw1.data.datasets import ClassFolders, SeededSamples, view_loader
from hw1.data.device_batches import DeviceBatches
from hw1.data.samplers import BalancedSampler, ResumableLoader, SeededDraws, ShuffledOrder
from hw1.data.scan import display_path
from hw1.data.source_choice import make_source
from hw1.data.sources import EncodedImages, load_encoded
from hw1.transforms.device import FinishOnDevice
from hw1.transforms.fast_pipeline import DraftDecoder, FastTrainPreset
from hw1.transforms.presets import EvalSpec, eval_preset, eval_spec, train_preset
from hw1.utils.errors import UserFileNotFoundError, UserValueError, require_positive
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
        source: str = "folder",
        **source_options: Any,
    ) -> None:
        """``pipeline``: the train augmentation's implementation, ``fast`` or
        ``reference`` (``train_pipeline``). ``folds=K``: cross-validation,
        train and val pooled and dealt into K stratified, seeded folds; ``fold`` is the one
        validated on. ``eval_size``: evaluate (val, TTA, predict) at another size than
        ``image_size`` trains at, e.g. train at 224 and test at 288. ``max_image_pixels``:
        larger images are left out (test images: an error), their size reported; default
        Pillow's limit (``hw1.data.image_check.DEFAULT_MAX_PIXELS``). ``sampler``: null
        (shuffle) or ``balanced`` (``hw1.data.samplers.BalancedSampler``: every class equally
        often).
        ``source``: where the labelled images come from, ``folder`` (the HW1 layout under
        ``root``), ``csv``, ``hf`` or ``litdata`` (``hw1.data.sources``), with its own keys
        in ``source_options`` (the CSV files, the columns).

        ``deferred``: where the fast pipeline's colour jitter, rotation and shift run
        (``deferred_in_workers``): ``auto``, ``workers`` or ``device``."""
        super().__init__()
        require_positive(
            data__batch_size=batch_size, data__image_size=image_size, data__eval_size=eval_size
        )
        if num_workers < 0:
            raise UserValueError(f"data.num_workers={num_workers}: use 0 (no workers) or more")
        if sampler not in (None, "balanced"):
            raise UserValueError(f"data.sampler={sampler}: use null (shuffle) or balanced")
        if deferred not in DEFERRED:
            raise UserValueError(f"data.deferred={deferred}: use {', '.join(DEFERRED)}")
        self.layout = make_source(
            source, root, seed, val_split, folds, fold, max_image_pixels, **source_options
        )
        if sampler == "balanced" and getattr(self.layout, "streams", False):
            raise UserValueError("data.sampler=balanced needs a source other than litdata")
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
        if decodes and test_images:
            tests = self.layout.check_test_images(self.hparams.max_image_pixels)
            if tests is not None and not tests:
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
            if isinstance(self.train_transform, FastTrainPreset):  # it decodes, too
                transform, loader = (
                    None,
                    DraftDecoder(self.train_transform, self.deferred_in_workers()),
                )
            else:
                transform, loader = self.train_transform, None
            if getattr(self.layout, "streams", False):  # LitData shards: streamed, no list
                self.train_set = self.layout.stream("train", transform, loader, shuffle=True)
                self.val_set = self.layout.stream("val", self.eval_transform)
            elif self.layout.read is not None:  # file bytes, as a datasets dataset has them
                read = self.layout.read
                self.train_set = EncodedImages(read, train, transform, loader or load_encoded)
                self.val_set = EncodedImages(read, val, self.eval_transform)
            else:
                self.train_set = self._folders(train, transform, loader, "train")
                self.val_set = self._folders(val, self.eval_transform, None, "val")
        if stage in ("predict", None) and self.test_set is None:
            self.test_set = self.layout.test_set()

    def _folders(self, samples, transform, loader, split: str) -> ClassFolders:
        """Image files: the folder layout's or a CSV's rows."""
        folder = self.root / split if (self.root / split).is_dir() else self.root / "train"
        extra = {"loader": loader} if loader is not None else {}
        return ClassFolders(folder, self.class_names, transform, samples, **extra)

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
        hp = self.hparams
        if getattr(self.layout, "streams", False):
            return self.layout.loader(dataset, hp.batch_size, hp.num_workers)
        common = {
            "batch_size": hp.batch_size,
            "num_workers": hp.num_workers,
            "persistent_workers": hp.num_workers > 0,
            "pin_memory": torch.cuda.is_available(),
            # The seed of the workers' own generators, drawn from this one rather than the
            # global generator: making an iterator then draws nothing from the generator
            # the training step draws from (BatchMix), which RandomState restores.
            "generator": torch.Generator().manual_seed(hp.seed),
        }
        if not shuffle:
            return DataLoader(dataset, **common)
        return self._train_loader(dataset, common)

    def _train_loader(self, dataset: Dataset, common: dict[str, Any]) -> DataLoader:
        """The training loader: an order drawn from (seed, epoch), every sample's draws
        seeded by its place in it (SeededDraws), resumable in the middle of an epoch
        (ResumableLoader): a run stopped and resumed trains on the batches, augmented
        alike, that the uninterrupted run does."""
        seed = self.hparams.seed
        if self.hparams.sampler == "balanced":
            order = BalancedSampler(dataset.targets, seed)
        else:
            order = ShuffledOrder(dataset, seed)
        return ResumableLoader(
            SeededSamples(dataset),
            sampler=SeededDraws(order, seed),
            # BatchNorm heads (v3, v4) cannot train on a last batch of one image.
            drop_last=len(dataset) > self.hparams.batch_size,
            **common,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def predict_dataloader(self) -> DataLoader:
        """The test folder, each image as its TTA views (``tta``: report or none)."""
        if self.test_set is None:
            raise UserFileNotFoundError(f"data.root={self.root}: no test images to predict")
        hp = self.hparams
        return view_loader(
            self.test_set, self.eval_spec, hp.tta, hp.seed, hp.batch_size, hp.num_workers
        )


class DemoDataModule(FolderDataModule):
    """The embedded Fashion-MNIST subset, written out under ``root`` on first use."""

    def prepare_data(self) -> None:
        demo.extract(self.root)
