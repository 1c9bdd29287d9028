"""Top-1 / top-5 / cross-entropy of logits, in numpy (same definitions as the torch evaluator)."""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np


def batch_stats(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[top-1 hits, top-5 hits, summed cross-entropy, count] for one batch."""
    logits = logits.astype(np.float64)
    k = min(5, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    hit = top == labels[:, None]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    ce = -log_probs[np.arange(len(labels)), labels].sum()
    return np.array([hit[:, 0].sum(), hit.any(axis=1).sum(), ce, len(labels)], dtype=np.float64)


def _summary(stats: np.ndarray) -> dict[str, float]:
    n = max(stats[3], 1.0)
    return {"top1": 100.0 * stats[0] / n, "top5": 100.0 * stats[1] / n, "loss": stats[2] / n, "count": int(stats[3])}


def logits_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """{"top1", "top5" (percent), "loss", "count"} of logits already computed."""
    return _summary(batch_stats(logits, labels))


def score_batches(predict: Callable[[np.ndarray], np.ndarray],
                  batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """The same metrics, streaming (images, labels) batches through `predict`."""
    stats = np.zeros(4)
    for images, labels in batches:
        stats += batch_stats(predict(images), labels)
    return _summary(stats)


def score(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, labels: np.ndarray,
          batch_size: int = 64) -> dict[str, float]:
    """The metrics of `predict` over in-memory preprocessed images."""
    return score_batches(predict, ((images[s:s + batch_size], labels[s:s + batch_size])
                                   for s in range(0, len(images), batch_size)))


def paired_drop(reference_logits: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> dict:
    """How much top-1 (points) `logits` lose against `reference_logits` on the same images, the standard error of
    that drop (of the mean of the per-image differences in correctness, -1, 0 or +1; None below two images),
    and how many top-1 predictions changed. Only images whose prediction changed move the drop, so its spread
    grows with them."""
    reference_predictions, predictions = np.argmax(reference_logits, axis=1), np.argmax(logits, axis=1)
    differences = (reference_predictions == labels).astype(np.float64) - (predictions == labels)
    n = len(differences)
    spread = 100.0 * float(np.std(differences, ddof=1)) / np.sqrt(n) if n > 1 else None
    return {"drop": 100.0 * float(differences.mean()) if n else 0.0, "standard_error": spread,
            "changed": int(np.sum(reference_predictions != predictions))}


def predict_all(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    return np.concatenate([predict(images[s:s + batch_size]) for s in range(0, len(images), batch_size)])
