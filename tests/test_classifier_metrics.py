"""Paired top-1 drops (`sddcompress_export.classifier_metrics.paired_drop`)."""

import numpy as np

from sddcompress_export.classifier_metrics import logits_metrics, paired_drop


def _logits(predictions, classes=3):
    return np.eye(classes, dtype=np.float32)[predictions]


def test_the_drop_counts_images_lost_and_won_and_its_spread_only_the_changed_ones():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    reference = _logits([0, 1, 2, 0, 1, 2, 1, 2])  # six right
    candidate = _logits([0, 1, 2, 1, 2, 2, 0, 2])  # two lost (images 3, 4), one won (image 6)
    change = paired_drop(reference, candidate, labels)

    assert change["changed"] == 3
    top1 = logits_metrics(reference, labels)["top1"] - logits_metrics(candidate, labels)["top1"]
    assert np.isclose(change["drop"], top1) and np.isclose(change["drop"], 100 / 8)
    differences = np.array([0, 0, 0, 1, 1, 0, -1, 0], np.float64)  # right before minus right after
    assert np.isclose(change["standard_error"], 100 * differences.std(ddof=1) / np.sqrt(8))


def test_one_image_has_no_standard_error():
    labels = np.array([1])
    assert paired_drop(_logits([1]), _logits([2]), labels) == {"drop": 100.0, "standard_error": None, "changed": 1}


def test_unchanged_predictions_drop_nothing_with_no_spread():
    labels = np.array([0, 1, 2, 2])
    logits = _logits([0, 2, 2, 1])
    assert paired_drop(logits, logits * 3, labels) == {"drop": 0.0, "standard_error": 0.0, "changed": 0}
