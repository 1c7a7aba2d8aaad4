"""The GPU check kit, ``python -m hw1.bench gpu``: on one CUDA GPU, every figure the
performance docs need (training speed and memory per precision, the real data module's
loader rate, batched TTA, predict/eval agreement, the demo, compile), printed as a table and
written to gpu-check.json; ``--device cpu --quick`` runs the same code at toy size."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torchvision
from hydra.utils import instantiate
from torch.utils.data import DataLoader, TensorDataset

import hw1
from hw1.benchmarks.common import (
    batched,
    bench_classifier,
    bench_config,
    cached_photos,
    per_view_probs,
    time_rounds,
)
from hw1.benchmarks.gpu_timing import (
    FULL,
    QUICK,
    KitSize,
    matmul_precision,
    synthetic_batches,
    timed_fit,
)
from hw1.data import demo
from hw1.data.datasets import UnlabeledImages
from hw1.inference.evaluation import evaluate
from hw1.inference.predictor import predict
from hw1.models.classifier import Classifier
from hw1.transforms.presets import ViewStack, eval_spec
from hw1.utils.config import compose_config
from hw1.utils.io import write_atomically

PARTS = ("train", "loader", "tta", "demo", "predict", "compile")


def demo_data(per_class: dict[str, int] | None) -> Path:
    """The embedded demo data set in the temporary directory, whole or its first
    ``per_class`` images of each class per split; written once, kept for later runs."""
    tmp = Path(tempfile.gettempdir())
    if per_class is None:
        return demo.extract(tmp / "hw1-bench-demo")
    counts = "-".join(f"{split}{n}" for split, n in per_class.items())
    root = tmp / f"hw1-bench-demo-{counts}"
    if (root / demo.TEST_LABELS).exists():
        return root
    data = np.load(demo.ARCHIVE)
    arrays = {}
    for split, n in per_class.items():
        y = data[f"{split}_y"]
        keep = np.sort(np.concatenate([np.flatnonzero(y == c)[:n] for c in np.unique(y)]))
        arrays |= {f"{split}_{k}": data[f"{split}_{k}"][keep] for k in ("x", "y", "idx")}
    return demo.write_layout(arrays, root)


def environment(device: torch.device) -> dict[str, Any]:
    """The machine and the library versions, for the report's header."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        hardware = f"{props.name}, {props.total_memory / 2**30:.0f} GiB"
    else:
        hardware = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            names = [
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ]
            hardware = names[0] if names else hardware
    return {
        "hardware": hardware,
        "cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightning": L.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }


class KitReport:
    """gpu-check.json: each part measures one thing and is guarded, so that a failing part
    is recorded as an error and the others still run; the file is rewritten after each
    part, so that a run stopped halfway keeps what it measured."""

    def __init__(self, out: Path, device: torch.device, settings: dict[str, Any]) -> None:
        self.out = out
        self.report: dict[str, Any] = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            **environment(device),
            "settings": settings,
            "parts": {},
        }

    def run(self, parts: dict[str, Callable[[], dict[str, float]]]) -> dict[str, Any]:
        for name, part in parts.items():
            start = time.perf_counter()
            entry: dict[str, Any] = {"figures": {}, "error": None}
            print(f"[{name}] ...", flush=True)
            try:
                entry["figures"] = part()
            except Exception:
                entry["error"] = traceback.format_exc()[-4000:]
                print(entry["error"], file=sys.stderr, flush=True)
            entry["seconds"] = round(time.perf_counter() - start, 1)
            print(f"[{name}] {'failed' if entry['error'] else 'done'} in {entry['seconds']} s")
            self.report["parts"][name] = entry
            write_atomically(self.out / "gpu-check.json", json.dumps(self.report, indent=2))
        return self.report


