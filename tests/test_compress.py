"""acosp.compress: the smaller network computes what the masked one computes, and rebuilds from plain data."""

import io
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import SmallCNN, make_batches
from torch import nn

from acosp.compress import (
    UnsupportedOperation,
    apply_compression_spec,
    compress,
    compression_report,
    compression_spec,
)
from acosp.compression.layers import CompressedConv2d, RemovedLayer
from acosp.inject import UnprunableConv2d, soft_to_hard_k
from acosp.pruner import SoftTopKPruner

SPARSITIES = (0.5, 0.75, 0.875, 0.9375)


class Bottleneck(nn.Module):
    """A ResNet bottleneck: 1x1, dilated 3x3, 1x1, added to the input or a strided 1x1 downsample."""

    def __init__(self, inplanes, planes, stride=1, dilation=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class PyramidNet(nn.Module):
    """PSPNet in small: stem with max-pool, bottlenecks, pyramid pooling (concatenation), auxiliary head."""

    def __init__(self, classes=3):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        )
        self.layer1 = nn.Sequential(Bottleneck(16, 8), Bottleneck(32, 8))
        self.layer2 = nn.Sequential(Bottleneck(32, 16, dilation=2), Bottleneck(64, 16, dilation=2))
        self.ppm = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(bins), nn.Conv2d(64, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
            for bins in (1, 2, 3)
        )
        self.cls = nn.Sequential(
            nn.Conv2d(64 + 48, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.1),
            UnprunableConv2d(32, classes, 1),
        )
        self.aux = nn.Sequential(nn.Conv2d(32, 16, 3, padding=1), nn.BatchNorm2d(16), UnprunableConv2d(16, classes, 1))

    def forward(self, x):
        height, width = x.shape[2:]
        if (height - 1) % 8 != 0:
            raise ValueError("input size must be 8k + 1")
        x = self.layer1(self.stem(x))
        features = self.layer2(x)
        size = features.shape[2:]
        pooled = [F.interpolate(branch(features), size, mode="bilinear", align_corners=True) for branch in self.ppm]
        out = F.interpolate(self.cls(torch.cat([features, *pooled], 1)), (height, width), mode="bilinear")
        if self.training:
            return out, self.aux(x)
        return out


