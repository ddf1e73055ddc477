"""The results the ACoSP publication reports, quoted from it, to print beside the ones measured here.

``PUBLISHED[(dataset, network)][sparsity]`` is ``(mIoU, mAcc)`` in percent (CamVid: the means over
five seeds; CIFAR-10: the accuracy as mAcc, no mIoU). ``network`` is the recipe's first word, so
``segnet_cpu`` finds the SegNet row that its full-size counterpart reproduces.
"""

from __future__ import annotations

PUBLISHED: dict[tuple[str, str], dict[float, tuple[float | None, float]]] = {
    ("ade20k", "pspnet50"): {
        0.0: (41.42, 51.48), 0.5: (38.97, 49.56), 0.75: (33.67, 43.17), 0.875: (28.04, 35.60), 0.9375: (19.39, 25.52)
    },
    ("voc2012", "pspnet50"): {
        0.0: (77.30, 85.27), 0.5: (72.71, 81.87), 0.75: (65.84, 77.12), 0.875: (58.26, 69.65), 0.9375: (48.06, 58.83)
    },
    ("cityscapes", "pspnet50"): {
        0.0: (77.35, 84.27), 0.5: (74.11, 81.73), 0.75: (71.50, 79.40), 0.875: (66.06, 74.33), 0.9375: (59.49, 67.74)
    },
    ("cityscapes", "segnet"): {
        0.0: (65.12, 73.85), 0.5: (64.62, 73.19), 0.75: (60.77, 69.57), 0.875: (54.34, 62.48), 0.9375: (44.12, 50.87)
    },
    ("camvid", "segnet"): {
        0.0: (55.49, 65.44), 0.5: (51.85, 61.86), 0.75: (50.10, 59.79), 0.875: (47.25, 56.87), 0.9375: (42.27, 51.25)
    },
    ("cifar10", "resnet18"): {
        0.0: (None, 89.68), 0.5: (None, 88.50), 0.75: (None, 86.21), 0.875: (None, 81.06), 0.9375: (None, 76.81)
    },
}  # fmt: skip


def published(dataset: str, network: str, sparsity: float) -> tuple[float | None, float] | None:
    """The publication's (mIoU, mAcc) for a run, or None where it reports none."""
    return PUBLISHED.get((dataset, network.split("_")[0]), {}).get(float(sparsity))
