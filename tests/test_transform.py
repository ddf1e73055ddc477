"""Augmentation keeps image and label aligned, keeps label values, and draws at the stated probability."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from semseg.data import transform as T

CLASSES, IGNORE = 5, 255
MEAN = [100.0, 110.0, 120.0]


def position_pair(h=48, w=64):
    """An image whose channels hold each pixel's row and column, and a label that is a function of them."""
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.stack([rows, cols, np.full_like(rows, 7.0)], axis=2)
    return image, label_of(rows, cols)


def label_of(rows, cols):
    return ((np.floor(rows / 8) + np.floor(cols / 8)) % CLASSES).astype(np.uint8)


def agreement(image, label):
    """Fraction of non-ignored pixels whose label is the function of the position the image says they came from."""
    image, label = np.asarray(image), np.asarray(label)
    known = label != IGNORE
    rows, cols = image[..., 0], image[..., 1]
    # a position exactly between two pixels may take either one's label
    matches = np.zeros(label.shape, bool)
    for row in (np.floor(rows + 0.501), np.ceil(rows - 0.501)):
        for col in (np.floor(cols + 0.501), np.ceil(cols - 0.501)):
            matches |= label_of(row, col) == label
    return matches[known].mean(), known.mean()


def values_ok(label):
    return set(np.unique(np.asarray(label)).tolist()) <= set(range(CLASSES)) | {IGNORE}


EXACT = [
    T.RandomHorizontalFlip(p=1.0),
    T.Crop((32, 40), "rand", MEAN, IGNORE),
    T.Crop((32, 40), "center", MEAN, IGNORE),
    T.Crop((80, 90), "rand", MEAN, IGNORE),  # larger than the image: padded
]
RESAMPLING = [
    T.RandScale((0.5, 2.0)),
    T.RandScale((0.7, 1.4), aspect_ratio=(0.5, 2.0)),
    T.RandRotate((-30, 30), MEAN, IGNORE, p=1.0),
    T.Resize((37, 91)),
    T.RandomGaussianBlur(5, p=1.0),
]


@pytest.mark.parametrize("transform", EXACT, ids=lambda t: type(t).__name__)
def test_exact_transforms_keep_image_and_label_aligned(transform):
    T.seed(0)
    for _ in range(10):
        image, label = transform(*position_pair())
        assert image.shape[:2] == label.shape and image.dtype == np.float32 and label.dtype == np.uint8
        assert agreement(image, label)[0] == 1.0
        assert values_ok(label)


@pytest.mark.parametrize("transform", RESAMPLING, ids=lambda t: type(t).__name__)
def test_resampling_transforms_keep_image_and_label_aligned(transform):
    T.seed(0)
    for _ in range(10):
        image, label = transform(*position_pair())
        assert image.shape[:2] == label.shape and image.shape[2] == 3
        aligned, known = agreement(image, label)
        assert aligned > 0.97 and known > 0.5  # rotation: pixels at the edge mix with the padding
        assert values_ok(label)


def test_the_training_pipeline_keeps_alignment_and_values():
    pipeline = T.Compose(
        [
            T.RandScale((0.5, 2.0)),
            T.RandRotate((-10, 10), MEAN, IGNORE),
            T.RandomGaussianBlur(),
            T.RandomHorizontalFlip(),
            T.Crop(33, "rand", MEAN, IGNORE),
        ]
    )
    T.seed(1)
    for _ in range(20):
        image, label = pipeline(*position_pair())
        assert image.shape == (33, 33, 3) and label.shape == (33, 33)
        assert values_ok(label)
        if (label != IGNORE).mean() > 0.2:
            assert agreement(image, label)[0] > 0.9


def test_padding_fills_the_image_with_the_mean_and_the_label_with_ignore():
    image, label = position_pair(10, 10)
    padded_image, padded_label = T.Crop((20, 30), "center", MEAN, IGNORE)(image, label)
    assert padded_image.shape == (20, 30, 3)
    assert np.array_equal(padded_image[0, 0], MEAN) and padded_label[0, 0] == IGNORE
    assert np.array_equal(padded_image[5:15, 10:20], image) and np.array_equal(padded_label[5:15, 10:20], label)
    _, rotated = T.RandRotate((45, 45), MEAN, IGNORE, p=1.0)(image, label)
    assert rotated[0, 0] == IGNORE


def test_center_crop_is_centred_and_without_padding_a_small_image_is_an_error():
    image, label = position_pair(10, 12)
    cropped, _ = T.Crop((4, 6), "center")(image, label)
    assert cropped[0, 0, 0] == 3 and cropped[0, 0, 1] == 3
    with pytest.raises(ValueError, match="smaller than the crop 20x20 and padding is None"):
        T.Crop(20)(image, label)


