"""Confusion-matrix scores: semseg's numbers, NaN-excluded absent classes, sums over processes, colours."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from semseg.data.palette import colorize
from semseg.evaluation.metrics import (
    ClassificationAccuracy,
    SegmentationMetrics,
    areas,
    confusion_matrix,
    scores,
    training_metrics,
)


def semseg_areas(output, target, classes, ignore_index=255):
    """semseg's histogram formulation, written out independently of semseg.evaluation.metrics."""
    output, target = output.reshape(-1).copy(), target.reshape(-1)
    output[target == ignore_index] = ignore_index
    intersection = output[output == target]
    bins = np.arange(classes + 1)
    area_intersection = np.histogram(intersection, bins=bins)[0]
    area_output = np.histogram(output, bins=bins)[0]
    area_target = np.histogram(target, bins=bins)[0]
    return area_intersection, area_output + area_target - area_intersection, area_target


def random_maps(seed, classes=5, shape=(4, 9, 7)):
    generator = np.random.default_rng(seed)
    pred = generator.integers(0, classes, shape)
    target = generator.integers(0, classes, shape)
    target[generator.random(shape) < 0.2] = 255
    return pred, target


def test_areas_match_semseg_histograms_on_numpy_and_torch():
    pred, target = random_maps(0)
    expected = semseg_areas(pred, target, 5)
    for output, labels in ((pred, target), (torch.from_numpy(pred), torch.from_numpy(target))):
        got = areas(confusion_matrix(output, labels, 5, 255))
        for area, reference in zip(got, expected):
            np.testing.assert_array_equal(np.asarray(area), reference)


def test_confusion_matrix_counts_pairs_and_skips_ignored_pixels():
    pred = torch.tensor([[0, 1, 2], [2, 2, 0]])
    target = torch.tensor([[0, 1, 1], [255, 2, 0]])
    assert confusion_matrix(pred, target, 3).tolist() == [[2, 0, 0], [0, 1, 1], [0, 0, 1]]


def test_scores_with_an_absent_class_exclude_and_zero():
    # class 2 appears in neither prediction nor ground truth; class 3 is predicted but never labelled
    pred = np.array([0, 0, 1, 1, 3])
    target = np.array([0, 1, 1, 1, 0])
    metrics = SegmentationMetrics(4)
    metrics.update(pred, target)
    excluded = metrics.summary()
    assert math.isnan(excluded["iou"][2]) and excluded["excluded_iou"] == 1
    assert math.isnan(excluded["acc"][3]) and math.isnan(excluded["acc"][2]) and excluded["excluded_acc"] == 2
    assert excluded["iou"][:2] == pytest.approx([1 / 3, 2 / 3]) and excluded["iou"][3] == 0
    assert excluded["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert excluded["macc"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert excluded["allacc"] == pytest.approx(3 / 5)
    zero = metrics.summary(absent="zero")
    assert zero["iou"][2] == 0 and zero["excluded_iou"] == 0
    # semseg: intersection / (union + 1e-10), mean over every class
    intersection, union, target_area = semseg_areas(pred, target, 4)
    assert zero["miou"] == pytest.approx(np.mean(intersection / (union + 1e-10)))
    assert zero["macc"] == pytest.approx(np.mean(intersection / (target_area + 1e-10)))
    with pytest.raises(ValueError, match="absent must be one of"):
        metrics.summary(absent="skip")


def test_accumulating_batches_equals_scoring_the_whole_split_at_once():
    metrics = SegmentationMetrics(5)
    preds, targets = zip(*(random_maps(seed) for seed in range(3)))
    for pred, target in zip(preds, targets):
        metrics.update(torch.from_numpy(pred), torch.from_numpy(target))
    whole = scores(*semseg_areas(np.concatenate(preds), np.concatenate(targets), 5))
    summary = metrics.summary()
    for key in ("miou", "macc", "allacc", "iou", "acc"):
        assert summary[key] == pytest.approx(whole[key]), key
    metrics.reset()
    assert metrics.confusion.sum() == 0


def test_values_outside_the_classes_are_errors_not_silently_dropped():
    with pytest.raises(ValueError, match="target holds the value 7"):
        confusion_matrix(np.array([0, 1]), np.array([7, 1]), 3)
    with pytest.raises(ValueError, match="prediction holds the value 3"):
        confusion_matrix(np.array([3, 1]), np.array([0, 255]), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), 3)
    with pytest.raises(ValueError, match="argmax"):
        confusion_matrix(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 3)
    # the ignore label may be any value, here CamVid's 11
    assert confusion_matrix(np.array([0, 5]), np.array([11, 1]), 11, ignore_index=11).sum() == 1


def _reduce_worker(rank, folder):
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    try:
        metrics = SegmentationMetrics(5)
        metrics.update(*random_maps(rank))
        torch.save(metrics.reduce().confusion, f"{folder}/rank{rank}.pth")
        accuracy = ClassificationAccuracy()
        accuracy.update(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 0]) if rank else torch.tensor([0, 0, 3]))
        torch.save(accuracy.reduce(), f"{folder}/accuracy{rank}.pth")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_reduce_sums_the_counts_of_every_process(tmp_path):
    mp.spawn(_reduce_worker, args=(str(tmp_path),), nprocs=2, join=True)
    single = SegmentationMetrics(5)
    for rank in range(2):
        single.update(*random_maps(rank))
    for rank in range(2):
        assert torch.equal(torch.load(tmp_path / f"rank{rank}.pth", weights_only=True), single.confusion)
    assert torch.equal(single.reduce().confusion, single.confusion)  # no process group: unchanged
    for rank in range(2):
        assert torch.load(tmp_path / f"accuracy{rank}.pth", weights_only=True) == {"accuracy": 3 / 6}


def test_training_metrics_per_epoch_for_segmentation_and_classification():
    metrics = training_metrics(SimpleNamespace(arch="segnet", classes=5, ignore_label=255))
    pred, target = random_maps(0)
    metrics.update(torch.from_numpy(pred), torch.from_numpy(target))
    result = metrics.reduce()
    expected = scores(*semseg_areas(pred, target, 5))
    assert result == pytest.approx({"mIoU": expected["miou"], "mAcc": expected["macc"], "allAcc": expected["allacc"]})
    # PSPNet with zoom_factor < 8 predicts at a lower resolution: labels are picked at that size
    metrics = training_metrics(SimpleNamespace(arch="psp", classes=2, ignore_label=255))
    metrics.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 0, 1, 1]] * 2 + [[1, 1, 1, 1]] * 2]))
    assert metrics.confusion.tolist() == [[1, 0], [3, 0]]  # rows 0 and 2, columns 0 and 2: labels 0, 1, 1, 1
    accuracy = training_metrics(SimpleNamespace(arch="resnet18", classes=10))
    accuracy.update(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 0]))
    assert accuracy.reduce() == {"accuracy": 0.5}


def test_colorize_takes_semsegs_flat_palette_and_rows_of_colours():
    gray = np.array([[0, 1], [255, 1]], dtype=np.uint8)
    rgb = colorize(gray, [10, 20, 30, 40, 50, 60])  # semseg's flat palette
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [10, 20, 30] and rgb[1, 1].tolist() == [40, 50, 60] and rgb[1, 0].tolist() == [0, 0, 0]
    assert np.array_equal(colorize(gray, np.array([[10, 20, 30], [40, 50, 60]])), rgb)
