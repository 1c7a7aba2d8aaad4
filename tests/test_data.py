from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import datamodule, make_hw1_folder, photo
from test_model import classifier
from torch import nn
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF
from torchvision.transforms.v2.functional import to_pil_image

from hw1.benchmarks.parity import DEMO_AUGMENT
from hw1.data import image_check
from hw1.data.datamodule import train_pipeline
from hw1.data.datasets import ClassFolders, UnlabeledImages
from hw1.data.device_batches import LoaderDataModule
from hw1.data.scan import class_names
from hw1.transforms.device import FinishOnDevice
from hw1.transforms.fast_pipeline import STEPS, Deferred, FastTrainPreset, finish
from hw1.transforms.presets import IMAGENET_MEAN, IMAGENET_STD, eval_spec
from hw1.utils.errors import UserValueError


def test_val_shares_train_class_indices(int_classes_root):
    root, _ = int_classes_root
    names = class_names(root / "train")
    val = ClassFolders(root / "val", names)
    for path, index in val.samples:
        assert path.split("/")[-2] == names[index]
    assert sorted(set(val.targets)) == list(range(12))


def test_test_images_are_every_image_sorted_with_stems(int_classes_root):
    root, answers = int_classes_root
    (root / "test" / ".DS_Store").write_bytes(b"\0")
    (root / "test" / "readme.txt").write_text("x")
    images = UnlabeledImages(root / "test")
    assert [p.stem for p in images.files] == sorted(answers)
    assert {p.suffix for p in images.files} == {".jpg", ".png", ".JPEG"}
    image, stem = images[0]
    assert image.mode == "RGB" and stem == sorted(answers)[0]


@pytest.mark.parametrize(
    ("pipeline", "deferred"), [("fast", "device"), ("fast", "workers"), ("reference", "auto")]
)
def test_datamodule_batches_have_the_crop_size_and_labels(int_classes_root, pipeline, deferred):
    """The fast pipeline's batches stay uint8, with their colour jitter still to apply
    (the data module does both on the device) or finished in the worker; the reference's
    come normalised."""
    root, _ = int_classes_root
    dm = datamodule(root, pipeline=pipeline, deferred=deferred)
    dm.validate()
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    if deferred == "device":
        assert isinstance(x, Deferred) and x.image.dtype == torch.uint8
        assert x.image.shape == (4, 32, 32, 3) and x.steps.shape == (4, STEPS)
    elif deferred == "workers":
        assert x.shape == (4, 3, 32, 32) and x.dtype == torch.uint8 and x.is_contiguous()
    else:
        assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.min() >= 0 and y.max() < 12
    xv, _ = next(iter(dm.val_dataloader()))
    assert xv.shape == (4, 3, 32, 32)
    dm.setup("predict")
    xp, names = next(iter(dm.predict_dataloader()))
    assert xp.shape == (4, 4, 3, 32, 32)  # the four report TTA views of each image
    assert all(isinstance(n, str) for n in names)


@pytest.mark.parametrize(("name", "dtype"), [("fast", torch.uint8), ("reference", torch.float32)])
def test_both_pipelines_give_the_crop_size_dtype_and_value_range(name, dtype):
    spec = eval_spec(48)
    out = train_pipeline(name, spec)(photo())
    assert out.shape == (3, 48, 48) and out.dtype == dtype
    if name == "reference":  # normalised: black..white through Normalize
        low = (0 - torch.tensor(spec.mean)) / torch.tensor(spec.std)
        high = (1 - torch.tensor(spec.mean)) / torch.tensor(spec.std)
        assert (out >= low.view(3, 1, 1) - 1e-5).all() and (out <= high.view(3, 1, 1) + 1e-5).all()
    else:
        assert out.float().std() > 5  # an image, not a blank


def test_unknown_pipeline_is_a_clear_error():
    with pytest.raises(ValueError, match="data.pipeline=slow: use fast or reference"):
        train_pipeline("slow", eval_spec(32))


def test_eval_spec_follows_the_weights():
    assert (
        datamodule("x", image_size=224, arch="resnet50", weights="IMAGENET1K_V2").eval_spec.resize
        == 232
    )
    assert (
        datamodule("x", image_size=224, arch="resnet50", weights="IMAGENET1K_V1").eval_spec.resize
        == 256
    )
    assert datamodule("x", image_size=224, weights=None).eval_spec.resize == 256


