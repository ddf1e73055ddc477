import io
import math

import pytest
import torch
from conftest import SmallCNN, make_batches
from torch import nn

import acosp.inject
from acosp.inject import named_mask_layers, soft_masks
from acosp.masks import ChannelMask, SigmoidSoftTopK
from acosp.pruner import SoftTopKPruner


def test_schedule_end_points_and_monotonicity():
    pruner = SoftTopKPruner(starting_epoch=5, ending_epoch=25, final_sparsity=0.5)
    assert pruner.temperature(0) == pytest.approx(1.0)
    assert pruner.temperature(5) == pytest.approx(1.0)
    assert pruner.temperature(25) == pytest.approx(0.001)
    assert pruner.temperature(100) == pytest.approx(0.001)
    assert pruner.temperature(15) == pytest.approx(math.sqrt(0.001))  # log-linear: halfway is the geometric mean
    values = [pruner.temperature(epoch) for epoch in range(0, 30)]
    assert all(later <= earlier for earlier, later in zip(values, values[1:]))
    assert all(later < earlier for earlier, later in zip(values[5:25], values[6:26]))


def test_schedule_with_custom_temperatures_and_no_duration():
    pruner = SoftTopKPruner(starting_epoch=3, ending_epoch=3, initial_temp=2.0, final_temp=0.01)
    assert pruner.temperature(2) == pytest.approx(2.0)
    assert pruner.temperature(3) == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"final_sparsity": 1.0}, "final_sparsity"),
        ({"final_sparsity": -0.5}, "final_sparsity"),
        ({"starting_epoch": 10, "ending_epoch": 5}, "ending_epoch"),
        ({"final_temp": 0.0}, "temperatures"),
        ({"min_remaining_elements": -1}, "min_remaining_elements"),
    ],
)
def test_impossible_settings_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SoftTopKPruner(**kwargs)


def test_update_mask_layers_sets_every_temperature():
    model = SmallCNN()
    pruner = SoftTopKPruner(0, 10, 0.5)
    pruner.configure_model(model)
    pruner.update_mask_layers(model, 7)
    temperatures = [float(mask.temperature) for _, mask in named_mask_layers(model)]
    assert temperatures == [pytest.approx(pruner.temperature(7))] * 3


def test_inactive_pruner_leaves_the_model_dense():
    model = SmallCNN()
    keys = list(model.state_dict())
    pruner = SoftTopKPruner(final_sparsity=0.5, active=False)
    assert not pruner.adds_masks
    pruner.configure_model(model)
    pruner.update_mask_layers(model, 3)
    assert list(model.state_dict()) == keys
    assert pruner.collect_logs(None, model, 3) == {}


def test_on_pruning_end_hardens_and_deactivates():
    model = SmallCNN()
    pruner = SoftTopKPruner(0, 2, 0.75, min_remaining_elements=0)
    pruner.configure_model(model)
    assert pruner.on_pruning_end(model) is model
    assert not pruner.active and pruner.adds_masks  # a restored finished pruner masks a fresh network, hard
    assert all(isinstance(mask, ChannelMask) for _, mask in named_mask_layers(model))
    assert pruner.state_dict()["active"] is False


def test_pruner_state_round_trip_and_bad_state():
    pruner = SoftTopKPruner(2, 40, 0.875, min_remaining_elements=4, final_temp=1e-4, learnable_weights=False)
    restored = SoftTopKPruner()
    restored.load_state_dict(pruner.state_dict())
    assert restored.state_dict() == pruner.state_dict()
    with pytest.raises(ValueError, match="unknown keys"):
        restored.load_state_dict({**pruner.state_dict(), "sparsity": 0.5})
    with pytest.raises(ValueError, match="final_sparsity"):
        restored.load_state_dict({**pruner.state_dict(), "final_sparsity": 2.0})


class RecordingWriter:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))