class TrainingParts:
    """The kit's training figures: images/s and peak memory per precision, compiled, and
    fed by the data module from JPEGs on disk."""

    def __init__(self, device: torch.device, size: KitSize, compile_backend: str) -> None:
        self.device, self.size, self.compile_backend = device, size, compile_backend
        self.all_workers = len(os.sched_getaffinity(0))

    def classifier(self, *overrides: str) -> Classifier:
        return bench_classifier(self.size.arch, self.size.image_size, *overrides)

    def fit(self, model: Classifier, datamodule, precision: str) -> dict[str, float]:
        with matmul_precision("high"):  # as hw1.train sets it
            return timed_fit(model, datamodule, self.size, self.device, precision)

    def part_train(self) -> dict[str, float]:
        """Training images/s and peak memory on in-memory batches, per precision."""
        figures = {}
        for name, precision, overrides in (
            # NCHW spelled out: on a GPU channels-last is the default.
            ("fp32", "32-true", ("model.channels_last=false",)),
            ("bf16", "bf16-mixed", ("model.channels_last=false",)),
            ("bf16_channels_last", "bf16-mixed", ("model.channels_last=true",)),
        ):
            speed = self.fit(
                self.classifier(*overrides), synthetic_batches(self.size, self.device), precision
            )
            figures[f"{name}_images_per_s"] = speed["images_per_s"]
            figures[f"{name}_peak_memory_mib"] = speed["peak_memory_mib"]
        return figures

    def part_compile(self) -> dict[str, float]:
        """bf16-mixed and channels-last, compiled: images/s, peak memory and the seconds
        the compiling added to the first steps."""
        model = self.classifier(
            "model.channels_last=true",
            "model.compile=true",
            f"model.compile_backend={self.compile_backend}",
        )
        speed = self.fit(model, synthetic_batches(self.size, self.device), "bf16-mixed")
        return {
            "images_per_s": speed["images_per_s"],
            "peak_memory_mib": speed["peak_memory_mib"],
            "compile_s": speed["warmup_s"] - self.size.warmup * speed["step_s"],
        }

    def part_loader(self) -> dict[str, float]:
        """Trainer.fit fed by the data module from JPEGs on disk, per pipeline and worker
        count, against the same fit on in-memory batches: a ratio under 1 is the loader
        holding the device back."""
        size = self.size
        root = cached_photos(size.photos).parent
        bf16_cl = ("model.channels_last=true",)
        synthetic = self.fit(
            self.classifier(*bf16_cl), synthetic_batches(size, self.device), "bf16-mixed"
        )["images_per_s"]
        figures = {"synthetic_images_per_s": synthetic}
        for pipeline in ("fast", "reference"):
            for label, workers in (("2", 2), ("4", 4), ("all", self.all_workers)):
                cfg = bench_config(
                    size.arch, size.image_size,
                    f"data.root={root}", f"data.pipeline={pipeline}",
                    f"data.num_workers={workers}", f"data.batch_size={size.batch_size}",
                    "data.val_split=0.1",  # the photos have no val/ folder
                )  # fmt: skip
                model = self.classifier(*bf16_cl)
                rate = self.fit(model, instantiate(cfg.data), "bf16-mixed")["images_per_s"]
                figures[f"{pipeline}_{label}_workers_images_per_s"] = rate
                figures[f"{pipeline}_{label}_workers_vs_synthetic"] = rate / synthetic
        return figures


