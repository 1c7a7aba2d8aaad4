"""Continuing a run: what ``ckpt_path=`` and ``resume=true`` accept (check_resumable), and
that a failed resume leaves the run's record as it was (R2, R3, R6 of
docs/reviews/reliability-3.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import make_hw1_folder, run_train
from omegaconf import OmegaConf
from test_model import classifier

from hw1.training.init_from import check_resumable
from hw1.training.resume import not_replayed, with_run_overrides
from hw1.utils.config import compose_config
from hw1.utils.errors import UserValueError


def saved_run(path: Path, model, **entries) -> Path:
    """A checkpoint of ``model`` as Lightning saves one to resume from."""
    ckpt = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "optimizer_states": [],
        "loops": {},
        "epoch": 1,
        "global_step": 10,
        **entries,
    }
    torch.save(ckpt, path)
    return path


def test_a_checkpoint_of_the_same_model_is_resumable(tmp_path):
    model = classifier(head="v0", classes=3)
    check_resumable(classifier(head="v0", classes=3), saved_run(tmp_path / "a.ckpt", model))


def test_a_checkpoint_of_other_classes_with_the_same_count_is_refused(tmp_path):
    """R6: Lightning loaded it silently, mapping the labels to other classes."""
    theirs = classifier(head="v0", classes=3)
    theirs.hparams.class_names = ["cat", "dog", "eel"]
    path = saved_run(tmp_path / "other.ckpt", theirs)
    with pytest.raises(UserValueError) as error:
        check_resumable(classifier(head="v0", classes=3), path)
    message = str(error.value)
    assert f"ckpt_path={path} is not a checkpoint of this run's model" in message
    assert "class_names (3: cat, dog, eel; this run: 3: 0, 1, 2)" in message
    assert f"use init_from={path}" in message


def test_a_checkpoint_of_another_head_or_image_size_is_refused(tmp_path):
    """R6: another head gave Lightning's raw "Unexpected key(s) in state_dict"."""
    path = saved_run(tmp_path / "v1.ckpt", classifier(head="v1", classes=3))
    with pytest.raises(UserValueError, match=r"its head \(\{'name': 'v1'\}; this run: "):
        check_resumable(classifier(head="v0", classes=3), path)
    small = classifier(head="v0", classes=3)
    small.hparams.preprocess = {"crop": 32, "resize": 37}
    path = saved_run(tmp_path / "32.ckpt", small)
    big = classifier(head="v0", classes=3)
    big.hparams.preprocess = {"crop": 64, "resize": 73}
    with pytest.raises(UserValueError, match=r"preprocess \(crop 32, resize 37; this run: crop 64"):
        check_resumable(big, path)


def test_a_weights_only_checkpoint_is_pointed_to_init_from(tmp_path):
    """R6: hw1.average's output gave KeyError 'Trying to restore optimizer state'."""
    model = classifier(head="v0", classes=3)
    path = tmp_path / "avg.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    with pytest.raises(UserValueError, match=rf"holds weights only .*use init_from={path} to st"):
        check_resumable(model, path)
    student = saved_run(tmp_path / "student.ckpt", model, distilled=True)
    with pytest.raises(UserValueError, match=r"a distilled student's: resume it with hw1\.distill"):
        check_resumable(model, student)


def test_a_deletion_of_a_key_the_run_added_removes_it(tmp_path):
    """R2: a saved +KEY and ~KEY on the command line: Hydra said "Could not delete from
    config", as the key exists only through the saved override."""
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    saved = ["+trainer.enable_progress_bar=false", "head=v1"]
    OmegaConf.save(OmegaConf.create(saved), run_dir / ".hydra" / "overrides.yaml")
    argv, _ = with_run_overrides(
        ["t", "resume=true", f"hydra.run.dir={run_dir}", "~trainer.enable_progress_bar"]
    )
    assert argv == ["t", "head=v1", "resume=true", f"hydra.run.dir={run_dir}", argv[-1]]


