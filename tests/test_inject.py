import copy
import io
import warnings

import pytest
import torch
from conftest import SmallCNN
from torch import nn

import acosp.inject
from acosp.inject import MaskedConv, hard_to_conv, named_mask_layers, prepare_for_state_dict, soft_to_hard_k
from acosp.masks import ChannelMask, SigmoidSoftTopK
from acosp.pruner import SoftTopKPruner


def configured(sparsity=0.5, minimum=2, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = SmallCNN()
    SoftTopKPruner(0, 10, sparsity, min_remaining_elements=minimum, **kwargs).configure_model(model)
    return model


def train_steps(model, steps=2, seed=0):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        x = torch.randn(4, 3, 8, 8, generator=generator)
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
    return optimizer


def test_every_prunable_conv_is_masked_and_the_classifier_is_not():
    model = configured()
    masked = dict(named_mask_layers(model))
    assert set(masked) == {"features.0", "features.3", "up"}
    assert isinstance(model.up, MaskedConv) and isinstance(model.up.conv, nn.ConvTranspose2d)
    assert type(model.classifier) is acosp.inject.UnprunableConv2d
    assert masked["features.0"].k == 8 and masked["features.3"].k == 16 and masked["up"].k == 12


def test_any_module_flagged_unprunable_is_left_alone():
    conv = nn.Conv2d(3, 4, 1)
    conv.unprunable = True
    model = nn.Sequential(conv, nn.Conv2d(4, 4, 1))
    SoftTopKPruner(final_sparsity=0.5).configure_model(model)
    assert model[0] is conv and isinstance(model[1], MaskedConv)


def test_unprunable_marks_a_conv_and_keeps_its_standard_type():
    conv = acosp.unprunable(nn.Conv2d(4, 2, 1))
    assert type(conv) is nn.Conv2d and conv.unprunable is True
    model = nn.Sequential(nn.Conv2d(3, 4, 1), conv)
    SoftTopKPruner(final_sparsity=0.5).configure_model(model)
    assert model[1] is conv and isinstance(model[0], MaskedConv)


def test_configuring_twice_changes_nothing():
    model = configured()
    keys = list(model.state_dict())
    SoftTopKPruner(0, 10, 0.5).configure_model(model)
    assert list(model.state_dict()) == keys


def test_checkpoint_layout_of_masked_convs():
    keys = set(configured().state_dict())
    assert {"features.0.0.weight", "features.0.1.weight", "features.0.1.mask", "up.0.weight", "up.1.mask"} <= keys
    assert "classifier.weight" in keys and "features.3.0.bias" in keys


def test_gradients_reach_logits_and_conv_weights():
    model = configured()
    model(torch.randn(2, 3, 8, 8)).square().mean().backward()
    for _, mask in named_mask_layers(model):
        assert mask.weight.grad is not None and mask.weight.grad.abs().sum() > 0
    assert model.features[0].conv.weight.grad.abs().sum() > 0
    assert model.up.conv.weight.grad.abs().sum() > 0


def test_eval_is_deterministic_and_follows_the_current_logits():
    model = configured()
    train_steps(model)
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        first, second = model(x), model(x)
    assert torch.equal(first, second)
    assert not first.requires_grad
    with torch.no_grad():
        model.up.mask_layer.weight.mul_(-1)  # a different top-k
        third = model(x)
    assert not torch.allclose(first, third)
    assert torch.equal(model.up.mask_layer.mask, model.up.mask_layer.compute_mask()[0])
    with torch.inference_mode():
        assert torch.equal(model(x), third)


def test_deepcopy_after_a_training_step_in_soft_and_hard_phase():
    model = configured()
    train_steps(model)
    clone = copy.deepcopy(model)
    x = torch.randn(1, 3, 8, 8)
    model.eval(), clone.eval()
    assert torch.equal(model(x), clone(x))
    soft_to_hard_k(model)
    train_steps(model)
    clone = copy.deepcopy(model).eval()
    model.eval()
    assert torch.equal(model(x), clone(x))


def test_soft_state_dict_round_trip_restores_masks_and_temperatures():
    pruner = SoftTopKPruner(0, 10, 0.5, min_remaining_elements=2)
    model = configured()
    train_steps(model)
    pruner.update_mask_layers(model, 4)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = configured(seed=1)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    for (_, saved), (_, loaded) in zip(named_mask_layers(model), named_mask_layers(fresh)):
        assert float(loaded.temperature) == pytest.approx(pruner.temperature(4))
        assert torch.equal(saved.mask, loaded.mask)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(model.eval()(x), fresh.eval()(x))


def test_hard_state_dict_loads_into_a_model_prepared_for_it():
    model = configured()
    train_steps(model)
    soft_to_hard_k(model)
    state = model.state_dict()
    assert "up.1.weight" not in state and "up.1.mask" in state
    prepared = configured(seed=3)
    prepared = soft_to_hard_k(prepared)
    prepared.load_state_dict(state)
    fresh = prepare_for_state_dict(configured(seed=4), {"module." + key: value for key, value in state.items()})
    fresh.load_state_dict(state)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(model.eval()(x), prepared.eval()(x))
    assert torch.equal(model(x), fresh.eval()(x))


def test_checkpoints_without_temperature_load_strictly():
    model = configured()
    state = {key: value for key, value in model.state_dict().items() if not key.endswith("temperature")}
    configured(seed=2).load_state_dict(state)  # strict by default
    with pytest.raises(RuntimeError, match="mask"):
        configured(seed=2).load_state_dict({k: v for k, v in state.items() if not k.endswith(".1.mask")})


def test_soft_to_hard_before_training_keeps_exactly_k_by_logits():
    model = configured(sparsity=0.75)
    logits = {name: mask.weight.detach().clone() for name, mask in named_mask_layers(model)}
    ks = {name: mask.k for name, mask in named_mask_layers(model)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        soft_to_hard_k(model)
    for name, mask in named_mask_layers(model):
        assert isinstance(mask, ChannelMask)
        assert int(mask.mask.sum()) == ks[name]
        kept = mask.mask.nonzero().flatten()
        assert torch.equal(kept.sort().values, logits[name].topk(ks[name]).indices.sort().values)


def test_hard_masks_zero_the_pruned_channels():
    model = soft_to_hard_k(configured(sparsity=0.75))
    outputs = {}
    model.up.register_forward_hook(lambda module, args, out: outputs.update(up=out))
    model(torch.randn(2, 3, 8, 8))
    pruned = model.up.mask_layer.mask == 0
    assert torch.all(outputs["up"][:, pruned] == 0) and outputs["up"][:, ~pruned].abs().sum() > 0


def test_hard_to_conv_folds_masks_and_keeps_the_function():
    model = soft_to_hard_k(configured(sparsity=0.75))
    train_steps(model)
    x = torch.randn(2, 3, 8, 8)
    expected = model.eval()(x)
    masks = {name: mask.mask.clone() for name, mask in named_mask_layers(model)}
    hard_to_conv(model)
    assert not any(isinstance(module, (MaskedConv, ChannelMask)) for module in model.modules())
    assert type(model.features[3]) is nn.Conv2d and type(model.up) is nn.ConvTranspose2d
    assert torch.allclose(model(x), expected, atol=1e-6)
    assert torch.all(model.features[3].weight[masks["features.3"] == 0] == 0)
    assert torch.all(model.features[3].bias[masks["features.3"] == 0] == 0)
    assert torch.all(model.up.weight[:, masks["up"] == 0] == 0)
    assert all(parameter.requires_grad for parameter in model.parameters())


def test_hard_to_conv_reinitialize_refills_pruned_filters():
    model = soft_to_hard_k(configured(sparsity=0.75))
    kept = model.features[3].mask_layer.mask.bool()
    before = model.features[3].conv.weight.detach().clone()
    hard_to_conv(model, reinitialize=True)
    weight = model.features[3].weight
    assert torch.equal(weight[kept], before[kept])
    assert torch.all(weight[~kept].abs().sum(dim=(1, 2, 3)) > 0)
    assert not torch.allclose(weight[~kept], before[~kept])
    assert torch.all(model.features[3].bias[~kept] == 0)


def test_hard_to_conv_on_grouped_transposed_conv():
    model = nn.Sequential(nn.ConvTranspose2d(4, 6, 3, groups=2))
    SoftTopKPruner(final_sparsity=0.5, min_remaining_elements=0).configure_model(model)
    soft_to_hard_k(model)
    x = torch.randn(1, 4, 5, 5)
    expected = model(x)
    hard_to_conv(model)
    assert torch.allclose(model(x), expected, atol=1e-6)


def test_hard_to_conv_refuses_soft_masks():
    with pytest.raises(ValueError, match="soft_to_hard_k"):
        hard_to_conv(configured())


def test_data_parallel_wrapper_is_walked():
    model = nn.DataParallel(SmallCNN())
    SoftTopKPruner(final_sparsity=0.5).configure_model(model)
    assert len(list(named_mask_layers(model))) == 3
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    soft_to_hard_k(model)
    assert all(isinstance(mask, ChannelMask) for _, mask in named_mask_layers(model))


def test_shared_conv_gets_one_mask():
    conv = nn.Conv2d(4, 4, 1)
    model = nn.Sequential(conv, nn.ReLU(), conv)
    SoftTopKPruner(final_sparsity=0.5, min_remaining_elements=0).configure_model(model)
    assert model[0] is model[2]
    assert isinstance(model[0].mask_layer, SigmoidSoftTopK)


def _literal(masked: MaskedConv, x: torch.Tensor, *args) -> torch.Tensor:
    """conv(x) * mask as the paper writes it, through the two child modules."""
    return masked.mask_layer(masked.conv(x, *args))


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(6, 12, 3, padding=1),
        nn.Conv2d(6, 12, 3, stride=2, padding=2, dilation=2, bias=False),
        nn.Conv2d(6, 12, 3, padding=1, groups=3, padding_mode="reflect"),
        nn.ConvTranspose2d(6, 12, 3, stride=2, padding=1, output_padding=1),
        nn.ConvTranspose2d(6, 12, 2, stride=2, groups=3, bias=False),
    ],
    ids=["bias", "dilated", "grouped-reflect", "transposed", "transposed-grouped"],
)
@pytest.mark.parametrize("hard", [False, True])
def test_masked_conv_computes_conv_times_mask(conv, hard):
    torch.manual_seed(0)
    model = nn.Sequential(conv)
    SoftTopKPruner(final_sparsity=0.5, min_remaining_elements=0).configure_model(model)
    if hard:
        soft_to_hard_k(model)
    masked = model[0]
    x = torch.randn(2, 6, 9, 9, requires_grad=True)
    upstream = torch.randn_like(_literal(masked, x))
    gradients = []
    for output in (masked(x), _literal(masked, x)):
        assert output.shape == upstream.shape
        parameters = [x, *masked.parameters()]
        gradients.append((output.detach(), torch.autograd.grad((output * upstream).sum(), parameters)))
    (fused, fused_grads), (literal, literal_grads) = gradients
    assert torch.allclose(fused, literal, atol=1e-5)
    for a, b in zip(fused_grads, literal_grads):
        assert torch.allclose(a, b, atol=1e-4)


