"""What MLflow logging costs a run: ``python -m hw1.bench tracking``.

The demo run's logging without its training: what TensorBoard alone, and TensorBoard with
MLflow on a SQLite store, are asked to do in a demo run (46 steps an epoch, Lightning's
metrics every 10 steps and at each epoch's end, the two figures, the settings, the final
values and two files), in one process, alternating round by round. The seconds MLflow
adds are then set against the demo's wall time (docs/performance.md)."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger

from hw1.training import hparams, tracking

STEPS, EVERY = 46, 10  # the demo's training batches an epoch, trainer.log_every_n_steps


def demo_logging(loggers: list[Logger], run_dir: Path, epochs: int) -> None:
    """The calls a demo run makes on its loggers, in its order."""
    image = np.random.default_rng(0).integers(0, 255, (300, 600, 3), dtype=np.uint8)
    params = {f"group{i // 10}.key{i}": i * 0.5 for i in range(60)}  # the settings' count
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            _ = logger.run_id  # tracking.start opens the run
        if isinstance(logger, TensorBoardLogger):
            hparams.start_hparams(logger, params, hparams.hparams_metrics("test"))
        else:
            logger.log_hyperparams(params)
    step = 0
    for epoch in range(epochs):
        for batch in range(STEPS):
            step += 1
            if step % EVERY == 0:
                for logger in loggers:
                    logger.log_metrics({"train/loss_step": 1.0, "lr/all": 1e-3}, step)
            if epoch == 0 and batch == 0:
                tracking.log_image(loggers, "train/augmented", image, step)
        epoch_end = {"val/loss": 1.0, "val/acc": 0.5, "train/loss": 1.0, "train/acc": 0.5}
        for logger in loggers:
            logger.log_metrics({**epoch_end, "epoch": epoch}, step)
    tracking.log_image(loggers, "val/confusion", image, step)
    metrics = {"best_val_acc": 0.8, "epochs": epochs}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "prediction.csv").write_text("image_name,pred_label\n" + "img,1\n" * 500)
    tracking.finish(loggers, metrics, run_dir, step)


def one_run(kind: str, base: Path, name: str, epochs: int) -> float:
    """Seconds of one run's logging, the loggers' set-up included."""
    run_dir = base / name
    run_dir.mkdir()
    start = time.perf_counter()
    loggers: list[Logger] = [TensorBoardLogger(run_dir, name="tb", version="")]
    if kind == "TensorBoard + MLflow":
        uri = f"sqlite:///{base / 'mlflow.db'}"
        where = (base / "mlartifacts").as_uri()
        loggers.append(
            MLFlowLogger("hw1", run_name=name, tracking_uri=uri, artifact_location=where)
        )
    demo_logging(loggers, run_dir, epochs)
    return time.perf_counter() - start


def bench_tracking(args: argparse.Namespace) -> None:
    import mlflow  # noqa: F401  imported once, before the clock, as a run imports it

    kinds = ("TensorBoard", "TensorBoard + MLflow")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        first = one_run(kinds[1], base, "first", args.epochs)
        rounds: dict[str, list[float]] = {k: [] for k in kinds}
        for r in range(args.rounds):
            for kind in kinds:
                rounds[kind].append(one_run(kind, base, f"{kind[-6:].strip()}_{r}", args.epochs))
    print(f"{args.epochs} epochs of the demo's logging, {args.rounds} rounds")
    print(f"the first TensorBoard + MLflow run (creating the SQLite store): {first:.2f} s")
    for kind, seconds in rounds.items():
        print(
            f"{kind}: {statistics.median(seconds):.2f} s ({', '.join(f'{s:.2f}' for s in seconds)})"
        )
    added = statistics.median(m - t for t, m in zip(*rounds.values(), strict=True))
    print(f"MLflow adds {added:.2f} s a run")
    print(f"ratio: {statistics.median(rounds[kinds[1]]) / statistics.median(rounds[kinds[0]]):.2f}")