def conv_bn_relu(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UnpoolNet(nn.Module):
    """SegNet in small: max-pool indices reused by max-unpooling, then a transposed conv and a depthwise conv."""

    def __init__(self, classes=3):
        super().__init__()
        self.enc1 = nn.Sequential(conv_bn_relu(3, 16), conv_bn_relu(16, 16))
        self.enc2 = conv_bn_relu(16, 32)
        self.dec2 = nn.Sequential(conv_bn_relu(32, 32), conv_bn_relu(32, 16))
        self.dec1 = conv_bn_relu(16, 16)
        self.up = nn.ConvTranspose2d(16, 16, 2, 2)
        self.up_bn = nn.BatchNorm2d(16)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.depthwise_bn = nn.BatchNorm2d(16)
        self.cls = UnprunableConv2d(16, classes, 3, padding=1)

    def forward(self, x):
        size1 = x.shape[2:]
        x, indices1 = F.max_pool2d(self.enc1(x), 2, 2, return_indices=True)
        x = self.enc2(x)
        size2 = x.shape[2:]
        x, indices2 = F.max_pool2d(x, 2, 2, return_indices=True)
        x = self.dec2(F.max_unpool2d(x, indices2, 2, 2, output_size=size2))
        x = self.dec1(F.max_unpool2d(x, indices1, 2, 2, output_size=size1))
        x = F.relu(self.up_bn(self.up(F.avg_pool2d(x, 2))))
        x = F.relu(self.depthwise_bn(self.depthwise(x)))
        return self.cls(x)


class BasicNet(nn.Module):
    """CIFAR ResNet in small: 3x3 convs on a residual stream, global pooling, flatten, linear head."""

    def __init__(self, classes=10):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv3, self.bn3 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv4, self.bn4 = nn.Conv2d(16, 32, 3, 2, padding=1, bias=False), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32 * 2 * 2, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(x + self.bn3(self.conv3(F.relu(self.bn2(self.conv2(x))))))
        x = F.adaptive_avg_pool2d(F.relu(self.bn4(self.conv4(x))), 2)
        return self.fc(x.view(x.size(0), -1))


NETWORKS = {"pyramid": (PyramidNet, 17), "unpool": (UnpoolNet, 12), "basic": (BasicNet, 8), "small": (SmallCNN, 8)}


def random_batch_norm(model):
    """BatchNorm statistics as after training, so that pruned channels carry non-zero constants."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.5)
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model


def hard_masked(name, sparsity, seed=0, round_to=1):
    network, size = NETWORKS[name]
    torch.manual_seed(seed)
    model = random_batch_norm(network())
    SoftTopKPruner(final_sparsity=sparsity, min_remaining_elements=2).configure_model(model)
    return soft_to_hard_k(model, round_to).eval(), size


def relative_error(expected, actual):
    return float((expected - actual).abs().max() / expected.abs().max())


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_compressed_network_computes_the_masked_function(name, sparsity):
    model, size = hard_masked(name, sparsity)
    compressed = compress(model, torch.randn(2, 3, size, size))
    fresh = torch.randn(3, 3, size, size)
    with torch.no_grad():
        assert relative_error(model(fresh), compressed(fresh)) < 1e-5
    assert sum(p.numel() for p in compressed.parameters()) < 0.8 * sum(p.numel() for p in model.parameters())


def test_the_masked_model_is_left_unchanged():
    model, size = hard_masked("pyramid", 0.75)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        before = model(x)
    keys = list(model.state_dict())
    compress(model, x)
    assert list(model.state_dict()) == keys and not model.training
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_a_chain_keeps_exactly_the_kept_channels():
    model, size = hard_masked("small", 0.5)
    compressed = compress(model, torch.randn(2, 3, size, size), fold_batchnorm=False)
    assert [compressed.features[0].out_channels, compressed.features[3].out_channels] == [8, 16]
    assert compressed.features[3].in_channels == 8 and compressed.features[4].num_features == 16
    assert compressed.up.in_channels == 16 and compressed.up.out_channels == 12
    assert compressed.classifier.in_channels == 12 and compressed.classifier.out_channels == 3
    assert compression_report(compressed) == "every layer keeps only its own channels"


def test_batch_norms_fold_into_the_convs_before_them():
    model, size = hard_masked("pyramid", 0.75)
    x = torch.randn(2, 3, size, size)
    folded, kept = compress(model, x), compress(model, x, fold_batchnorm=False)
    assert isinstance(folded.layer1[0].bn3, nn.Identity) and isinstance(folded.cls[1], nn.Identity)
    assert isinstance(kept.layer1[0].bn3, nn.BatchNorm2d)
    assert folded.layer1[0].conv3.out_fill is not None  # BatchNorm's value of the channels it does not compute
    assert not any(isinstance(module, nn.BatchNorm2d) for module in folded.modules())
    fresh = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert relative_error(model(fresh), folded(fresh)) < 1e-5


def test_residual_stream_keeps_the_union_of_its_branches_and_branches_write_into_it():
    model, size = hard_masked("pyramid", 0.75)
    compressed = compress(model, torch.randn(2, 3, size, size))
    block0, block1 = model.layer1
    kept = [block0.conv3.mask_layer.mask, block0.downsample[0].mask_layer.mask, block1.conv3.mask_layer.mask]
    union = int((torch.stack(kept).amax(0) > 0.5).sum())
    assert union < 32  # channels pruned by every branch are gone
    conv3 = compressed.layer1[0].conv3
    assert isinstance(conv3, CompressedConv2d) and conv3.out_channels == 8 and conv3.out_width == union
    assert compress(model, torch.randn(2, 3, size, size), fold_batchnorm=False).layer1[0].bn3.num_features == union
    assert compressed.layer1[1].conv1.in_channels == union
    report = compression_report(compressed)
    assert f"layer1.0.conv3: computes 8 of 32 channels, written into {union}" in report


def test_concatenation_takes_the_kept_channels_of_every_part():
    model, size = hard_masked("pyramid", 0.75)
    compressed = compress(model, torch.randn(2, 3, size, size))
    stream = compressed.layer2[1].conv3.out_width
    branches = sum(branch[1].out_channels for branch in compressed.ppm)
    assert branches == 3 * 4
    assert compressed.cls[0].in_channels == stream + branches


def test_linear_head_reads_the_kept_channels_of_the_flattened_features():
    model, size = hard_masked("basic", 0.75)
    compressed = compress(model, torch.randn(2, 3, size, size))
    assert compressed.conv4.out_channels == 8
    assert compressed.fc.in_features == 8 * 2 * 2 and compressed.fc.out_features == 10


@pytest.mark.parametrize(
    "stride, padding, dilation, size",
    [(1, 1, 1, 1), (1, 1, 1, 2), (2, 1, 1, 7), (1, 2, 2, 6), (2, 3, 2, 9), (1, "same", 1, 5), (1, 0, 1, 5)],
)
def test_constants_at_zero_padded_borders_are_exact(stride, padding, dilation, size):
    """A pruned channel is a constant, except where a 3x3 conv reads zero padding instead of it."""
    torch.manual_seed(0)
    model = random_batch_norm(
        nn.Sequential(
            nn.Conv2d(3, 8, 1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 6, 3, stride=stride, padding=padding, dilation=dilation),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            UnprunableConv2d(6, 2, 3, padding=1),
        )
    )
    SoftTopKPruner(final_sparsity=0.75, min_remaining_elements=1).configure_model(model)
    model = soft_to_hard_k(model).eval()
    compressed = compress(model, torch.randn(2, 3, size, size))
    assert compressed[3].in_channels == 2
    for test_size in (size, size + 3):
        x = torch.randn(2, 3, test_size, test_size)
        with torch.no_grad():
            assert relative_error(model(x), compressed(x)) < 1e-5


def test_trained_masks_compress_exactly():
    torch.manual_seed(0)
    model = SmallCNN()
    pruner = SoftTopKPruner(0, 2, 0.75, min_remaining_elements=2)
    pruner.configure_model(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for epoch in range(4):
        if epoch == pruner.ending_epoch:
            model = pruner.on_pruning_end(model)
        for images, labels in make_batches(count=2, classes=3, size=8):
            optimizer.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
        pruner.update_mask_layers(model, epoch)
    model.eval()
    compressed = compress(model, torch.randn(2, 3, 8, 8))
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert relative_error(model(x), compressed(x)) < 1e-5


def test_round_to_keeps_multiples_and_stays_exact():
    model, size = hard_masked("pyramid", 0.9375, round_to=4)
    compressed = compress(model, torch.randn(2, 3, size, size))
    assert compressed.stem[0].out_channels == 4 and compressed.layer2[0].conv1.out_channels == 4
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        assert relative_error(model(x), compressed(x)) < 1e-5


def test_spec_round_trip_through_a_weights_only_checkpoint():
    model, size = hard_masked("pyramid", 0.75)
    compressed = compress(model, torch.randn(2, 3, size, size))
    spec = compression_spec(compressed)
    assert json.loads(json.dumps(spec)) == spec  # plain data
    buffer = io.BytesIO()
    torch.save({"model": compressed.state_dict(), "compression": spec}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    rebuilt = apply_compression_spec(PyramidNet(), checkpoint["compression"])
    rebuilt.load_state_dict(checkpoint["model"])  # strict
    rebuilt.eval()
    x = torch.randn(2, 3, 25, 25)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), compressed(x))
    assert compression_spec(rebuilt) == spec


class VolumeGain(nn.Module):
    """A layer holding a 5-D parameter (a Conv3d's filters, say), which channels-last cannot hold."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.full((1, 1, 1, 1, 1), 2.0))

    def forward(self, x):
        return x * self.gain[0]


def volume_network():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), VolumeGain(), nn.Conv2d(8, 4, 3, padding=1))


