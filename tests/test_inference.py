"""Sliding-window, multi-scale, flipped inference against plain whole-image forwards."""

import numpy as np
import pytest
import torch
from torch import nn

from semseg.evaluation.inference import IMAGENET_MEAN, IMAGENET_STD, SlidingWindowPredictor, scaled_size, window_starts
from semseg.models import build_model


def random_image(height, width, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (height, width, 3)).astype(np.float32)


def whole_image_probabilities(model, image, flip=True):
    """softmax(model(x)), averaged with the mirrored prediction of the mirrored image."""
    x = (torch.from_numpy(image).permute(2, 0, 1) - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(
        IMAGENET_STD
    ).view(3, 1, 1)
    with torch.no_grad():
        probabilities = model(x[None]).softmax(1)[0]
        if flip:
            probabilities = (probabilities + model(x[None].flip(3)).softmax(1)[0].flip(2)) / 2
    return probabilities


def test_window_starts_cover_the_side_and_end_at_the_border():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]
    assert window_starts(4, 4, 3) == [0]
    assert scaled_size(100, 50, 64) == (64, 32) and scaled_size(50, 100, 64) == (32, 64)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_overlapping_windows_of_a_pointwise_network_equal_the_whole_image(batch_size):
    # a 1x1 conv sees each pixel alone, so any window arrangement must give the whole-image answer
    model = nn.Conv2d(3, 4, 1).eval()
    image = random_image(23, 30)
    predictor = SlidingWindowPredictor(model, 4, crop_size=(9, 13), base_size=30, flip=True, batch_size=batch_size)
    torch.testing.assert_close(predictor.probabilities(image), whole_image_probabilities(model, image))


def test_a_window_that_covers_the_image_equals_one_whole_image_forward():
    model = build_model({"arch": "segnet", "classes": 3, "width": 0.25}).eval()
    image = random_image(32, 48)
    for flip in (True, False):
        predictor = SlidingWindowPredictor(model, 3, crop_size=(32, 48), base_size=48, flip=flip)
        expected = whole_image_probabilities(model, image, flip=flip)
        torch.testing.assert_close(predictor.probabilities(image), expected)
        assert np.array_equal(predictor.predict(image), expected.argmax(0).numpy().astype(np.uint8))


def test_images_smaller_than_a_window_are_padded_with_the_mean():
    seen = []

    class Recorder(nn.Conv2d):
        def forward(self, x):
            seen.append(x)
            return super().forward(x)

    model = Recorder(3, 2, 1).eval()
    image = random_image(5, 7)
    predictor = SlidingWindowPredictor(model, 2, crop_size=(9, 11), base_size=7, flip=False)
    torch.testing.assert_close(predictor.probabilities(image), whole_image_probabilities(model, image, flip=False))
    crop = seen[0]  # the predictor's one window
    assert crop.shape == (1, 3, 9, 11)
    # 2 rows above, 2 below, 2 columns left and right: the normalised mean, 0
    assert crop[..., :2, :].abs().max() == 0 and crop[..., 7:, :].abs().max() == 0
    assert crop[..., :, :2].abs().max() == 0 and crop[..., :, 9:].abs().max() == 0
    assert crop[..., 2:7, 2:9].abs().min() > 0


def test_multi_scale_and_flip_run_and_average_probabilities():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(8, 5, 1)).eval()
    image = random_image(21, 34)
    single = SlidingWindowPredictor(model, 5, crop_size=17, base_size=34, scales=[1.0])
    repeated = SlidingWindowPredictor(model, 5, crop_size=17, base_size=34, scales=[1.0, 1.0])
    torch.testing.assert_close(single.probabilities(image), repeated.probabilities(image))
    multi = SlidingWindowPredictor(model, 5, crop_size=17, base_size=34, scales=[0.5, 0.75, 1.0, 1.25, 1.75])
    probabilities = multi.probabilities(image)
    assert probabilities.shape == (5, 21, 34)
    torch.testing.assert_close(probabilities.sum(0), torch.ones(21, 34))
    prediction = multi.predict(image)
    assert prediction.shape == (21, 34) and prediction.dtype == np.uint8 and prediction.max() < 5
    assert not torch.allclose(probabilities, single.probabilities(image))


def test_the_network_runs_in_eval_mode_and_gets_its_mode_back():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 3, 1))
    model.train()
    predictor = SlidingWindowPredictor(model, 3, crop_size=9, base_size=20, batch_size=3)
    probabilities = predictor.probabilities(random_image(15, 20))
    assert model.training and torch.equal(model[1].num_batches_tracked, torch.tensor(0))  # BatchNorm untouched
    torch.testing.assert_close(probabilities.sum(0), torch.ones(15, 20))


def test_wrong_network_or_settings_are_errors():
    model = nn.Conv2d(3, 4, 1)
    with pytest.raises(ValueError, match="expected logits of N x 3"):
        SlidingWindowPredictor(model, 3, crop_size=8).probabilities(random_image(8, 8))
    with pytest.raises(ValueError, match="HxWx3"):
        SlidingWindowPredictor(model, 4, crop_size=8).probabilities(np.zeros((8, 8)))
    with pytest.raises(ValueError, match="scales"):
        SlidingWindowPredictor(model, 4, scales=[])
    with pytest.raises(ValueError, match="batch_size"):
        SlidingWindowPredictor(model, 4, batch_size=0)
