"""The training loss: torch's cross-entropy with optional inverse-frequency class weights
(``loss.class_weights=balanced``), counted from the training set once it is known.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from hw1.data.samplers import class_counts, inverse_frequency
from hw1.utils.errors import UserValueError


class ClassWeightedCrossEntropy(nn.CrossEntropyLoss):
    """torch's cross-entropy with ``class_weights``: null (none) or ``balanced``
    (``inverse_frequency`` of the training set's counts, set by ``Classifier.setup`` through
    ``count_classes`` once the data is known). The weights are not saved with the model:
    a resumed run counts its data again."""

    def __init__(self, class_weights: str | None = None, **kwargs) -> None:
        if class_weights not in (None, "balanced"):
            raise UserValueError(f"loss.class_weights={class_weights}: use null or balanced")
        super().__init__(**kwargs)
        self.class_weights = class_weights
        self.register_buffer("weight", self.weight, persistent=False)

    def count_classes(self, targets: Sequence[int], num_classes: int) -> None:
        if self.class_weights == "balanced":
            self.weight = inverse_frequency(class_counts(targets, num_classes))
