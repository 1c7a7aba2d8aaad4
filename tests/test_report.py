from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, make_hw1_folder
from PIL import Image

from hw1.data.demo import TEST_LABELS
from hw1.report import main
from hw1.reporting.runs import difference_interval, reference, wilson
from hw1.utils.io import csv_text


def test_wilson_interval_matches_the_textbook():
    lo, hi = wilson(0.0, 10)  # 0 of 10: [0, 0.2775] (Wilson 1927; Newcombe 1998, table I)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson(0.9, 300)
    assert lo < 0.9 < hi and hi - 0.9 < 0.9 - lo  # skewed away from the 100 % bound


def test_difference_interval_matches_newcombe():
    # Newcombe (1998), example (a): 56/70 - 48/80, method 10: 0.0524 to 0.3339.
    lo, hi = difference_interval(56 / 70, 70, 48 / 80, 80)
    assert (lo, hi) == (pytest.approx(0.0524, abs=1e-3), pytest.approx(0.3339, abs=1e-3))


def test_one_image_in_300_is_noise_and_the_report_best_vs_w0_is_not():
    lo, hi = difference_interval(0.90, 300, 0.90 - 1 / 300, 300)
    assert lo < 0 < hi
    lo, hi = difference_interval(0.89, 300, 0.50, 300)
    assert lo > 0


def test_the_report_does_not_load_the_training_stack():
    heavy = "{'lightning', 'hydra', 'hw1.train'}"
    code = f"import sys, hw1.report; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_reference_holds_every_reported_number_once():
    refs = reference()
    assert len(refs) == 34 and len(set(refs)) == 34
    assert refs["X101_V1"]["val"] == "0.93" and refs["X101_V1"]["test"] == "0.96"
    assert refs["W0"]["val"] == "0.50" and refs["W0"]["test"] == ""
    families = {r["family"] for r in refs.values()}
    assert families == {"depth", "weights", "head", "lr", "other", "resnext101"}


def fake_run(path: Path, run_id: str, seed: int, val: float, params: int = 25_000_000) -> None:
    """A finished run as hw1.train leaves it (metrics.json only)."""
    path.mkdir(parents=True)
    metrics = {
        "id": run_id, "family": None, "seed": seed, "val_images": 300, "best_val_acc": val,
        "best_epoch": 5, "epochs": 7, "params": params, "wall_time_s": 100.0,
    }  # fmt: skip
    (path / "metrics.json").write_text(json.dumps(metrics))


