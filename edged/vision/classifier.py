"""Classifier heads: scores to the top-k labels.

Some kmodels end in a softmax (MaixPy's mnist does) and some give raw logits, so the
softmax is a switch, not an assumption.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edged.vision.detection import label_for


def softmax(logits: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Softmax of a 1-D score vector, max-subtracted so large logits do not overflow."""
    values = np.asarray(logits, dtype=np.float64).reshape(-1)
    exp = np.exp(values - values.max())
    probs: npt.NDArray[np.float64] = exp / exp.sum()
    return probs.astype(np.float32)


@dataclass(frozen=True, slots=True)
class Classification:
    """One class of a classifier's answer."""

    label: str
    class_id: int
    score: float


@dataclass(frozen=True, slots=True)
class Classifier:
    """Top-k decode of a classifier's single output (any shape; it is flattened)."""

    labels: tuple[str, ...]
    top_k: int = 5
    apply_softmax: bool = True

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")

    def classify(self, outputs: Sequence[npt.ArrayLike]) -> list[Classification]:
        """The ``top_k`` classes, best first; equal scores in class order."""
        if len(outputs) != 1:
            raise ValueError(f"a classifier has 1 output, got {len(outputs)}")
        scores = np.asarray(outputs[0], dtype=np.float32).reshape(-1)
        if scores.size == 0:
            raise ValueError("classifier output is empty")
        if not np.isfinite(scores).all():
            raise ValueError("classifier output holds non-finite values")
        if self.apply_softmax:
            scores = softmax(scores)
        best = np.argsort(-scores, kind="stable")[: self.top_k]
        return [
            Classification(label_for(self.labels, int(i)), int(i), float(scores[i])) for i in best
        ]