class InferenceParts:
    """The kit's inference figures, and the demo end to end: batched TTA against the
    per-image loop, the demo trained by hw1.train, and hw1.predict and hw1.eval on its
    checkpoint on the CPU and on the device."""

    def __init__(self, out: Path, device: torch.device, size: KitSize) -> None:
        self.out, self.device, self.size = out, device, size
        self.trainer_group = "gpu" if device.type == "cuda" else "cpu"
        self.demo_run: dict[str, Any] | None = None  # the demo part's checkpoint and data

    def classifier(self, *overrides: str) -> Classifier:
        return bench_classifier(self.size.arch, self.size.image_size, *overrides)

    def part_tta(self) -> dict[str, float]:
        """The report's four test-time views batched as hw1.predict does, against the
        per-image loop and against a single view, under bf16 autocast; the views are
        made once on the CPU, so that the figures time the model and the transfer."""
        size = self.size
        spec = eval_spec(size.image_size)
        dataset = UnlabeledImages(cached_photos(size.photos) / "0")
        stack = ViewStack(spec, "report", seed=0)
        views = torch.stack([stack(dataset[i][0], i) for i in range(size.tta_images)])
        keys = torch.arange(len(views))
        model = self.classifier().eval().to(self.device)
        loader = DataLoader(TensorDataset(views, keys), batch_size=size.batch_size)
        single = DataLoader(TensorDataset(views[:, 0], keys), batch_size=size.batch_size)
        contenders = {
            "per_image_loop": lambda: per_view_probs(model, views, spec, self.device),
            "batched_tta": lambda: batched(model, loader, spec, self.device),
            "single_view": lambda: batched(model, single, spec, self.device),
        }
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16):
            rounds = time_rounds(contenders, size.rounds + 1)
        seconds = {name: statistics.median(times[1:]) for name, times in rounds.items()}
        figures = {f"{name}_images_per_s": len(views) / s for name, s in seconds.items()}
        figures["batched_tta_vs_loop"] = seconds["per_image_loop"] / seconds["batched_tta"]
        figures["batched_tta_time_vs_single_view"] = seconds["batched_tta"] / seconds["single_view"]
        return figures

    def part_demo(self) -> dict[str, float]:
        """The embedded demo through hw1.train with trainer=gpu (trainer=cpu on the CPU),
        in its own process, as a user runs it."""
        root = demo_data(self.size.demo_per_class)
        run_dir = self.out / "demo-run"
        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = [
            sys.executable, "-m", "hw1.train", "experiment=demo", f"trainer={self.trainer_group}",
            f"data.root={root}", f"hydra.run.dir={run_dir}", *self.size.demo,
        ]  # fmt: skip
        package_parent = str(Path(hw1.__file__).resolve().parents[1])
        path = os.pathsep.join([package_parent, os.environ.get("PYTHONPATH", "")])
        start = time.perf_counter()
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=self.size.timeout_s,
            # The kit's thread count (one with --quick), else torch's default.
            env={**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(torch.get_num_threads())},
        )
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        self.demo_run = {"ckpt": metrics["best_ckpt"], "root": root}
        return {
            "val_acc": metrics["best_val_acc"],
            "test_acc": metrics["test_acc"],
            "wall_s": wall,
            "train_images_per_s": metrics["train_images_per_s"],
        }

    def part_predict(self) -> dict[str, float]:
        """hw1.predict and hw1.eval on the demo's checkpoint, on the CPU in fp32 and on
        the device in fp32 and bf16-mixed: the share of labels the device's runs give as
        the CPU's."""
        if self.demo_run is None:
            raise RuntimeError("no checkpoint to predict with: the demo part did not finish")
        workers = [] if self.size.demo_per_class is None else ["data.num_workers=0"]
        runs = {
            "cpu_fp32": ["trainer=cpu", "trainer.precision=32-true"],
            "fp32": [f"trainer={self.trainer_group}", "trainer.precision=32-true"],
            "bf16": [f"trainer={self.trainer_group}", "trainer.precision=bf16-mixed"],
        }
        figures = {}
        for tool, entry, output in (
            ("predict", predict, "prediction.csv"),
            ("eval", evaluate, "eval.json"),
        ):
            labels = {}
            for name, overrides in runs.items():
                out = self.out / f"{tool}-{name}" / output
                cfg = compose_config(
                    [
                        f"ckpt_path={self.demo_run['ckpt']}", f"data.root={self.demo_run['root']}",
                        f"output={out}", "save_probs=true", *workers, *overrides,
                    ],
                    config_name=tool,
                )  # fmt: skip
                with contextlib.redirect_stdout(io.StringIO()):
                    entry(cfg)
                labels[name] = np.load(out.with_suffix(".probs.npz"))["probs"].argmax(axis=1)
            for name in ("fp32", "bf16"):
                same = float(np.mean(labels[name] == labels["cpu_fp32"]))
                figures[f"{tool}_{name}_same_labels"] = same
        return figures


def print_table(report: dict[str, Any]) -> None:
    s = report["settings"]
    print(
        f"\nhw1 GPU check, {report['date']}: {report['hardware']} ({s['device']}), torch "
        f"{report['torch']}, lightning {report['lightning']}; {s['arch']} + head v1, batch "
        f"{s['batch_size']}, {s['image_size']} px; peak memory: {s['peak_memory']}"
    )
    print(f"{'part':<8} {'figure':<40} {'value':>12}")
    for part, entry in report["parts"].items():
        for name, value in entry["figures"].items():
            print(f"{part:<8} {name:<40} {value:>12.3f}")
        if entry["error"]:
            last = entry["error"].strip().splitlines()[-1]
            print(f"{part:<8} {'ERROR':<40} {last}")
        print(f"{part:<8} {'(seconds for the part)':<40} {entry['seconds']:>12.1f}")


def bench_gpu(args: argparse.Namespace) -> None:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "python -m hw1.bench gpu: no CUDA device is visible; --device cpu --quick runs "
            "the kit at toy size on the CPU"
        )
    backend = args.compile_backend or ("inductor" if args.device == "cuda" else "aot_eager")
    if args.quick:
        # A check that every part runs, not a measurement: one thread, which a CPU shared
        # with other work runs faster than several that wait for each other.
        torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    out, device, size = Path(args.out), torch.device(args.device), QUICK if args.quick else FULL
    settings = {
        **asdict(size),
        "head": "v1",
        "device": args.device,
        "compile_backend": backend,
        "all_workers": len(os.sched_getaffinity(0)),
        "float32_matmul_precision": "high in training (as hw1.train), else highest",
        "peak_memory": "torch.cuda.max_memory_allocated"
        if device.type == "cuda"
        else "the process's peak resident size",
    }
    training, inference = TrainingParts(device, size, backend), InferenceParts(out, device, size)
    every = {name: getattr(training, f"part_{name}", None) for name in PARTS}
    every = {n: part or getattr(inference, f"part_{n}") for n, part in every.items()}
    report = KitReport(out, device, settings).run({n: every[n] for n in args.parts or PARTS})
    print_table(report)
    print(f"\nwritten: {Path(args.out) / 'gpu-check.json'}")