def test_report_aggregates_seeds_marks_noise_and_flags_the_parameter_limit(tmp_path):
    sweep = tmp_path / "multirun"
    for seed, val in ((1, 0.80), (2, 0.90), (3, 0.85)):
        fake_run(sweep / f"{seed}_R50_64", "R50_64", seed, val)
    fake_run(sweep / "4_R101_32", "R101_32", 1, 0.84)  # 3 images below: noise
    fake_run(sweep / "5_R34_64", "R34_64", 1, 0.70)  # 45 images below: not
    fake_run(sweep / "6_X101_V1", "X101_V1", 1, 0.90, params=120_000_000)
    main([str(sweep), "--out", str(tmp_path / "out")])

    with open(tmp_path / "out" / "report.csv", newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    r50 = rows["R50_64"]
    assert (r50["family"], r50["runs"], r50["seeds"]) == ("depth", "3", "1 2 3")
    assert float(r50["val_acc"]) == pytest.approx(0.85)
    assert float(r50["val_acc_std"]) == pytest.approx(0.05)
    assert float(r50["report_val"]) == 0.90 and float(r50["delta_val"]) == pytest.approx(-0.05)
    lo, hi = wilson(0.85, 300)
    assert (float(r50["val_ci_low"]), float(r50["val_ci_high"])) == (
        pytest.approx(lo),
        pytest.approx(hi),
    )
    assert [rows[i]["vs_best"] for i in ("R50_64", "R101_32", "R34_64")] == [
        "best", "within noise", "below",
    ]  # fmt: skip
    assert rows["X101_V1"]["over_limit"] == "True" and rows["R50_64"]["over_limit"] == "False"

    md = (tmp_path / "out" / "report.md").read_text()
    assert "## depth" in md and "## resnext101" in md
    assert "120,000,000 **over 100 M**" in md
    assert "0.850 ± 0.050" in md and "0.90 (0.92)" in md
    assert Image.open(tmp_path / "out" / "curves.png").size[0] > 600


def test_report_without_runs_says_what_it_needs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.json under"):
        main([str(tmp_path)])


@pytest.mark.slow
def test_a_real_multirun_of_two_recipes_then_the_report(tmp_path):
    root = tmp_path / "data"
    answers = make_hw1_folder(root, [str(i) for i in range(4)], train=8, val=3, test=2, size=32)
    rows = [("image_name", "label"), *sorted(answers.items())]
    (root / TEST_LABELS).write_text(csv_text(rows))
    sweep = tmp_path / "multirun"
    cmd = [
        sys.executable, "-m", "hw1.train", "-m", "recipe=D0.25,D0.5", "seed=1,2",
        f"data.root={root}", f"hydra.sweep.dir={sweep}", "trainer.max_epochs=2",
        *(o for o in TINY if not o.startswith("head")),  # the recipes set the head
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Each job's directory is named by its ID; the recipe applies under the overrides.
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == [
        "0_D0.25", "1_D0.25", "2_D0.5", "3_D0.5",
    ]  # fmt: skip
    job = json.loads((sweep / "2_D0.5" / "metrics.json").read_text())
    assert (job["id"], job["seed"], job["epochs"], job["tta"]) == ("D0.5", 1, 2, "report")

    out = subprocess.run(
        [sys.executable, "-m", "hw1.report", str(sweep)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    with open(sweep / "report.csv", newline="") as f:
        table = {r["id"]: r for r in csv.DictReader(f)}
    assert sorted(table) == ["D0.25", "D0.5"]
    assert table["D0.25"]["dropout"] == "0.25" and table["D0.5"]["dropout"] == "0.5"
    assert table["D0.25"]["runs"] == "2" and table["D0.25"]["arch"] == "resnet18"
    assert table["D0.5"]["test_images"] == "8" and table["D0.5"]["test_acc"] != ""
    assert float(table["D0.5"]["report_val"]) == 0.92
    md = (sweep / "report.md").read_text()
    assert "| D0.25 |" in md and "| D0.5 |" in md
    curves = Image.open(sweep / "curves.png")
    assert curves.width > 600 and curves.height > 300
    # The curves come from the TensorBoard events: two epochs per run.
    from hw1.reporting.runs import val_curve

    assert [epoch for epoch, _ in val_curve(sweep / "0_D0.25")] == [1, 2]


def test_cross_validated_runs_report_the_out_of_fold_accuracy(tmp_path):
    sweep = tmp_path / "cv"
    for fold, (val, n) in enumerate(((0.80, 100), (0.90, 100), (0.70, 50))):
        fake_run(sweep / f"{fold}_W2", "W2", 1, val)
        metrics = json.loads((sweep / f"{fold}_W2" / "metrics.json").read_text())
        metrics.update(folds=3, fold=fold, val_images=n)
        (sweep / f"{fold}_W2" / "metrics.json").write_text(json.dumps(metrics))
    main([str(sweep)])
    with open(sweep / "report.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert (row["folds"], row["runs"], row["oof_images"]) == ("3", "3", "250")
    assert float(row["oof_acc"]) == pytest.approx((80 + 90 + 35) / 250)  # pooled, not averaged
    assert float(row["val_acc"]) == pytest.approx(0.8)  # the mean over the folds
    lo, hi = wilson((80 + 90 + 35) / 250, 250)
    assert (float(row["oof_ci_low"]), float(row["oof_ci_high"])) == (
        pytest.approx(lo),
        pytest.approx(hi),
    )
    assert "3-fold out-of-fold 0.820" in (sweep / "report.md").read_text()


def test_runs_without_an_id_are_named_by_their_overrides_less_seed_and_fold(tmp_path):
    sweep = tmp_path / "sweep"
    for k, (smoothing, seed) in enumerate(((0.0, 1), (0.0, 2), (0.1, 1), (0.1, 2))):
        fake_run(sweep / str(k), None, seed, 0.8 + smoothing)
        overrides = [f"seed={seed}", f"loss.label_smoothing={smoothing}", "data.fold=0"]
        (sweep / str(k) / ".hydra").mkdir()
        (sweep / str(k) / ".hydra" / "overrides.yaml").write_text(json.dumps(overrides))
    main([str(sweep)])
    with open(sweep / "report.csv", newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["loss.label_smoothing=0.0", "loss.label_smoothing=0.1"]
    assert (
        rows["loss.label_smoothing=0.1"]["runs"] == "2"
        and rows["loss.label_smoothing=0.1"]["seeds"] == "1 2"
    )