def test_a_network_with_five_dimensional_parameters_is_compressed_channels_last():
    torch.manual_seed(0)
    model = volume_network()
    SoftTopKPruner(final_sparsity=0.5, min_remaining_elements=1).configure_model(model)
    model = soft_to_hard_k(model).eval()
    x = torch.randn(2, 3, 8, 8)
    compressed = compress(model, x, channels_last=True)
    assert compressed[0].weight.is_contiguous(memory_format=torch.channels_last) and compressed[2].gain.dim() == 5
    assert relative_error(model(x), compressed(x)) < 1e-5
    rebuilt = apply_compression_spec(volume_network(), compression_spec(compressed))
    rebuilt.load_state_dict(compressed.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(x), compressed(x))


def test_layers_the_eval_pass_does_not_use_are_removed():
    model, size = hard_masked("pyramid", 0.5)
    compressed = compress(model, torch.randn(2, 3, size, size))
    assert isinstance(compressed.aux, RemovedLayer)
    assert not any(key.startswith("aux.") for key in compressed.state_dict())
    with pytest.raises(RuntimeError, match="layer 'aux' was removed"):
        compressed.train()(torch.randn(2, 3, size, size))


def test_unknown_operation_on_pruned_channels_is_named():
    class Cumulative(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.head = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), UnprunableConv2d(8, 2, 1)

        def forward(self, x):
            return self.head(torch.cumsum(self.bn(self.conv(x)), dim=1))

    model = Cumulative()
    SoftTopKPruner(final_sparsity=0.5, min_remaining_elements=1).configure_model(model)
    model = soft_to_hard_k(model).eval()
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(UnsupportedOperation, match="'cumsum'.*strict=False"):
        compress(model, x)
    compressed = compress(model, x, strict=False)
    assert compressed.conv.out_width == 8 and "full width: 'cumsum'" in compression_report(compressed)
    with torch.no_grad():
        assert relative_error(model(x), compressed(x)) < 1e-5


def test_soft_masks_must_be_hardened_first():
    model = SmallCNN()
    SoftTopKPruner(final_sparsity=0.5).configure_model(model)
    with pytest.raises(ValueError, match="soft_to_hard_k"):
        compress(model.eval(), torch.randn(1, 3, 8, 8))