def test_the_data_module_reads_nothing_until_validate(tmp_path):
    """Lightning's contract: prepare_data keeps no state, and the settings are the saved
    hyper-parameters (plain values: checkpoints keep them and load with weights_only)."""
    dm = datamodule(tmp_path / "nowhere", batch_size=3)
    dm.prepare_data()
    assert dm.class_names is None and dm.samples is None and dm.train_set is None
    assert dm.hparams.batch_size == 3 and dm.hparams.root == str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        dm.validate()


def test_missing_root_says_where_it_looked_and_how_to_run_the_demo(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)data.root=.*nowhere.*experiment=demo"):
        datamodule(tmp_path / "nowhere").validate()


def test_missing_val_folder_is_named(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="has no val/ folder"):
        datamodule(tmp_path).validate()


def test_train_and_val_class_mismatch_names_both_sides(tmp_path):
    make_hw1_folder(tmp_path, ["a", "b", "c"], train=1, val=1, test=0)
    (tmp_path / "val" / "c").rename(tmp_path / "val" / "d")
    with pytest.raises(ValueError, match=r"missing in val: \['c'\]; missing in train: \['d'\]"):
        datamodule(tmp_path).validate()


@pytest.mark.parametrize("split", ["train", "val"])
def test_an_empty_class_folder_is_named(tmp_path, split):
    make_hw1_folder(tmp_path, ["a", "b", "c"], train=2, val=1, test=0)
    for f in (tmp_path / split / "b").iterdir():
        f.unlink()
    (tmp_path / split / "b" / ".DS_Store").write_bytes(b"\0")
    with pytest.raises(ValueError, match=rf"without a readable image: {tmp_path / split / 'b'}\."):
        datamodule(tmp_path).validate()


def test_a_class_whose_only_images_are_unreadable_is_named(tmp_path):
    make_hw1_folder(tmp_path, ["a", "b"], train=2, val=1, test=0)
    (tmp_path / "val" / "a" / "0.jpg").write_text("<html></html>")
    with pytest.raises(ValueError, match=rf"without a readable image: {tmp_path / 'val' / 'a'}"):
        datamodule(tmp_path).validate()


def test_missing_val_folder_suggests_val_split(tmp_path):
    make_hw1_folder(tmp_path, ["a"], train=2, val=0, test=0)
    shutil.rmtree(tmp_path / "val")
    with pytest.raises(FileNotFoundError, match=r"no val/ folder.*data\.val_split=0\.1"):
        datamodule(tmp_path).validate()


def _split(root, seed):
    dm = datamodule(root, val_split=0.2, seed=seed)
    dm.validate()
    dm.setup("fit")
    return dm


def test_val_split_holds_out_a_stratified_seeded_part_of_train(tmp_path):
    make_hw1_folder(tmp_path, [str(i) for i in range(12)], train=10, val=0, test=0)
    shutil.rmtree(tmp_path / "val")
    for f in sorted((tmp_path / "train" / "11").iterdir())[1:]:
        f.unlink()  # class 11: a single image stays in train
    dm = _split(tmp_path, seed=1)
    train, val = dm.train_set.samples, dm.val_set.samples
    assert dm.class_names == [str(i) for i in range(12)]  # numeric order, as without a split
    assert not {p for p, _ in train} & {p for p, _ in val}
    assert len(train) + len(val) == 11 * 10 + 1
    per_class = [sum(c == k for _, c in val) for k in range(12)]
    assert per_class == [2] * 11 + [0]  # 20 % of each class; one image is not split
    assert all(Path(p).parent.name == dm.class_names[c] for p, c in train + val)
    assert _split(tmp_path, seed=1).val_set.samples == val  # the same seed, the same split
    assert _split(tmp_path, seed=2).val_set.samples != val
    assert dm.val_set.transform is dm.eval_transform
    # The fast train pipeline decodes as it augments: it is the train set's loader.
    assert dm.train_set.loader.preset is dm.train_transform


def test_cross_validation_pools_train_and_val(tmp_path):
    make_hw1_folder(tmp_path, [str(i) for i in range(3)], train=6, val=3, test=0)
    seen = []
    for fold in range(3):
        dm = datamodule(tmp_path, folds=3, fold=fold)
        dm.validate()
        dm.setup("fit")
        assert len(dm.train_set) + len(dm.val_set) == 27
        seen += [path for path, _ in dm.val_set.samples]
    assert len(seen) == len(set(seen)) == 27 and any("/val/" in p for p in seen)
    with pytest.raises(ValueError, match="data.folds=3 data.fold=3"):
        datamodule(tmp_path, folds=3, fold=3)


