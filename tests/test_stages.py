from __future__ import annotations

import json

import pytest
import torch
from conftest import run_in_process_group, train_command
from run_probes import checksum

from hw1.models.classifier import Classifier
from hw1.reporting.runs import markdown, summarise
from hw1.training.init_from import check_start, load_weights
from hw1.utils.config import compose_config
from hw1.utils.errors import UserFileNotFoundError, UserValueError

CLASSES = ["a", "b", "c"]


def model(*overrides: str, classes=CLASSES) -> Classifier:
    cfg = compose_config(["model=resnet18", "model.weights=null", "head=v0", *overrides])
    return Classifier.from_config(cfg, classes)


def saved(tmp_path, m: Classifier):
    path = tmp_path / "first.ckpt"
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams)}, path)
    return path


def test_init_from_copies_every_weight_and_statistic(tmp_path):
    first = model()
    first.backbone.net.bn1.running_mean.fill_(0.5)
    second = model()
    load_weights(second, saved(tmp_path, first))
    for key, value in first.state_dict().items():
        assert torch.equal(second.state_dict()[key], value), key


def test_init_from_refuses_other_classes_or_another_model_naming_the_key(tmp_path):
    path = saved(tmp_path, model())
    with pytest.raises(
        UserValueError, match=r"init_from=.*class_names \(3: a, b, c\).*\(2: a, b\)"
    ):
        load_weights(model(classes=["a", "b"]), path)
    with pytest.raises(UserValueError, match=r"resnet18 \+ head v0\).*missing head\.0\.weight"):
        load_weights(model("head=v1"), path)
    other = model("model=resnet34", "model.weights=null")
    with pytest.raises(
        UserValueError, match=r"\(resnet34 \+ head v0\): missing backbone\.net\.layer1\.2"
    ):
        load_weights(other, path)
    with pytest.raises(UserFileNotFoundError, match=r"init_from=.*nope\.ckpt: no such checkpoint"):
        load_weights(model(), tmp_path / "nope.ckpt")


def test_init_from_and_ckpt_path_together_are_refused():
    check_start("a.ckpt", None)
    check_start(None, "b.ckpt")
    with pytest.raises(UserValueError, match=r"init_from=a\.ckpt and ckpt_path=b\.ckpt: give one"):
        check_start("a.ckpt", "b.ckpt")


@pytest.mark.slow
def test_a_stage_starts_from_the_weights_only_and_the_report_names_its_source(
    trained_run, tmp_path
):
    root, _, first_dir = trained_run
    first = json.loads((first_dir / "metrics.json").read_text())
    ckpt = first["last_ckpt"]
    sums = tmp_path / "sums"
    cmd = train_command(
        root, tmp_path / "stage", f"init_from={ckpt}", "trainer.max_epochs=1", "optim.lr=1e-4",
        "trainer.limit_train_batches=2", "tta=none",
        "+callbacks.sums._target_=run_probes.BackboneChecksums", f"+callbacks.sums.folder={sums}",
    )  # fmt: skip
    status, out = run_in_process_group(cmd, timeout=600)
    assert status == 0, out[-3000:]
    # The weights the stage started from are the checkpoint's.
    start = json.loads((sums / "rank0.json").read_text())["start"]
    assert start == pytest.approx(checksum(Classifier.from_checkpoint(ckpt).backbone))
    # Nothing else: epoch 0, a fresh optimizer and schedule, its own learning rate.
    stage = json.loads((tmp_path / "stage" / "metrics.json").read_text())
    assert stage["init_from"] == ckpt and first["init_from"] is None
    assert stage["epochs"] == 1 and [h["epoch"] for h in stage["val_history"]] == [1]
    saved_stage = torch.load(stage["last_ckpt"], weights_only=True)
    steps = saved_stage["global_step"]
    assert 0 < steps < torch.load(ckpt, weights_only=True)["global_step"]
    adam = saved_stage["optimizer_states"][0]
    assert {s["step"].item() for s in adam["state"].values()} == {steps}
    assert adam["param_groups"][0]["initial_lr"] == 1e-4
    # Both at once: refused before anything is built.
    status, out = run_in_process_group(
        train_command(root, tmp_path / "both", f"init_from={ckpt}", f"ckpt_path={ckpt}"), 120
    )
    assert status != 0 and "give one" in out and not (tmp_path / "both" / "metrics.json").exists()


def test_the_report_shows_a_stage_beside_its_first_stage_and_its_source():
    def run(init_from):
        metrics = {
            "id": "R50_64", "family": None, "seed": 1, "val_images": 300, "best_val_acc": 0.8,
            "best_epoch": 1, "epochs": 2, "params": 1000, "wall_time_s": 1.0,
            "init_from": init_from,
        }  # fmt: skip
        run_id = "R50_64 (init_from)" if init_from else "R50_64"
        return {"id": run_id, "family": "depth", "metrics": metrics, "settings": {}}

    rows = summarise([run(None), run("outputs/a/checkpoints/last.ckpt")], {})
    assert [(r["id"], r["init_from"]) for r in rows] == [
        ("R50_64", ""), ("R50_64 (init_from)", "outputs/a/checkpoints/last.ckpt")
    ]  # fmt: skip
    assert "| R50_64 (init_from) | from outputs/a/checkpoints/last.ckpt |" in markdown(rows)