def test_collect_logs_writes_per_layer_and_summary_statistics():
    model = SmallCNN()
    pruner = SoftTopKPruner(0, 10, 0.5, min_remaining_elements=2)
    pruner.configure_model(model)
    pruner.update_mask_layers(model, 9)
    writer = RecordingWriter()
    logs = pruner.collect_logs(writer, model, step=17)
    assert {(tag, value) for tag, value, _ in writer.scalars} == set(logs.items())
    assert {step for _, _, step in writer.scalars} == {17}
    for layer in ("features.0", "features.3", "up"):
        for statistic in ("chosen", "pruned", "undecided", "x0", "temperature", "kept_channels"):
            assert f"acosp/layer/{layer}/{statistic}" in logs
        fractions = [logs[f"acosp/layer/{layer}/{name}"] for name in ("chosen", "pruned", "undecided")]
        assert sum(fractions) == pytest.approx(1.0) and all(0 <= value <= 1 for value in fractions)
    for statistic in ("chosen", "pruned", "undecided", "x0", "temperature"):
        for summary in ("mean", "var", "min", "max"):
            assert f"acosp/{statistic}/{summary}" in logs
    assert logs["acosp/temperature/mean"] == pytest.approx(pruner.temperature(9))
    assert logs["acosp/kept_channels"] == 8 + 16 + 12
    assert logs["acosp/total_channels"] == 16 + 32 + 24
    assert logs["acosp/kept_fraction"] == pytest.approx(36 / 72)


def test_collect_logs_after_hardening_reports_decided_channels():
    model = SmallCNN()
    pruner = SoftTopKPruner(0, 10, 0.75, min_remaining_elements=0)
    pruner.configure_model(model)
    pruner.on_pruning_end(model)
    logs = pruner.collect_logs(None, model, 0)
    assert logs["acosp/chosen/mean"] + logs["acosp/pruned/mean"] == pytest.approx(1.0)
    assert logs["acosp/undecided/max"] == 0
    assert "acosp/temperature/mean" not in logs
    assert logs["acosp/kept_channels"] == 4 + 8 + 6


def test_collect_logs_with_tensorboardx(tmp_path):
    import tensorboardX

    model = SmallCNN()
    pruner = SoftTopKPruner(0, 10, 0.5)
    pruner.configure_model(model)
    writer = tensorboardX.SummaryWriter(str(tmp_path))
    logs = pruner.collect_logs(writer, model, 3)
    writer.close()
    scalars = read_scalars(tmp_path)
    assert set(scalars) == set(logs)
    assert scalars["acosp/kept_fraction"] == [(3, pytest.approx(logs["acosp/kept_fraction"]))]