def test_eval_size_evaluates_larger_than_training_crops(tmp_path):
    make_hw1_folder(tmp_path, ["a", "b"], train=2, val=1, test=1)
    dm = datamodule(tmp_path, image_size=32, eval_size=48)
    dm.validate()
    dm.setup("fit")
    assert dm.eval_spec.crop == 48 and dm.val_set[0][0].shape[-1] == 48  # val, TTA, predict
    assert finish(dm.train_set[0][0]).shape[-1] == 32
    same = datamodule(tmp_path, image_size=32)
    assert (
        same.eval_spec.crop == 32
        and same.eval_spec == datamodule(tmp_path, eval_size=None).eval_spec
    )


# The data layer's last step, on the device: the fast pipeline's batches become normalised
# floats there, before the model sees them.


def _empty_loader() -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader([])


def imagenet_normalise(x):
    return FinishOnDevice(IMAGENET_MEAN, IMAGENET_STD)(x)


def test_uint8_batches_are_normalised_on_the_device_floats_pass_unchanged():
    model, data = classifier(), LoaderDataModule(eval_spec(8), _empty_loader())
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    expected = (x.float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / (
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    )
    out, y = data.on_after_batch_transfer((x, torch.tensor([1, 2])), 0)
    assert torch.allclose(out, expected, atol=1e-6) and y.tolist() == [1, 2]
    views = torch.randn(2, 4, 3, 8, 8)  # floats come normalised (the reference pipeline)
    assert data.on_after_batch_transfer((views, ["a", "b"]), 0)[0] is views
    assert "mean" not in model.state_dict()  # checkpoints keep their keys


def _deferred_samples(n: int = 4, size: int = 32) -> list:
    """Fast-pipeline samples of a smooth colour image, their jitter still to apply."""
    g = torch.Generator().manual_seed(1)
    coarse = torch.randint(0, 256, (3, 4, 4), dtype=torch.uint8, generator=g)
    image = to_pil_image(nn.functional.interpolate(coarse[None].float(), size=48)[0].byte())
    fast = FastTrainPreset(eval_spec(size))
    torch.manual_seed(0)
    return [(fast.apply(np.array(image), fast.draw(48, 48), (48, 48)), k) for k in range(n)]


def test_deferred_batches_get_their_last_steps_and_normalisation_on_the_device():
    """A collated batch of the fast pipeline's samples: normalised as each sample's own
    finished image would be (within the rounding of that image to uint8)."""
    samples = _deferred_samples()
    x, y = torch.utils.data.default_collate(samples)
    assert isinstance(x, Deferred) and not (x.steps[:, 4:8] == torch.tensor([1, 1, 1, 0])).all()
    data = LoaderDataModule(eval_spec(32), _empty_loader())
    out, labels = data.on_after_batch_transfer((x, y), 0)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    expected = torch.stack([finish(s) for s, _ in samples]).float() / 255
    expected = (expected - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    assert out.dtype == torch.float32 and out.shape == (4, 3, 32, 32)
    assert (out - expected).abs().max() < 0.51 / 255 / min(IMAGENET_STD)
    assert not torch.allclose(out, imagenet_normalise(x.image.permute(0, 3, 1, 2)), atol=0.05)
    assert labels.tolist() == [0, 1, 2, 3]


def test_under_one_seed_both_pipelines_give_the_model_the_same_first_batches(tmp_path):
    """Through the data module, DataLoader and device step: the same normalised batches
    from either pipeline under one seed (simplejpeg's and PIL's decodes within a level), in
    the same memory layout (another takes other convolution kernels, other rounding)."""
    make_hw1_folder(tmp_path, ["a", "b"], train=6, val=1, test=0, size=40)
    batches = {}
    for pipeline in ("fast", "reference"):
        # The data module's seed draws the order and each sample's augmentation
        # (hw1.data.samplers.SeededDraws), whatever the global generator's state.
        data = datamodule(tmp_path, pipeline=pipeline, seed=7)
        data.validate()
        data.setup("fit")
        loader = iter(data.train_dataloader())
        batches[pipeline] = [data.on_after_batch_transfer(next(loader), 0) for _ in range(2)]
    for (x, y), (xr, yr) in zip(batches["fast"], batches["reference"], strict=True):
        assert torch.equal(y, yr) and x.stride() == xr.stride()  # the same layout too
        assert (x - xr).abs().mean() < 0.1 / 255 / min(IMAGENET_STD)


def _first_batches(root, seed: int = 7, n: int = 2, **kw) -> list:
    """The data module's first ``n`` training batches under ``seed``, as the model gets them."""
    data = datamodule(root, seed=seed, **kw)
    data.validate()
    data.setup("fit")
    loader = iter(data.train_dataloader())
    return [data.on_after_batch_transfer(next(loader), 0) for _ in range(n)]


@pytest.mark.parametrize("augment", [None, DEMO_AUGMENT])
def test_a_cpu_run_finishes_in_the_workers_the_batches_the_device_would(tmp_path, augment):
    """data.deferred: under one seed the workers (the reference's PIL kernels) and the
    device (batched floats) give the model the same batches, in the same layout: with the
    demo's brightness and contrast to the bit, with the report's whole augmentation within
    a level at a few pixels (hue and the rotation round in float on the device)."""
    make_hw1_folder(tmp_path, ["a", "b"], train=6, val=1, test=0, size=40)
    kw = {"augment": augment} if augment else {}
    workers = _first_batches(tmp_path, deferred="workers", **kw)
    device = _first_batches(tmp_path, deferred="device", **kw)
    level = 1 / 255 / min(IMAGENET_STD)  # a grey level, normalised
    for (x, y), (xd, yd) in zip(workers, device, strict=True):
        assert torch.equal(y, yd) and x.stride() == xd.stride()
        if augment:
            assert torch.equal(x, xd)
        else:
            assert (x - xd).abs().mean() < 0.05 * level and (x - xd).abs().max() < 4.01 * level
            assert not torch.equal(x, xd)  # the two paths really ran


def test_auto_finishes_in_the_workers_when_the_trainers_device_is_the_cpu(tmp_path):
    data = datamodule(tmp_path)
    assert data.deferred_in_workers() == (not torch.cuda.is_available())  # no trainer
    data.trainer = L.Trainer(accelerator="cpu", logger=False)
    assert data.deferred_in_workers()
    assert not datamodule(tmp_path, deferred="device").deferred_in_workers()
    assert datamodule(tmp_path, deferred="workers").deferred_in_workers()
    with pytest.raises(UserValueError, match="data.deferred=gpu: use auto, workers, device"):
        datamodule(tmp_path, deferred="gpu")


def test_a_fit_on_deferred_batches_shows_callbacks_the_finished_normalised_batch():
    """Lightning moves the Deferred batch to the device as it is (a named tuple), and what
    callbacks see (Figures' augmented samples) is the finished batch."""
    seen = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(batch[0])

    model = classifier()
    trainer = L.Trainer(
        accelerator="cpu", fast_dev_run=True, logger=False, callbacks=[Spy()],
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    samples = _deferred_samples()
    loader = torch.utils.data.DataLoader(samples, batch_size=4)
    trainer.fit(model, datamodule=LoaderDataModule(eval_spec(32), loader))
    x = torch.utils.data.default_collate(samples)[0]
    assert torch.allclose(seen[0], imagenet_normalise(x), atol=1e-5)


@pytest.mark.parametrize("pipeline", ["fast", "reference"])
def test_a_file_removed_during_training_is_replaced_and_reported_once(tmp_path, caplog, pipeline):
    make_hw1_folder(tmp_path, ["a", "b"], train=4, val=1, test=0)
    (tmp_path / "test").rmdir()
    dm = datamodule(tmp_path, pipeline=pipeline)
    dm.validate()
    dm.setup("fit")
    gone = tmp_path / "train" / "a" / "2.jpg"
    gone.unlink()  # after the image check, as a sync or a cleanup job might
    with caplog.at_level("WARNING", logger="hw1.data.datasets"):
        for _ in range(2):  # two epochs
            assert sum(len(y) for _, y in dm.train_dataloader()) == 8  # every batch whole
    warnings = [r.getMessage() for r in caplog.records if r.name == "hw1.data.datasets"]
    assert len(warnings) == 1 and f"{gone} cannot be read" in warnings[0], warnings
    assert "the next image stands in for it" in warnings[0]


def test_training_warns_at_the_start_when_test_has_no_images(tmp_path, caplog):
    make_hw1_folder(tmp_path, ["a", "b"], train=2, val=1, test=0)
    with caplog.at_level("WARNING", logger="hw1.data.datamodule"):
        datamodule(tmp_path).validate()
    assert "test/ has no images: no prediction.csv will be written" in caplog.text
    caplog.clear()
    (tmp_path / "test").rmdir()  # no test/ at all: it is optional, nothing to say
    with caplog.at_level("WARNING", logger="hw1.data.datamodule"):
        datamodule(tmp_path).validate()
    assert "test/" not in caplog.text


@pytest.mark.parametrize("precision", ["bf16-true", "16-true"])
@pytest.mark.parametrize("pipeline", ["fast", "reference"])
def test_true_half_precisions_train_validate_and_predict_on_both_pipelines(
    tmp_path, pipeline, precision
):
    """Under bf16-true and 16-true the model's weights are half floats: every batch (the
    fast pipeline's uint8 and Deferred ones, the reference's floats, the TTA views) must
    reach it in that dtype."""
    seen = {}

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen["train"] = batch[0].dtype

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, *_):
            seen["val"] = batch[0].dtype

        def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, *_):
            seen["predict"] = batch[0].dtype

    make_hw1_folder(tmp_path, ["a", "b"], train=4, val=2, test=2, size=36)
    data = datamodule(tmp_path, pipeline=pipeline, deferred="device")  # Deferred on the CPU
    model = classifier(classes=2)
    if precision == "16-true":  # AdamW's default 1e-8 is 0 in float16 (check_eps refuses it)
        model.hparams.optim = {**model.hparams.optim, "eps": 1e-4}
    before = model.head[0].weight.detach().clone()
    trainer = L.Trainer(
        accelerator="cpu", precision=precision, fast_dev_run=True, logger=False,
        callbacks=[Spy()], enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=data)
    assert not torch.equal(model.head[0].weight.float(), before)  # an optimizer step happened
    predictions = trainer.predict(model, datamodule=data)
    half = torch.bfloat16 if precision == "bf16-true" else torch.float16
    assert seen == {"train": half, "val": half, "predict": half}
    probs = torch.cat([p for _, p in predictions])
    assert probs.shape == (4, 2) and probs.dtype == torch.float32  # 4 images x 4 views
    assert torch.allclose(probs.sum(1), torch.ones(4), atol=1e-2)


def test_validation_and_tta_batches_travel_as_uint8_and_are_normalised_on_the_device(tmp_path):
    """A quarter of float32's bytes through the loader's pipes and to the GPU; on the
    device they become what the presets' float path gives."""
    make_hw1_folder(tmp_path, ["a", "b"], train=2, val=2, test=2, size=45)
    data = datamodule(tmp_path)
    data.setup(None)
    spec = data.eval_spec
    mean, std = spec.mean, spec.std
    x, y = next(iter(data.val_dataloader()))
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 32, 32)
    out, labels = data.on_after_batch_transfer((x, y), 0)
    pil = [data.val_set.loader(path) for path, _ in data.val_set.samples[:4]]
    as_floats = T.Compose([
        T.Resize(spec.resize, interpolation=spec.interpolation), T.CenterCrop(spec.crop),
        T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std),
    ])  # fmt: skip
    torch.testing.assert_close(out, torch.stack([as_floats(p) for p in pil]), atol=1e-6, rtol=0)
    assert torch.equal(labels, y)
    views, keys = next(iter(data.predict_dataloader()))
    assert views.dtype == torch.uint8 and views.shape == (4, 4, 3, 32, 32)
    out, same_keys = data.on_after_batch_transfer((views, keys), 0)
    # Bit for bit what torchvision's ToDtype(scale=True) and Normalize give: predictions
    # keep their bytes, and the two train pipelines' batches agree to the bit.
    expected = TF.normalize(TF.to_dtype(views, torch.float32, scale=True), mean, std)
    assert torch.equal(out, expected)
    assert same_keys == keys


