"""What a reviewer asks of a classifier, from its class probabilities and the true classes:
top-1 and top-5 accuracy with 95 % Wilson intervals, macro and weighted precision, recall
and F1, a per-class table sorted worst first, the negative log-likelihood and the expected
calibration error (15 bins). The metrics are torchmetrics'; what is written here is the
bookkeeping around them: n/a for a class without images, the intervals, the bins of the
reliability diagram."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.nn import functional as F
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_calibration_error,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from hw1.reporting.runs import wilson

ECE_BINS = 15
TOP_K = 5


def classification_metrics(
    probs: torch.Tensor, targets: torch.Tensor, names: Sequence[str]
) -> dict[str, Any]:
    """The summary figures (no per-class table) of ``probs`` (N, C) against ``targets``."""
    n, images = len(names), len(targets)
    k = min(TOP_K, n)
    top1 = multiclass_accuracy(probs, targets, n, average="micro").item()
    topk = multiclass_accuracy(probs, targets, n, top_k=k, average="micro").item()
    out: dict[str, Any] = {
        "images": images,
        "top1": top1,
        "top1_ci95": list(wilson(top1, images)),
        "top5": topk,
        "top5_ci95": list(wilson(topk, images)),
        "top5_k": k,  # fewer than five classes: top-k over all of them
    }
    for average in ("macro", "weighted"):
        # torchmetrics leaves out of the macro mean a class neither present nor predicted
        out[f"precision_{average}"] = multiclass_precision(
            probs, targets, n, average=average
        ).item()
        out[f"recall_{average}"] = multiclass_recall(probs, targets, n, average=average).item()
        out[f"f1_{average}"] = multiclass_f1_score(probs, targets, n, average=average).item()
    out["nll"] = nll(probs, targets)
    out["ece"] = multiclass_calibration_error(probs, targets, n, n_bins=ECE_BINS).item()
    return out


def nll(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean negative log-likelihood of the true classes (probabilities clamped at 1e-12, so
    one confident mistake cannot make it infinite)."""
    return F.nll_loss(probs.double().clamp(min=1e-12).log(), targets.long()).item()


def per_class_table(
    probs: torch.Tensor, targets: torch.Tensor, names: Sequence[str]
) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support per class, worst F1 first (n/a last). A class
    without images in the split has n/a (None) recall and F1, not 0; a class never
    predicted has n/a precision."""
    n = len(names)
    precision = multiclass_precision(probs, targets, n, average=None).tolist()
    recall = multiclass_recall(probs, targets, n, average=None).tolist()
    f1 = multiclass_f1_score(probs, targets, n, average=None).tolist()
    support = torch.bincount(targets, minlength=n).tolist()
    predicted = torch.bincount(probs.argmax(dim=1), minlength=n).tolist()
    rows = [
        {
            "class": name,
            "precision": precision[i] if predicted[i] else None,
            "recall": recall[i] if support[i] else None,
            "f1": f1[i] if support[i] else None,
            "support": support[i],
        }
        for i, name in enumerate(names)
    ]
    return sorted(rows, key=lambda r: (r["f1"] is None, r["f1"] or 0.0, r["class"]))


def reliability_bins(
    probs: torch.Tensor, targets: torch.Tensor, n_bins: int = ECE_BINS
) -> list[dict[str, float]]:
    """The reliability diagram's bins (equal widths of top-1 confidence, as torchmetrics'
    ECE bins them): for each non-empty bin its range, images, mean confidence and accuracy.
    torchmetrics computes the ECE from these but does not return them."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == targets).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    index = torch.bucketize(confidence.double(), edges[1:-1], right=True)
    bins = []
    for b in range(n_bins):
        inside = index == b
        if inside.any():
            bins.append(
                {
                    "lo": edges[b].item(),
                    "hi": edges[b + 1].item(),
                    "images": int(inside.sum()),
                    "confidence": confidence[inside].double().mean().item(),
                    "accuracy": correct[inside].mean().item(),
                }
            )
    return bins


def most_confused(
    confusion: torch.Tensor, names: Sequence[str], top: int = 10
) -> list[dict[str, Any]]:
    """The ``top`` most frequent (true, predicted) mistakes of a confusion matrix (rows:
    true class, columns: predicted)."""
    off = confusion.clone()
    off.fill_diagonal_(0)
    counts, flat = off.flatten().sort(descending=True)
    return [
        {"true": names[i // len(names)], "pred": names[i % len(names)], "count": int(c)}
        for c, i in zip(counts[:top].tolist(), flat[:top].tolist(), strict=True)
        if c > 0
    ]