def test_grouped_transposed_conv_keeps_full_width_and_stays_exact():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.ConvTranspose2d(8, 8, 2, stride=2, groups=2), nn.ReLU()
    )
    random_batch_norm(model)
    SoftTopKPruner(final_sparsity=0.5, min_remaining_elements=1).configure_model(model)
    model = soft_to_hard_k(model).eval()
    compressed = compress(model, torch.randn(2, 3, 5, 5))
    assert "grouped transposed conv (groups=2)" in compression_report(compressed)
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        assert relative_error(model(x), compressed(x)) < 1e-5


def test_check_reports_a_mismatch():
    model, size = hard_masked("small", 0.5)
    with pytest.raises(RuntimeError, match="differs from the masked one"):
        compress(model, torch.randn(2, 3, size, size), tolerance=-1.0)


def test_spec_that_does_not_fit_the_network_is_refused():
    model, size = hard_masked("small", 0.5)
    spec = compression_spec(compress(model, torch.randn(2, 3, size, size)))
    with pytest.raises(ValueError, match="does not have"):
        apply_compression_spec(nn.Sequential(nn.Conv2d(3, 3, 1)), spec)
    with pytest.raises(ValueError, match="not an acosp compression spec"):
        apply_compression_spec(SmallCNN(), {"layers": {}})


def test_unpooled_constants_cost_at_most_one_channel():
    """Pruned channels unpooled by indices of pruned channels are multiples of one another: one is kept."""
    model, size = hard_masked("unpool", 0.75)
    compressed = compress(model, torch.randn(2, 3, size, size))
    encoder = model.enc1[1][0].mask_layer.mask > 0.5
    decoder = model.dec2[1][0].mask_layer.mask > 0.5
    union = int((encoder | decoder).sum())
    assert union < 16
    assert union <= compressed.enc1[1][0].out_width <= union + 1
    assert compressed.dec1[0].in_channels == compressed.enc1[1][0].out_width


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")  # from inside torch.onnx
def test_onnx_export_of_a_compressed_network_matches(tmp_path):
    model, size = hard_masked("basic", 0.75)  # narrow branches written into the stream, border constants
    x = torch.randn(1, 3, size, size)
    compressed = compress(model, x)
    with torch.no_grad():
        assert relative_error(compressed(x), onnx_output(compressed, x, tmp_path / "basic.onnx")) < 1e-4


def onnx_output(network: nn.Module, x: torch.Tensor, path) -> torch.Tensor:
    """``network`` exported to ONNX at ``path`` and run on ``x`` by onnxruntime (skips without them)."""
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    torch.onnx.export(network, (x,), str(path), dynamo=True, external_data=False, verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def test_float32_differences_at_discontinuities_are_checked_in_float64(monkeypatch):
    """Rounding can flip a max-pooling near-tie whose indices unpool; float64 tells that from a real error."""
    import acosp.compression.compressor

    run = acosp.compression.compressor._run

    def rounding_moved_a_value(model, args):
        output = run(model, args)
        return output + 1.0 if output.dtype == torch.float32 else output  # the compressed run in float32

    monkeypatch.setattr(acosp.compression.compressor, "_run", rounding_moved_a_value)
    model, size = hard_masked("unpool", 0.75)
    with pytest.warns(UserWarning, match="in float64 by only"):
        compressed = compress(model, torch.randn(2, 3, size, size))
    spec = compression_spec(compressed)
    assert spec["relative_error"] > 1e-4 > spec["relative_error_float64"]


def test_the_check_runs_in_full_float32_and_restores_the_settings():
    """cuDNN convs default to TF32 on recent GPUs; compress traces and checks without it."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    if hasattr(conv, "fp32_precision"):  # torch's per-operator settings

        def settings():
            return conv.fp32_precision, matmul.fp32_precision

        full = ("ieee", "ieee")
    else:

        def settings():
            return torch.backends.cudnn.allow_tf32, matmul.allow_tf32

        full = (False, False)
    before = settings()
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(settings())
            return x

    compress(nn.Sequential(nn.Conv2d(3, 4, 3), Probe()), torch.randn(1, 3, 8, 8))
    assert len(seen) == 2 and set(seen) == {full}  # the trace and the check
    assert settings() == before


def test_a_mask_that_keeps_no_channel_is_named():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1))
    model = soft_to_hard_k(SoftTopKPruner(final_sparsity=0.5).configure_model(model)).eval()
    model[2].mask_layer.mask.zero_()
    with pytest.raises(ValueError, match="layer '2' keeps none of its 8 channels"):
        compress(model, torch.randn(2, 3, 8, 8))