@pytest.mark.slow
@pytest.mark.parametrize("module", ["hw1.train", "hw1.distill"])
def test_a_failed_resume_keeps_the_runs_settings_and_a_plain_one_continues(tmp_path, module):
    """R2: a resume with data.batch_size=0 failed after Hydra had written it into
    .hydra/, so the plain resume failed the same way. R3: hw1.distill ignored the saved
    settings (asked for data.root, built its default model)."""
    root = tmp_path / "data"
    make_hw1_folder(root, ["a", "b", "c"], train=4, val=2, test=0, size=32)
    run_dir = tmp_path / "run"
    extra = []
    if module == "hw1.distill":
        teacher = run_train(root, tmp_path / "teacher", "trainer.max_epochs=1")
        assert teacher.returncode == 0, teacher.stderr[-3000:]
        extra = [f"teachers=[{tmp_path / 'teacher' / 'checkpoints' / 'last.ckpt'}]"]
    first = run_train(root, run_dir, "trainer.max_epochs=1", *extra, module=module)
    assert first.returncode == 0, first.stderr[-3000:]
    record = {p.name: p.read_text() for p in (run_dir / ".hydra").iterdir()}

    resume = [sys.executable, "-m", module, "resume=true", f"hydra.run.dir={run_dir}"]

    bad = subprocess.run([*resume, "data.batch_size=0"], capture_output=True, text=True)
    assert bad.returncode == 2, bad.stderr[-3000:]
    assert "data.batch_size=0: use a whole number of 1 or more" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert {p.name: p.read_text() for p in (run_dir / ".hydra").iterdir()} == record

    # max_epochs as saved: the resume composes, checks and loads, with nothing left to train
    good = subprocess.run([*resume, "trainer.max_epochs=1"], capture_output=True, text=True)
    assert good.returncode == 0, good.stderr[-3000:]
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert config.resume is True and config.model.arch == "resnet18"
    assert "resume=true" in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
    assert "Restored all states from the checkpoint" in good.stdout + good.stderr


def test_a_mid_epoch_resume_says_the_run_will_differ_only_where_it_does(tmp_path, caplog):
    """R1: a checkpoint with the loader's state replays the rest of its epoch (tests/
    test_samplers.py); one without it (an older hw1's), or a run whose source or gradient
    accumulation cannot replay it, is told the run will differ; never at an epoch's end."""
    model = classifier(head="v0", classes=3)
    progress = {"current": {"completed": 5}, "is_last_batch": False}
    loader = {"state_dict": {"combined_loader": [{"epoch": 1, "batches": 5}]}}
    loops = {"fit_loop": {"epoch_loop.batch_progress": progress, **loader}}
    check_resumable(model, saved_run(tmp_path / "mid.ckpt", model, loops=loops))
    assert "will differ" not in caplog.text
    check_resumable(model, tmp_path / "mid.ckpt", differs="data.source=litdata replays...")
    assert "saved 5 batches into epoch 2, and data.source=litdata" in caplog.text
    caplog.clear()
    older = {"fit_loop": {"epoch_loop.batch_progress": progress}}
    check_resumable(model, saved_run(tmp_path / "older.ckpt", model, loops=older))
    assert "will differ" in caplog.text and "holds no loader state" in caplog.text
    caplog.clear()
    progress["is_last_batch"] = True
    check_resumable(model, saved_run(tmp_path / "end.ckpt", model, loops=older), differs="x")
    assert "will differ" not in caplog.text


def test_the_runs_whose_mid_epoch_resume_differs_are_named(tmp_path):
    """R1: only litdata shards (their augmentation) and gradient accumulation (a window's
    gradients) resume mid-epoch to another run than the uninterrupted one; the folder
    layout, a CSV or a datasets dataset, balanced or not, replay it."""

    def trainer(**kw) -> L.Trainer:
        return L.Trainer(default_root_dir=tmp_path, logger=False, accelerator="cpu", **kw)

    for overrides in ([], ["data.source=csv"], ["data.sampler=balanced"]):
        assert not_replayed(compose_config(overrides), trainer()) is None
    assert "litdata" in not_replayed(compose_config(["data.source=litdata"]), trainer())
    accumulating = trainer(accumulate_grad_batches=2)
    assert "accumulated" in not_replayed(compose_config(), accumulating)