def test_only_local_rank_zero_decodes_the_images_the_other_ranks_read_its_cache(
    tmp_path, monkeypatch
):
    """Under DDP every process runs the entry point: local rank zero checks every image
    before fit and caches the results in the data root; the others check the folders, and
    read the cache in setup, which Lightning calls after a barrier."""
    make_hw1_folder(tmp_path, ["a", "b"], train=3, val=2, test=2)
    decoded = []
    inspect = image_check._inspect
    monkeypatch.setattr(
        image_check, "_inspect", lambda path, *a: decoded.append(path) or inspect(path, *a)
    )
    monkeypatch.delenv("SLURM_LOCALID", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    other = datamodule(tmp_path)
    other.validate()
    assert decoded == [] and other.class_names == ["a", "b"]
    with pytest.raises(FileNotFoundError, match="no train/ folder"):
        datamodule(tmp_path / "test").validate()  # the folders are checked on every rank
    monkeypatch.setenv("LOCAL_RANK", "0")
    zero = datamodule(tmp_path)
    zero.validate()
    assert len(decoded) == 6 + 4 + 4  # train, val and test images, once each
    monkeypatch.setenv("LOCAL_RANK", "1")
    other.setup("fit")
    assert len(decoded) == 14  # from the cache
    assert other.samples == zero.samples and len(other.val_set) == 4
