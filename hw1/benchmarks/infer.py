"""``python -m hw1.bench infer``: the CPU runtimes of an exported model side by side, eager
PyTorch, TorchScript and onnxruntime, on the same network and inputs: latency at batch 1
and throughput at batch 32, as ratios to eager (which runtime ``hw1.predict`` runs an
exported folder on by default: hw1.inference.exported.RUNTIME_ORDER)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from hw1.benchmarks.common import bench_classifier, time_alternating
from hw1.inference.export import write_onnx, write_torchscript
from hw1.inference.exported import onnx_logits, torchscript_logits
from hw1.inference.runtime import ExportNet, Net


def runtimes(net: ExportNet, folder: Path, example: torch.Tensor) -> dict:
    """The network on each runtime: a function of a normalised float batch."""
    write_onnx(net, example, folder / "model.onnx")
    write_torchscript(net, example, folder / "model.ts")
    cpu = torch.device("cpu")
    return {
        "eager": net,
        "torchscript": torchscript_logits(folder / "model.ts", cpu),
        "onnxruntime": onnx_logits(folder / "model.onnx", cpu),
    }


def bench_infer(args: argparse.Namespace) -> None:
    model = bench_classifier(args.arch, args.size).eval()
    net = ExportNet([Net(model.backbone, model.head)], [1.0]).eval()
    gen = torch.Generator().manual_seed(0)
    one = torch.randn(1, 3, args.size, args.size, generator=gen)
    many = torch.randn(args.batch_size, 3, args.size, args.size, generator=gen)
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        run = runtimes(net, Path(tmp), many[:2])
        diff = {k: (f(many) - net(many)).abs().max().item() for k, f in run.items()}
        for f in run.values():  # warm-up: first calls plan and allocate
            f(one), f(many)
        latency = time_alternating({k: lambda f=f: f(one) for k, f in run.items()}, args.rounds)
        batch = time_alternating({k: lambda f=f: f(many) for k, f in run.items()}, args.rounds)
    print(
        f"{args.arch}, {args.size} px, {torch.get_num_threads()} threads, median of "
        f"{args.rounds} rounds; max abs logit difference to eager: "
        + ", ".join(f"{k} {v:.1e}" for k, v in diff.items() if k != "eager")
    )
    print(
        f"| runtime | batch 1 latency | vs eager | batch {args.batch_size} throughput | vs eager |"
    )
    print("|---|---|---|---|---|")
    for k in run:
        print(
            f"| {k} | {latency[k] * 1000:.1f} ms | {latency['eager'] / latency[k]:.2f}x | "
            f"{args.batch_size / batch[k]:.1f} images/s | {batch['eager'] / batch[k]:.2f}x |"
        )
    print(f"ratio: {batch['eager'] / batch['onnxruntime']:.2f}")