@pytest.mark.parametrize(
    "make, changed",
    [
        (lambda p: T.RandomHorizontalFlip(p), lambda a, b: not np.array_equal(a, b)),
        (lambda p: T.RandRotate((5, 10), MEAN, IGNORE, p=p), lambda a, b: not np.array_equal(a, b)),
        (lambda p: T.RandomGaussianBlur(3, p=p), lambda a, b: not np.array_equal(a, b)),
    ],
    ids=["flip", "rotate", "blur"],
)
def test_random_transforms_respect_their_probability(make, changed):
    T.seed(0)
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (12, 12, 3)).astype(np.float32)
    label = rng.integers(0, CLASSES, (12, 12)).astype(np.uint8)
    for p, low, high in ((0.0, 0, 0), (1.0, 400, 400), (0.3, 90, 150)):
        transform = make(p)
        count = sum(changed(transform(image, label)[0], image) for _ in range(400))
        assert low <= count <= high, (p, count)


def test_label_none_is_passed_through_for_classification_data():
    image = position_pair(32, 32)[0]
    pipeline = T.Compose([T.Crop(40, "rand", MEAN), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN)])
    tensor, label = pipeline(image, None)
    assert tensor.shape == (3, 40, 40) and label is None


def test_to_tensor_and_normalize_work_on_the_0_255_scale():
    image = np.full((2, 3, 3), 200.0, np.float32)
    label = np.array([[0, 1, 255], [2, 3, 4]], np.uint8)
    tensor, target = T.ToTensor()(image, label)
    assert tensor.shape == (3, 2, 3) and tensor.dtype == torch.float32 and tensor.max() == 200.0
    assert target.dtype == torch.int64 and target.tolist() == label.tolist()
    normalized, _ = T.Normalize(MEAN, [2.0, 4.0, 5.0])(tensor, target)
    assert normalized[:, 0, 0].tolist() == [50.0, 22.5, 16.0]


def test_seed_makes_the_augmentation_repeatable():
    def run(value):
        T.seed(value)
        return T.Compose([T.RandScale((0.5, 2.0)), T.Crop(20, "rand", MEAN, IGNORE)])(*position_pair())[0]

    assert np.array_equal(run(3), run(3))
    assert not np.array_equal(run(3), run(4))


class Draws(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        return torch.tensor(T.rng().random())


def test_each_dataloader_worker_draws_its_own_random_numbers():
    def draws():
        torch.manual_seed(0)
        loader = DataLoader(Draws(), batch_size=1, num_workers=2, worker_init_fn=T.worker_init_fn)
        return [float(x) for x in loader]

    first = draws()
    assert len(set(first)) == 8  # without the hook, forked workers would repeat each other's numbers
    assert draws() == first  # and the same torch seed repeats the run


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: T.RandScale((2.0, 1.0)), "scale must be a range"),
        (lambda: T.RandScale("big"), "scale must be a number or a pair"),
        (lambda: T.RandScale((0.5, 2), aspect_ratio=(0, 1)), "aspect_ratio must be a range"),
        (lambda: T.Crop(0), "size must be positive"),
        (lambda: T.Crop(10, "random"), "crop_type must be 'center' or 'rand'"),
        (lambda: T.Crop(10, "rand", MEAN, 300), "ignore_label must be an integer in 0..255"),
        (lambda: T.RandRotate((10, -10), MEAN), "rotate must be a range"),
        (lambda: T.RandRotate((-10, 10), None), "padding .* is required"),
        (lambda: T.RandRotate((-10, 10), MEAN, p=1.5), r"p must be a probability in \[0, 1\]"),
        (lambda: T.RandomGaussianBlur(4), "radius must be an odd positive integer"),
        (lambda: T.RandomHorizontalFlip(-0.1), "p must be a probability"),
        (lambda: T.Normalize(MEAN, [1.0, 0.0, 1.0]), "std must be positive"),
        (lambda: T.Normalize(MEAN, [1.0]), "one value per channel"),
        (lambda: T.Resize((0, 5)), "size must be positive"),
    ],
)
def test_bad_arguments_are_value_errors_at_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_label_of_the_wrong_size_is_an_error():
    image, label = position_pair()
    with pytest.raises(ValueError, match=r"label must be a numpy array of the image's size \(48, 64\)"):
        T.RandomHorizontalFlip()(image, label[:10])
