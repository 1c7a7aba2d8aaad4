"""Side-by-side benchmarks, reported as ratios (one process, alternating rounds, so machine
noise hits every contender alike).

    python -m hw1.bench tta [--images 96] [--size 64] [--arch resnet18] [--batch-size 32]
    python -m hw1.bench loader [--images 200] [--workers 0] [--size 224] [--rounds 5]  (and
        the fast pipeline's decoder's full-size decode-only rate, its ceiling)
    python -m hw1.bench loader --source litdata  (the same photos from hw1 shards vs folder)
    python -m hw1.bench step [--batches 20] [--batch-size 64] [--size 32] [--rounds 4]
    python -m hw1.bench infer [--arch resnet18] [--size 224] [--batch-size 32] [--rounds 5]
        (an exported model on the CPU: eager PyTorch, TorchScript, onnxruntime)
    python -m hw1.bench tracking [--epochs 6] [--rounds 5]   (MLflow's logging beside TensorBoard's)

and the GPU check kit, every figure the performance documentation needs from a GPU, in
about 8 minutes on one (``--device cpu --quick``: the same code at toy size on the CPU):

    python -m hw1.bench gpu [--out DIR] [--device cuda|cpu] [--quick]
"""

from __future__ import annotations

import argparse

from hw1.benchmarks.cpu import bench_loader, bench_step, bench_tta
from hw1.utils.signals import started


def main(argv: list[str] | None = None) -> None:
    started()  # Ctrl-C is Python's again (hw1.utils.signals)
    parser = argparse.ArgumentParser(prog="python -m hw1.bench", description=__doc__)
    sub = parser.add_subparsers(dest="bench", required=True)
    tta = sub.add_parser("tta", help="batched TTA vs a per-image loop vs single-view inference")
    tta.add_argument("--images", type=int, default=96)
    tta.add_argument("--size", type=int, default=64, help="crop size in pixels")
    tta.add_argument("--arch", default="resnet18")
    tta.add_argument("--batch-size", type=int, default=32)
    tta.add_argument("--rounds", type=int, default=3)
    loader = sub.add_parser("loader", help="the fast vs the reference train pipeline")
    loader.add_argument("--images", type=int, default=200)
    loader.add_argument("--workers", type=int, default=0, help="0: in the main process")
    loader.add_argument("--size", type=int, default=224, help="crop size in pixels")
    loader.add_argument("--rounds", type=int, default=5)
    loader.add_argument(
        "--source",
        choices=["folder", "litdata"],
        default="folder",
        help="litdata: the fast pipeline from hw1 shards of the photos vs from their folder",
    )
    step = sub.add_parser("step", help="Trainer.fit vs a plain PyTorch loop, same steps")
    step.add_argument("--batches", type=int, default=20, help="optimizer steps per run")
    step.add_argument("--batch-size", type=int, default=64)
    step.add_argument("--size", type=int, default=32, help="image size in pixels")
    step.add_argument("--arch", default="resnet18")
    step.add_argument("--rounds", type=int, default=4)  # even: each order (A B, B A) as often
    step.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: this process's CPU time, steadier than wall time on a machine shared with "
        "other jobs (torch then runs one thread, so no thread waits on a busy core)",
    )
    infer = sub.add_parser("infer", help="eager vs TorchScript vs onnxruntime on the CPU")
    infer.add_argument("--arch", default="resnet18")
    infer.add_argument("--size", type=int, default=224, help="crop size in pixels")
    infer.add_argument("--batch-size", type=int, default=32)
    infer.add_argument("--rounds", type=int, default=5)
    tracked = sub.add_parser("tracking", help="a demo run's logging: TensorBoard vs + MLflow")
    tracked.add_argument("--epochs", type=int, default=6)
    tracked.add_argument("--rounds", type=int, default=5)
    # Imported here: the kit builds on this module's helpers, so a top-level import would
    # be circular.
    from hw1.benchmarks.gpu_check import PARTS, bench_gpu

    gpu = sub.add_parser("gpu", help="the GPU check kit: every GPU figure, gpu-check.json")
    gpu.add_argument("--out", default="gpu-check", help="folder for gpu-check.json and runs")
    gpu.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    gpu.add_argument("--quick", action="store_true", help="toy sizes: resnet18, 32 px")
    gpu.add_argument(
        "--compile-backend", help="torch.compile's backend (inductor on cuda, else aot_eager)"
    )
    gpu.add_argument("--parts", nargs="+", choices=PARTS, help="only these parts, in this order")
    args = parser.parse_args(argv)
    if args.bench == "tracking":
        from hw1.benchmarks.tracking import bench_tracking  # needs hw1[track]

        return bench_tracking(args)
    benches = {"tta": bench_tta, "loader": bench_loader, "step": bench_step, "gpu": bench_gpu}
    if args.bench == "infer":  # needs hw1[export]: imported only when asked for
        from hw1.benchmarks.infer import bench_infer

        benches["infer"] = bench_infer
    benches[args.bench](args)


if __name__ == "__main__":
    main()
