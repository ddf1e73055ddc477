"""The synthetic 'shapes' dataset: a segmentation task that trains in minutes on a CPU.

Every image shows a few shapes (disc, square, triangle, ring, stripe) of random size, colour,
rotation and position, overlapping, on a textured background with thin clutter lines and uneven
lighting. Shapes and background draw their colours from the same distribution, so a pixel's
colour says nothing about its class: a network has to see the outline (a ring's hole, a stripe's
length, a triangle's corners). Labels are train ids; the pixels that an anti-aliased edge only
partly covers are 255 (ignore), a band about one pixel wide.

Everything follows from the seed: image ``i`` of a split is drawn from its own generator seeded
with ``(seed, split, i)``, so a dataset is the same on every machine and a larger one begins with
the images of a smaller one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from semseg.atomic import atomic_path
from semseg.data import list_files
from semseg.data.list_files import OverwriteError

# A folder that is not a shapes dataset stops generate() before it changes anything there.
WAY_OUT = "Generate the shapes dataset into a folder of its own (tool/make_shapes.py FOLDER, data_root)"

CLASSES = ("background", "disc", "square", "triangle", "ring", "stripe")
COLORS = ((70, 70, 70), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48))
IGNORE = 255
SPLITS = ("train", "val", "test")
DEFAULT_SIZES = {"train": 800, "val": 100, "test": 200}
DEFAULT_SEED = 0
# Shapes are vivid, the background is greyish: colour tells where objects are (the thin clutter lines
# excepted), and which object it is only its outline tells.
SHAPE_SATURATION, BACKGROUND_SATURATION = (170, 256), (0, 70)
SUPERSAMPLE = 4  # shapes are rasterised at 4x and averaged down: anti-aliased edges, exact coverage


@dataclass(frozen=True)
class Shape:
    """One shape as drawn: class id, centre (x, y), size (radius in pixels) and rotation in degrees."""

    cls: int
    centre: tuple[float, float]
    radius: float
    angle: float


def _random_colour(
    rng: np.random.Generator, saturation: tuple[int, int] = (0, 256), value: tuple[int, int] = (40, 256)
) -> np.ndarray:
    """An RGB colour of any hue, with a saturation and a brightness (0-255) drawn from the given ranges."""
    hsv = np.array([[[rng.integers(0, 180), rng.integers(*saturation), rng.integers(*value)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A size x size field in [-1, 1] that varies over about ``cells`` cells per side."""
    coarse = rng.uniform(-1, 1, (cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC).clip(-1, 1)


def _texture(rng: np.random.Generator, size: int, saturation: tuple[int, int] = (0, 256)) -> np.ndarray:
    """A size x size x 3 float image: two colours mixed by a grating or blotchy noise."""
    first, second = _random_colour(rng, saturation), _random_colour(rng, saturation)
    if rng.random() < 0.5:
        y, x = np.mgrid[0:size, 0:size].astype(np.float32)
        theta = rng.uniform(0, math.pi)
        period = rng.uniform(4, 16)
        weight = 0.5 + 0.5 * np.sin((x * math.cos(theta) + y * math.sin(theta)) * 2 * math.pi / period)
    else:
        weight = 0.5 + 0.5 * _smooth_noise(rng, size, int(rng.integers(3, 9)))
    weight = weight * rng.uniform(0.3, 1.0)  # how strongly the second colour shows
    return first * (1 - weight[..., None]) + second * weight[..., None]


def _outline(shape: Shape, scale: float) -> np.ndarray:
    """The polygon of a square, triangle or stripe at ``scale`` times the image's resolution."""
    cx, cy = shape.centre
    if shape.cls == CLASSES.index("square"):
        size = (shape.radius * 1.7, shape.radius * 1.7)
    elif shape.cls == CLASSES.index("stripe"):
        size = (shape.radius * 3.2, shape.radius * 0.6)
    else:  # triangle: equilateral, its corners on the circle of radius 1.2 r
        angles = np.deg2rad(shape.angle + np.array([90.0, 210.0, 330.0]))
        points = np.stack([cx + 1.2 * shape.radius * np.cos(angles), cy + 1.2 * shape.radius * np.sin(angles)], 1)
        return np.round(points * scale).astype(np.int32)
    points = cv2.boxPoints(((cx, cy), size, shape.angle))
    return np.round(points * scale).astype(np.int32)


def coverage(shape: Shape, size: int) -> np.ndarray:
    """The fraction of every pixel the shape covers: a size x size float32 map in [0, 1]."""
    big = size * SUPERSAMPLE
    canvas = np.zeros((big, big), np.uint8)
    cx, cy = (round(v * SUPERSAMPLE) for v in shape.centre)
    radius = shape.radius * SUPERSAMPLE
    if shape.cls == CLASSES.index("disc"):
        cv2.circle(canvas, (cx, cy), round(radius), 255, -1)
    elif shape.cls == CLASSES.index("ring"):
        thickness = radius * 0.45
        cv2.circle(canvas, (cx, cy), round(radius - thickness / 2), 255, max(1, round(thickness)))
    else:
        cv2.fillPoly(canvas, [_outline(shape, SUPERSAMPLE)], 255)
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


def _shapes(rng: np.random.Generator, size: int) -> list[Shape]:
    count = int(rng.integers(2, 5))
    shapes = []
    for _ in range(count):
        cls = int(rng.integers(1, len(CLASSES)))
        radius = float(rng.uniform(0.12, 0.24) * size)
        centre = (float(rng.uniform(0.1, 0.9) * size), float(rng.uniform(0.1, 0.9) * size))
        shapes.append(Shape(cls, centre, radius, float(rng.uniform(0, 360))))
    return shapes


def _clutter(rng: np.random.Generator, image: np.ndarray) -> None:
    """Thin lines and arcs on the background: edges that belong to no shape."""
    size = image.shape[0]
    for _ in range(int(rng.integers(0, 4))):
        colour = tuple(float(c) for c in _random_colour(rng))
        start = tuple(int(v) for v in rng.integers(0, size, 2))
        if rng.random() < 0.5:
            end = tuple(int(v) for v in rng.integers(0, size, 2))
            cv2.line(image, start, end, colour, 1, cv2.LINE_AA)
        else:
            axes = tuple(int(v) for v in rng.integers(4, size // 2, 2))
            angle, sweep = float(rng.uniform(0, 360)), float(rng.uniform(60, 200))
            cv2.ellipse(image, start, axes, angle, 0, sweep, colour, 1, cv2.LINE_AA)


def _lighting(rng: np.random.Generator, size: int) -> np.ndarray:
    """A gain per pixel: a linear ramp in a random direction times smooth blotches."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    theta = rng.uniform(0, 2 * math.pi)
    ramp = (x - 0.5) * math.cos(theta) + (y - 0.5) * math.sin(theta)
    gain = rng.uniform(0.6, 1.2) + rng.uniform(0.0, 0.8) * ramp
    return (gain * (1 + 0.15 * _smooth_noise(rng, size, 3))).clip(0.25, 1.6)


def render(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """One sample: an RGB uint8 image (size x size x 3) and its uint8 label of train ids and 255."""
    image = _texture(rng, size, BACKGROUND_SATURATION)
    _clutter(rng, image)
    label = np.zeros((size, size), np.uint8)
    uncertain = np.zeros((size, size), bool)
    for shape in _shapes(rng, size):
        alpha = coverage(shape, size)
        colour = _random_colour(rng, SHAPE_SATURATION, (150, 256))
        fill = colour * (1 + 0.25 * _smooth_noise(rng, size, 2)[..., None])  # a little shading
        image = image * (1 - alpha[..., None]) + fill * alpha[..., None]
        label[alpha >= 0.5] = shape.cls
        uncertain[alpha >= 0.8] = False  # an edge this shape covers is no edge any more
        uncertain |= (alpha > 0.2) & (alpha < 0.8)
    image = image * _lighting(rng, size)[..., None]
    image += rng.normal(0, rng.uniform(2, 12), image.shape)
    label[uncertain] = IGNORE
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


def sample(index: int, split: str = "train", seed: int = DEFAULT_SEED, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index`` of ``split``: the same arrays on every call and machine."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return render(np.random.default_rng([seed, SPLITS.index(split), index]), size)


def _write_png(path: Path, array: np.ndarray) -> None:
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    with atomic_path(path) as temporary:
        if not cv2.imwrite(str(temporary), array):
            raise OSError(f"{path}: cannot write the PNG")


def generate(
    root: str | os.PathLike,
    sizes: Mapping[str, int] | None = None,
    seed: int = DEFAULT_SEED,
    size: int = 64,
) -> dict[str, int]:
    """Write the dataset under ``root``: images/<split>/, labels/<split>/ and <split>.txt per split.

    The list files are written last, so a list that exists belongs to a complete split. A list file
    or an image in the way that this dataset did not write (``root`` is some other dataset) is an
    error, and nothing of it is overwritten. Returns the number of samples per split.
    """
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    unknown = set(sizes) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; the splits are {', '.join(SPLITS)}")
    if any(count < 1 for count in sizes.values()):
        raise ValueError(f"every split needs at least one image, got {sizes}")
    if size < 16:
        raise ValueError(f"images must be at least 16 pixels wide, got {size}")
    root = Path(root)
    lists = [root / f"{split}.txt" for split in sizes]
    for path in lists:
        list_files.check_writable(path, WAY_OUT)
    ours = any(path.exists() for path in lists)  # a shapes folder already: its images may be replaced
    for split, count in sizes.items():
        rows = []
        for index in range(count):
            image, label = sample(index, split, seed, size)
            name = f"{split}_{index:05d}.png"
            for path, array in ((root / "images" / split / name, image), (root / "labels" / split / name, label)):
                if not ours and path.exists() and not _holds(path, array):
                    raise OverwriteError(f"{path}: exists and is not an image of this dataset. {WAY_OUT}")
                _write_png(path, array)
            rows.append((f"images/{split}/{name}", f"labels/{split}/{name}"))
        list_files.write_lists("make_shapes", {root / f"{split}.txt": rows}, WAY_OUT)
    return sizes


def _holds(path: Path, array: np.ndarray) -> bool:
    """Whether the PNG at ``path`` holds ``array`` (RGB or labels): one an interrupted run left behind."""
    stored = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if stored is not None and stored.ndim == 3:
        stored = cv2.cvtColor(stored, cv2.COLOR_BGR2RGB)
    return stored is not None and np.array_equal(stored, array)


def ensure_dataset(cfg, log=print) -> bool:
    """Generate the default dataset into ``data_root`` when a config of dataset 'shapes' lacks its lists.

    Returns True when it generated. Other datasets, or a shapes dataset whose lists exist, are left alone.
    """
    if cfg.dataset != "shapes":
        return False
    lists = [cfg.path(key) for key in ("train_list", "val_list", "test_list") if cfg.get(key)]
    if all(path.is_file() for path in lists):
        return False
    log(f"generating the shapes dataset in {cfg.data_root} (seed {DEFAULT_SEED}, {DEFAULT_SIZES})")
    generate(cfg.path("data_root"))
    missing = [str(path) for path in lists if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"generated the shapes dataset in {cfg.data_root}, but the config's lists {missing} are still missing; "
            f"the generator writes {', '.join(f'{split}.txt' for split in SPLITS)} there"
        )
    return True
