"""Temperature scaling (Guo et al., 2017): one scalar T fitted on the validation split's
logits by minimising the negative log-likelihood; the model's probabilities become
``softmax(logits / T)``, and its top-1 class stays the same.

torchmetrics measures calibration but fits nothing, and Lightning has no calibration step:
the fit is a few lines of LBFGS, written here.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import torch
from torch.nn import functional as F

from hw1.models.classifier import TEMPERATURE_KEY
from hw1.utils.errors import UserValueError
from hw1.utils.io import write_atomically
from hw1.utils.weights import safe_load

log = logging.getLogger(__name__)


def logits_of(probs: torch.Tensor) -> torch.Tensor:
    """Logits equivalent to softmax outputs: ``log p`` differs from the model's logits by a
    constant per row, which the softmax ignores, so ``softmax(log p / T)`` is
    ``softmax(logits / T)``. Clamped so that a probability of 0 stays finite."""
    return probs.double().clamp(min=1e-12).log()


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> float:
    """The temperature T > 0 that minimises the NLL of ``softmax(logits / T)`` on
    ``targets``: LBFGS on log T (so T stays positive and the problem is smooth)."""
    if not len(targets):
        raise UserValueError("calibration needs labelled validation images: none were given")
    logits, targets = logits.double().detach(), targets.long()
    if without_mistakes(logits, targets):
        log.warning(
            "calibration: the %d validation images are all classified correctly, so no "
            "temperature minimises their NLL (it falls as T -> 0, saturating every "
            "probability): the temperature is left at 1",
            len(targets),
        )
        return 1.0
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    # A model no better than chance is best calibrated by T -> infinity (uniform
    # probabilities): kept within [1e-2, 1e2], where any real model's T lies.
    return float(log_t.detach().exp().clamp(1e-2, 1e2))


def without_mistakes(logits: torch.Tensor, targets: torch.Tensor) -> bool:
    """Whether every target has the strictly largest logit. Then each image's NLL falls as
    T falls, so the NLL has no minimum at any T > 0 and the fit would drive T to its bound,
    making every probability 0 or 1; with one mistake the NLL grows without bound as
    T -> 0, and a finite T minimises it."""
    true = logits.gather(1, targets[:, None])
    others = logits.scatter(1, targets[:, None], float("-inf"))
    return bool((true[:, 0] > others.amax(dim=1)).all())


def store_temperature(path: str | Path, temperature: float) -> None:
    """Write ``temperature`` into the checkpoint at ``path`` (its top-level "temperature"
    entry, which ``Classifier`` restores and ``predict_probs`` applies), atomically: a
    reader sees the old file or the new one, never half of one."""
    path = Path(path)
    checkpoint = safe_load(path)
    checkpoint[TEMPERATURE_KEY] = float(temperature)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    write_atomically(path, buffer.getvalue())