def read_scalars(folder):
    """{tag: [(step, value)]} from the tensorboard event files in ``folder`` (TFRecord framing)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    scalars = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_seed_readme_snippet_in_a_training_loop():
    torch.manual_seed(0)
    model = SmallCNN()
    batches = make_batches()

    # --- the three steps of the original README, verbatim but for the epochs ---
    import acosp.inject
    from acosp.pruner import SoftTopKPruner

    # Create pruner object
    pruner = SoftTopKPruner(
        starting_epoch=0,
        ending_epoch=4,  # Pruning duration
        final_sparsity=0.5,  # Final sparsity
    )
    # Add sigmoid soft k masks to model
    pruner.configure_model(model)
    # ---

    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    losses = []
    for epoch in range(6):
        if epoch == pruner.ending_epoch:
            # Convert to binary channel mask
            acosp.inject.soft_to_hard_k(model)
        model.train()
        for images, labels in batches:
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        # Update the temperature in all masking layers
        pruner.update_mask_layers(model, epoch)

    assert losses[-1] < losses[0]
    masks = dict(named_mask_layers(model))
    assert set(masks) == {"features.0", "features.3", "up"}
    # min_remaining_elements=8 by default: 16 -> 8, 32 -> 16, 24 -> 12
    expected = {"features.0": 8, "features.3": 16, "up": 12}
    for name, mask in masks.items():
        assert isinstance(mask, ChannelMask)
        assert int(mask.mask.sum()) == expected[name]
        assert set(mask.mask.unique().tolist()) == {0.0, 1.0}


def _train_epochs(model, pruner, optimizer, epochs, batches):
    for epoch in epochs:
        if epoch == pruner.ending_epoch:
            acosp.inject.soft_to_hard_k(model)
        model.train()
        for images, labels in batches:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
        pruner.update_mask_layers(model, epoch)


def _fresh(seed):
    torch.manual_seed(seed)
    model = SmallCNN()
    pruner = SoftTopKPruner(0, 4, 0.75, min_remaining_elements=2)
    pruner.configure_model(model)
    return model, pruner, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def test_training_resumed_mid_pruning_continues_identically():
    batches = make_batches()
    model, pruner, optimizer = _fresh(0)
    _train_epochs(model, pruner, optimizer, range(0, 2), batches)
    buffer = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "pruner": pruner.state_dict()}, buffer
    )
    _train_epochs(model, pruner, optimizer, range(2, 6), batches)

    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed, resumed_pruner, resumed_optimizer = _fresh(1)
    resumed_pruner.load_state_dict(checkpoint["pruner"])
    resumed.load_state_dict(checkpoint["model"])
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    temperatures = [float(mask.temperature) for mask in acosp.inject.soft_masks(resumed)]
    assert temperatures == [pytest.approx(pruner.temperature(1))] * 3
    _train_epochs(resumed, resumed_pruner, resumed_optimizer, range(2, 6), batches)

    final, resumed_final = model.state_dict(), resumed.state_dict()
    assert final.keys() == resumed_final.keys()
    for key in final:
        assert torch.equal(final[key], resumed_final[key]), key
    assert all(isinstance(mask, ChannelMask) for _, mask in named_mask_layers(resumed))


def test_fixed_logits_prune_without_learning_them():
    model = SmallCNN()
    pruner = SoftTopKPruner(0, 2, 0.5, learnable_weights=False)
    pruner.configure_model(model)
    logits = [mask.weight.clone() for mask in acosp.inject.soft_masks(model)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    assert all(torch.equal(a, m.weight) for a, m in zip(logits, acosp.inject.soft_masks(model)))
    assert all(isinstance(m, SigmoidSoftTopK) for m in acosp.inject.soft_masks(model))


def test_pruner_restored_after_pruning_end_prepares_hard_masks():
    model = SmallCNN()
    pruner = SoftTopKPruner(0, 2, 0.75, min_remaining_elements=0)
    pruner.configure_model(model)
    pruner.on_pruning_end(model)
    checkpoint = {"model": model.state_dict(), "pruner": pruner.state_dict()}

    restored_pruner = SoftTopKPruner()
    restored_pruner.load_state_dict(checkpoint["pruner"])
    restored = SmallCNN()
    restored_pruner.configure_model(restored)
    restored.load_state_dict(checkpoint["model"])
    assert all(isinstance(mask, ChannelMask) for _, mask in named_mask_layers(restored))
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(restored.eval()(x), model.eval()(x))
    restored_pruner.update_mask_layers(restored, 5)  # nothing left to anneal


def test_pruner_state_without_finished_flag_loads():
    state = SoftTopKPruner(0, 5, 0.5).state_dict()
    del state["finished"]
    pruner = SoftTopKPruner()
    pruner.load_state_dict(state)
    assert pruner.ending_epoch == 5 and not pruner.finished


def publication_loop(pruner, model, epochs):
    """The publication's calls: harden at ending_epoch, anneal after every epoch."""
    temperatures = []
    for epoch in range(epochs):
        if pruner.active and epoch >= pruner.ending_epoch:
            model = pruner.on_pruning_end(model)
        temperatures.append([float(m.temperature) for m in acosp.inject.soft_masks(model)])
        pruner.update_mask_layers(model, epoch)
    return model, temperatures


def test_step_before_each_epoch_follows_the_publications_calls():
    torch.manual_seed(0)
    reference = SmallCNN()
    model = SmallCNN()
    model.load_state_dict(reference.state_dict())
    old, new = SoftTopKPruner(1, 4, 0.5), SoftTopKPruner(1, 4, 0.5)
    torch.manual_seed(1)
    old.configure_model(reference)
    torch.manual_seed(1)
    new.configure_model(model)
    reference, expected = publication_loop(old, reference, 6)
    seen = []
    for epoch in range(6):
        model = new.step(model, epoch)
        seen.append([float(m.temperature) for m in acosp.inject.soft_masks(model)])
    assert seen == expected
    assert new.finished and not new.active and new.state_dict() == old.state_dict()
    assert [m.mask.tolist() for _, m in named_mask_layers(model)] == [
        m.mask.tolist() for _, m in named_mask_layers(reference)
    ]


