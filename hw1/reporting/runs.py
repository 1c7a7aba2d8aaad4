"""A sweep's runs against the report, for ``python -m hw1.report``: each run directory's
metrics.json, settings and validation curve; one row per report ID (mean ± std over seeds,
95 % Wilson intervals, the report's own number from reference.csv, whether a gap is within
noise), written as Markdown, CSV and a curves figure.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from hw1 import PARAM_LIMIT
from hw1.reporting.figures import line_chart, png_bytes, stack
from hw1.utils.errors import UserFileNotFoundError
from hw1.utils.io import write_atomically

REFERENCE = Path(__file__).with_name("reference.csv")  # the report's experiments by ID


Z95 = 1.959964


def reference() -> dict[str, dict[str, str]]:
    """The report's recipes and numbers by ID: settings, family, val and test accuracy."""
    with open(REFERENCE, newline="") as f:
        return {row["id"]: row for row in csv.DictReader(f)}


def wilson(acc: float, n: int) -> tuple[float, float]:
    """95 % Wilson score interval of an accuracy measured on ``n`` images."""
    centre = (acc + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 / (1 + Z95**2 / n) * math.sqrt(acc * (1 - acc) / n + Z95**2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(a: float, n_a: int, b: float, n_b: int) -> tuple[float, float]:
    """95 % interval of the difference a - b of two accuracies (Newcombe's hybrid score
    method, built from the two Wilson intervals). It treats the two measurements as
    independent; on the same validation images they are paired, so it errs towards
    calling a difference noise."""
    lo_a, hi_a = wilson(a, n_a)
    lo_b, hi_b = wilson(b, n_b)
    d = a - b
    return d - math.hypot(a - lo_a, hi_b - b), d + math.hypot(hi_a - a, b - lo_b)


def find_runs(dirs: list[Path]) -> list[Path]:
    runs = sorted({m.parent for d in dirs for m in Path(d).rglob("metrics.json")})
    if not runs:
        raise UserFileNotFoundError(
            f"no metrics.json under {', '.join(map(str, dirs))}: give the directories of "
            "finished runs, e.g. outputs/multirun/DATE/TIME"
        )
    return runs


def run_settings(run_dir: Path) -> dict[str, Any]:
    """The settings the report's tables vary, from the config Hydra saved with the run."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.exists():
        return {}
    cfg = OmegaConf.load(path)
    return settings_of(lambda key: OmegaConf.select(cfg, key, throw_on_resolution_failure=False))


def settings_of(get: Callable[[str], Any]) -> dict[str, Any]:
    """The report's settings from ``get(group.key)``: a run's saved config, or the
    parameters a tracking logger holds (which have no ``_target_``: a cosine schedule is
    the one with a ``T_max``)."""
    target = str(get("sched._target_") or "")
    sched = (
        f"cosine T_max={get('sched.T_max')} eta_min={get('sched.eta_min')}"
        if "cosine" in target or (not target and get("sched.T_max") is not None)
        else target.rsplit(".", 1)[-1]
    )
    dropout = get("head.dropout")
    return {
        "arch": get("model.arch"),
        "batch_size": get("data.batch_size"),
        "trainable_stages": get("model.trainable_stages") or "all",
        "weights": get("model.weights"),
        "head": get("head.name"),
        "dropout": "/".join(map(str, dropout))
        if OmegaConf.is_list(dropout) or isinstance(dropout, list)
        else dropout,
        "lr": get("optim.lr"),
        "sched": sched,
        "tta": get("tta"),
    }


def val_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(epoch, val/acc) from the run's TensorBoard events; epochs are 1-based like
    metrics.json's best_epoch."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    dirs = sorted({p.parent for p in run_dir.rglob("events.out.tfevents*")})
    curve: dict[int, float] = {}
    for d in dirs:
        events = EventAccumulator(str(d), size_guidance={"scalars": 0}).Reload()
        tags = events.Tags()["scalars"]
        if "val/acc" not in tags:
            continue
        # Lightning logs the epoch beside every metric at the same step.
        epoch_at = (
            {e.step: int(e.value) for e in events.Scalars("epoch")} if "epoch" in tags else {}
        )
        for k, e in enumerate(events.Scalars("val/acc")):
            curve[epoch_at.get(e.step, k) + 1] = e.value
    return sorted(curve.items())


# Overrides that repeat one setting rather than change it: the report pools their runs.
REPEATS = ("seed=", "data.fold=")


def run_name(run_dir: Path) -> str:
    """A run without a report ID is named by its command-line overrides, less the seed and
    the fold, so that the seeds and folds of one setting share a row."""
    path = run_dir / ".hydra" / "overrides.yaml"
    overrides = OmegaConf.load(path) if path.exists() else []
    kept = [str(o) for o in overrides if not str(o).startswith(REPEATS)]
    return " ".join(kept) or run_dir.name


def load_run(run_dir: Path, refs: dict[str, dict[str, str]]) -> dict[str, Any]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    run_id = metrics.get("id") or run_name(run_dir)
    family = metrics.get("family") or refs.get(run_id, {}).get("family") or "runs"
    if metrics.get("id") and metrics.get("init_from"):
        run_id += " (init_from)"  # a later stage: a row of its own, beside its first stage's
    return {
        "dir": run_dir,
        "id": run_id,
        "family": family,
        "metrics": metrics,
        "settings": run_settings(run_dir),
        "curve": val_curve(run_dir),
    }


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: list[dict[str, Any]], refs: dict[str, dict[str, str]]) -> list[dict]:
    """One row per (family, ID): seeds aggregated, CIs, the report's numbers, and whether the
    row is within noise of its family's best."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for run in runs:
        groups[(run["family"], run["id"])].append(run)
    rows = []
    for (family, run_id), members in groups.items():
        ms = [m["metrics"] for m in members]
        val, val_std = _mean_std(
            [m["best_val_acc"] for m in ms if m.get("best_val_acc") is not None]
        )
        test, test_std = _mean_std([m["test_acc"] for m in ms if m.get("test_acc") is not None])
        n_val = min((m["val_images"] for m in ms if m.get("val_images")), default=None)
        n_test = min((m["test_images"] for m in ms if m.get("test_images")), default=None)
        ref = refs.get(run_id, {})
        params = ms[0]["params"]
        row = {
            "family": family,
            "id": run_id,
            "runs": len(ms),
            "seeds": " ".join(str(m.get("seed")) for m in ms),
            "init_from": " ".join(dict.fromkeys(m["init_from"] for m in ms if m.get("init_from"))),
            **members[0]["settings"],
            "params": params,
            "over_limit": params >= PARAM_LIMIT,
            "val_acc": val,
            "val_acc_std": val_std,
            "val_images": n_val,
            "val_ci": wilson(val, n_val) if val is not None and n_val else None,
            "best_epoch": statistics.fmean(m["best_epoch"] for m in ms if m.get("best_epoch")),
            "epochs": statistics.fmean(m["epochs"] for m in ms),
            "wall_time_s": statistics.fmean(m["wall_time_s"] for m in ms),
            "test_acc": test,
            "test_acc_std": test_std,
            "test_images": n_test,
            "test_ci": wilson(test, n_test) if test is not None and n_test else None,
            "report_val": float(ref["val"]) if ref.get("val") else None,
            "report_test": float(ref["test"]) if ref.get("test") else None,
        }
        row.update(out_of_fold(ms))
        row["delta_val"] = _minus(val, row["report_val"])
        row["delta_test"] = _minus(test, row["report_test"])
        rows.append(row)
    order = {run_id: k for k, run_id in enumerate(refs)}
    rows.sort(key=lambda r: (r["family"], order.get(r["id"], len(order)), r["id"]))
    for family in {r["family"] for r in rows}:
        mark_noise([r for r in rows if r["family"] == family])
    return rows


def out_of_fold(ms: list[dict[str, Any]]) -> dict[str, Any]:
    """Cross-validation runs (data.folds=K): the out-of-fold accuracy, every image of
    train + val predicted once by the model that did not train on it, pooled over the
    folds (and averaged over seeds: its images are those of one seed's folds)."""
    runs = [m for m in ms if m.get("folds") and m.get("val_images")]
    if not runs:
        return {"folds": None, "oof_acc": None, "oof_images": None, "oof_ci": None}
    images = sum(m["val_images"] for m in runs)
    acc = sum(m["best_val_acc"] * m["val_images"] for m in runs) / images
    n = round(images / len({m.get("seed") for m in runs}))
    return {"folds": runs[0]["folds"], "oof_acc": acc, "oof_images": n, "oof_ci": wilson(acc, n)}


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def mark_noise(rows: list[dict]) -> None:
    """``vs_best``: best, within noise (the 95 % interval of the difference from the
    family's best contains 0), or below."""

    def measured(r: dict) -> tuple[float, int] | None:
        # Cross-validated rows compare by their out-of-fold accuracy: all the images.
        if r.get("oof_acc") is not None:
            return r["oof_acc"], r["oof_images"]
        if r["val_acc"] is not None and r["val_images"]:
            return r["val_acc"], r["val_images"]
        return None

    scored = [r for r in rows if measured(r)]
    if not scored:
        return
    best = max(scored, key=lambda r: measured(r)[0])
    for r in scored:
        if r is best:
            r["vs_best"] = "best"
            continue
        lo, hi = difference_interval(*measured(best), *measured(r))
        r["vs_best"] = "within noise" if lo <= 0 <= hi else "below"


def _acc(value: float | None, std: float | None, runs: int, ci: tuple | None) -> str:
    if value is None:
        return "-"
    text = f"{value:.3f} ± {std:.3f}" if runs > 1 else f"{value:.3f}"
    return f"{text} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else text


def _settings_text(row: dict) -> str:
    source = f" from {row['init_from']}" if row.get("init_from") else ""
    if "arch" not in row:
        return source.strip() or "-"
    return (
        f"{row['arch']} b{row['batch_size']} stages={row['trainable_stages']} "
        f"w={row['weights']} {row['head']} p={row['dropout']} lr={row['lr']} {row['sched']} "
        f"tta={row['tta']}{source}"
    )


def markdown(rows: list[dict]) -> str:
    out = [
        "# hw1 runs against the report",
        "",
        "Accuracies are the best validation accuracy of each run (test: the best checkpoint on",
        "the test labels, when the data has them), with a 95 % Wilson interval from the number",
        "of images it was measured on; several seeds (or folds): mean ± std. Cross-validated",
        "runs also give the out-of-fold accuracy over all their images, which *vs best* then",
        "uses. *vs best*: whether the 95 % interval of the difference from the family's best",
        "contains zero (within noise).",
        "",
    ]
    header = (
        "| ID | settings | params | runs | val acc [95 % CI] | best epoch | epochs | wall s "
        "| test acc [95 % CI] | report val (test) | Δ val | vs best |"
    )
    for family in dict.fromkeys(r["family"] for r in rows):
        out += [f"## {family}", "", header, "|" + "---|" * 12]
        for r in (r for r in rows if r["family"] == family):
            params = f"{r['params']:,}" + (" **over 100 M**" if r["over_limit"] else "")
            ref = "-" if r["report_val"] is None else f"{r['report_val']:.2f}"
            if r["report_test"] is not None:
                ref += f" ({r['report_test']:.2f})"
            delta = "-" if r["delta_val"] is None else f"{r['delta_val']:+.3f}"
            val = _acc(r["val_acc"], r["val_acc_std"], r["runs"], r["val_ci"])
            if r.get("oof_acc") is not None:
                lo, hi = r["oof_ci"]
                val += f"; {r['folds']}-fold out-of-fold {r['oof_acc']:.3f} [{lo:.3f}, {hi:.3f}]"
            out.append(
                f"| {r['id']} | {_settings_text(r)} | {params} | {r['runs']} | {val} "
                f"| {r['best_epoch']:.1f} | {r['epochs']:.1f} | {r['wall_time_s']:.0f} "
                f"| {_acc(r['test_acc'], r['test_acc_std'], r['runs'], r['test_ci'])} "
                f"| {ref} | {delta} | {r.get('vs_best', '-')} |"
            )
        out.append("")
    return "\n".join(out)


CSV_FIELDS = [
    "family", "id", "runs", "seeds", "init_from", "arch", "batch_size", "trainable_stages",
    "weights", "head", "dropout", "lr", "sched", "tta", "params", "over_limit", "val_acc",
    "val_acc_std", "val_ci_low", "val_ci_high", "val_images", "best_epoch", "epochs", "wall_time_s",
    "test_acc", "test_acc_std", "test_ci_low", "test_ci_high", "test_images", "report_val",
    "report_test", "delta_val", "delta_test", "folds", "oof_acc", "oof_ci_low", "oof_ci_high",
    "oof_images", "vs_best",
]  # fmt: skip


def csv_report(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        flat = dict(r)
        for key in ("val", "test", "oof"):
            ci = r[f"{key}_ci"] or (None, None)
            flat[f"{key}_ci_low"], flat[f"{key}_ci_high"] = ci
        writer.writerow(flat)
    return out.getvalue()


def curves_image(runs: list[dict[str, Any]]):
    panels = []
    for family in dict.fromkeys(r["family"] for r in runs):
        series: dict[str, list] = defaultdict(list)
        for run in (r for r in runs if r["family"] == family):
            series[run["id"]].append(run["curve"])
        panels.append(line_chart(f"{family}: validation accuracy per epoch", dict(series)))
    return stack(panels)


def param_value(text: str | None) -> Any:
    """A logged parameter's value (MLflow keeps strings): 16, 0.003, None, [0.5, 0.2] as
    Python reads them, anything else as the string."""
    try:
        return ast.literal_eval(text) if text is not None else None
    except (ValueError, SyntaxError):
        return text


def mlflow_runs(uri: str, experiment: str, refs: dict[str, dict[str, str]]) -> list[dict]:
    """The finished runs of an MLflow experiment (a sweep's, hw1.tune's study), as
    ``load_run`` reads a run directory: its metrics.json artifact, its settings from the
    logged parameters, its val/acc curve from the metric's history."""
    try:
        from mlflow import MlflowClient
        from mlflow.artifacts import download_artifacts
    except ImportError:
        raise UserFileNotFoundError(
            '--mlflow needs the mlflow package: pip install "hw1[track]"'
        ) from None
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = [e.name for e in client.search_experiments()]
        raise UserFileNotFoundError(f"no MLflow experiment {experiment!r} in {uri}; it has {names}")
    runs = []
    for run in client.search_runs([found.experiment_id], "attributes.status = 'FINISHED'"):
        run_id = run.info.run_id
        path = download_artifacts(run_id=run_id, artifact_path="metrics.json", tracking_uri=uri)
        metrics = json.loads(Path(path).read_text())
        history = sorted(client.get_metric_history(run_id, "val/acc"), key=lambda m: m.step)
        name = metrics.get("id") or run.info.run_name
        runs.append({
            "dir": run.info.run_name,
            "id": name,
            "family": metrics.get("family") or refs.get(name, {}).get("family") or "runs",
            "metrics": metrics,
            "settings": settings_of(lambda key, p=run.data.params: param_value(p.get(key))),
            "curve": [(k + 1, m.value) for k, m in enumerate(history)],
        })  # fmt: skip
    if not runs:
        raise UserFileNotFoundError(f"no finished run in the MLflow experiment {experiment!r}")
    return runs


def report(dirs: list[Path], out: Path, mlflow: tuple[str, str] | None = None) -> list[dict]:
    """The report of the runs under ``dirs``, or of an MLflow experiment: ``mlflow`` is
    (tracking URI, experiment name)."""
    refs = reference()
    if mlflow is not None:
        runs = mlflow_runs(*mlflow, refs)
    else:
        runs = [load_run(d, refs) for d in find_runs(dirs)]
    rows = summarise(runs, refs)
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(out / "report.md", markdown(rows))
    write_atomically(out / "report.csv", csv_report(rows))
    write_atomically(out / "curves.png", png_bytes(curves_image(runs)))
    return rows