def test_hooks_and_extra_arguments_take_the_literal_route():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ConvTranspose2d(8, 4, 3, stride=2))
    SoftTopKPruner(final_sparsity=0.5, min_remaining_elements=0).configure_model(model)
    seen = []
    model[0].conv.register_forward_hook(lambda module, args, output: seen.append(output.shape))
    x = torch.randn(1, 3, 7, 7)
    y = model[0](x)
    assert seen == [(1, 8, 5, 5)]
    assert torch.allclose(y, _literal(model[0], x), atol=1e-6)
    out = model[1](y, output_size=[12, 12])  # ConvTranspose2d's output_size still works
    assert out.shape == (1, 4, 12, 12)
    assert torch.allclose(out, _literal(model[1], y, [12, 12]), atol=1e-6)


def test_hard_masked_network_traces_with_torch_fx():
    model = soft_to_hard_k(configured(sparsity=0.75)).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(traced(x), model(x))


def test_fused_masks_keep_the_autocast_dtype():
    model = configured()
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.features[0](x).dtype == torch.bfloat16
        assert soft_to_hard_k(model).up(model.features(x)).dtype == torch.bfloat16


def test_masked_conv_does_not_pose_as_its_conv():
    """Only the inner conv has a ``weight``, so code that walks modules counts each conv once."""
    model = configured()
    with_weight = [name for name, module in model.named_modules() if hasattr(module, "weight")]
    assert "features.3" not in with_weight and "features.3.0" in with_weight
    assert model.features[3].conv.out_channels == 32
    with pytest.raises(AttributeError, match=r"read '.conv.weight'.*acosp.unprunable\(conv\)"):
        model.features[3].weight  # noqa: B018 - EdgeNeXt reads its projection conv's weight.device: the error says what to do
    with pytest.raises(AttributeError, match="has no attribute 'no_such_attribute'$"):
        model.features[3].no_such_attribute  # noqa: B018
