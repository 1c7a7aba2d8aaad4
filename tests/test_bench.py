import json
import math
import subprocess
import sys

import pytest

from hw1.bench import main


def test_tta_bench_reports_images_per_second_and_a_ratio(capsys):
    main(["tta", "--images", "6", "--size", "32", "--batch-size", "3", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "same probabilities: True" in out
    for name in ("per-image TTA loop", "batched TTA", "batched single view"):
        assert name in out
    assert float(out.strip().splitlines()[-1].removeprefix("ratio: ")) > 0


def _ratio(out: str) -> float:
    return float(out.strip().splitlines()[-1].removeprefix("ratio: "))


def test_loader_bench_times_both_pipelines_and_the_decode_ceiling(capsys):
    main(["loader", "--images", "6", "--size", "32", "--rounds", "1"])
    out = capsys.readouterr().out
    for name in ("reference:", "fast:", "decode only:", "simplejpeg:", "fast, CPU run + device:"):
        assert name in out
    assert "fast vs its decoder's full-size decode-only rate: " in out
    assert _ratio(out) > 0


@pytest.mark.slow  # an ONNX export and a TorchScript trace: about 10 s
def test_infer_bench_puts_the_three_runtimes_side_by_side(capsys):
    main(["infer", "--size", "32", "--batch-size", "4", "--rounds", "1"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "ms |" in line]
    assert [r.split(" | ")[0] for r in rows] == ["| eager", "| torchscript", "| onnxruntime"]
    assert "| 1.00x |" in rows[0] and _ratio(out) > 0
    diffs = out.splitlines()[0].split("max abs logit difference to eager: ")[1]
    assert all(float(d.split()[-1]) <= 1e-4 for d in diffs.split(", "))


@pytest.mark.parametrize("clock", ["wall", "cpu"])
def test_step_bench_compares_trainer_fit_with_a_plain_loop(capsys, clock):
    args = ["--batches", "2", "--batch-size", "4", "--size", "32", "--rounds", "1"]
    main(["step", *args, "--clock", clock])
    out = capsys.readouterr().out
    assert "Trainer.fit:" in out and "plain loop:" in out and f"{clock} time" in out
    assert _ratio(out) > 0


# The figures gpu-check.json holds, per part: what the performance documentation's GPU
# rows are filled from.
GPU_CHECK_FIGURES = {
    "train": {
        f"{config}_{figure}"
        for config in ("fp32", "bf16", "bf16_channels_last")
        for figure in ("images_per_s", "peak_memory_mib")
    },
    "loader": {"synthetic_images_per_s"}
    | {
        f"{pipeline}_{workers}_workers_{figure}"
        for pipeline in ("fast", "reference")
        for workers in ("2", "4", "all")
        for figure in ("images_per_s", "vs_synthetic")
    },
    "tta": {
        "per_image_loop_images_per_s",
        "batched_tta_images_per_s",
        "single_view_images_per_s",
        "batched_tta_vs_loop",
        "batched_tta_time_vs_single_view",
    },
    "demo": {"val_acc", "test_acc", "wall_s", "train_images_per_s"},
    "predict": {
        f"{tool}_{precision}_same_labels"
        for tool in ("predict", "eval")
        for precision in ("fp32", "bf16")
    },
    "compile": {"images_per_s", "peak_memory_mib", "compile_s"},
}


@pytest.mark.slow
def test_the_gpu_check_kit_runs_every_part_at_toy_size_on_the_cpu(tmp_path):
    out = tmp_path / "check"
    cmd = [sys.executable, "-m", "hw1.bench", "gpu", "--device", "cpu", "--quick", f"--out={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((out / "gpu-check.json").read_text())
    for key in ("date", "hardware", "torch", "torchvision", "lightning", "settings"):
        assert report[key], key
    assert list(report["parts"]) == list(GPU_CHECK_FIGURES)  # every part, in this order
    for part, figures in GPU_CHECK_FIGURES.items():
        entry = report["parts"][part]
        assert entry["error"] is None, f"{part}:\n{entry['error']}"
        assert set(entry["figures"]) == figures, part
        for name, value in entry["figures"].items():
            assert type(value) in (int, float) and math.isfinite(value) and value > 0, name
            assert f"{part:<8} {name}" in proc.stdout  # in the printed table
    assert "ERROR" not in proc.stdout


def test_tracking_bench_times_mlflow_beside_tensorboard(capsys):
    pytest.importorskip("mlflow")
    main(["tracking", "--epochs", "1", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "TensorBoard:" in out and "TensorBoard + MLflow:" in out and "MLflow adds" in out
    assert _ratio(out) > 0