def test_step_hardens_once_and_a_restored_pruner_prepares_hard_masks():
    model = SmallCNN()
    pruner = SoftTopKPruner(0, 2, 0.5)
    pruner.configure_model(model)
    model = pruner.step(model, 1)
    assert all(isinstance(m, SigmoidSoftTopK) for _, m in named_mask_layers(model))
    assert float(next(iter(acosp.inject.soft_masks(model))).temperature) == pytest.approx(pruner.temperature(0))
    model = pruner.step(model, 2)
    hard = [m for _, m in named_mask_layers(model)]
    assert all(isinstance(m, ChannelMask) for m in hard) and pruner.finished
    assert pruner.step(model, 3) is model and [m for _, m in named_mask_layers(model)] == hard  # once
    restored = SoftTopKPruner()
    restored.load_state_dict(pruner.state_dict())
    fresh = restored.configure_model(SmallCNN())
    assert all(isinstance(m, ChannelMask) for _, m in named_mask_layers(fresh))


def test_step_after_the_last_epoch_hardens_where_training_ends_early():
    model = SmallCNN()
    pruner = SoftTopKPruner(0, 10, 0.5)
    pruner.configure_model(model)
    model = pruner.step(model, 3, last=True)
    assert pruner.finished and all(isinstance(m, ChannelMask) for _, m in named_mask_layers(model))


def test_a_dense_run_steps_through_nothing():
    model = SmallCNN()
    pruner = SoftTopKPruner(0, 1, 0.5, active=False)
    assert pruner.configure_model(model) is model
    assert pruner.step(model, 5, last=True) is model and not pruner.finished
    assert not list(named_mask_layers(model))


def test_the_state_is_the_settings_declared_once():
    pruner = SoftTopKPruner(2, 9, 0.75, round_to=8, coupled_masks=True, selection="l1")
    state = pruner.state_dict()
    assert list(state) == [
        "starting_epoch",
        "ending_epoch",
        "final_sparsity",
        "active",
        "min_remaining_elements",
        "initial_temp",
        "final_temp",
        "learnable_weights",
        "finished",
        "round_to",
        "coupled_masks",
        "selection",
        "linear_masks",
    ]
    assert repr(pruner).startswith("SoftTopKPruner(starting_epoch=2, ending_epoch=9, final_sparsity=0.75")
    assert "_groups" not in repr(pruner) and "_linears" not in repr(pruner)
    copy = SoftTopKPruner()
    copy.load_state_dict(state)
    assert copy == pruner
    with pytest.raises(ValueError, match=r"unknown keys \['sparsity'\]"):
        copy.load_state_dict({**state, "sparsity": 0.5})
    with pytest.raises(ValueError, match="round_to must be a positive integer, got 0"):
        SoftTopKPruner(round_to=0)


def test_running_the_network_at_configure_time_leaves_the_masks_logits_as_they_were():
    """Finding layer scales, convs with a forward of their own, coupled groups or maskable linears must not
    draw from the random stream that initialises the masks: the same seed gives the same logits with or
    without an example input."""

    class StandardisedConv(nn.Conv2d):
        def forward(self, x):
            weight = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) / (self.weight.std() + 1e-5)
            return nn.functional.conv2d(x, weight, self.bias, self.stride, self.padding)

    class LayerScale(nn.Module):
        def __init__(self):
            super().__init__()
            self.gamma = nn.Parameter(torch.full((1, 8, 1, 1), 0.5))

        def forward(self, x):
            return x * self.gamma

    def logits(example_input):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3), LayerScale(), StandardisedConv(8, 8, 3), nn.Conv2d(8, 8, 3))
        model = SoftTopKPruner().configure_model(model, example_input)
        return torch.cat([mask.weight.detach() for mask in soft_masks(model)])

    assert torch.equal(logits(None), logits(torch.randn(1, 3, 8, 8)))
