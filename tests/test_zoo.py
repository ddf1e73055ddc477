"""acosp on torchvision's and timm's networks: trained with masks, hardened, compressed exactly.

Runs where torchvision (and timm) import: ``.ci/run`` installs them in an environment of their own
(``pip install torch==2.14.1 torchvision==0.29.1 timm``), since PyPI's torchvision does not import
beside the CPU torch wheel of the main suite. ``python benchmarks/zoo.py`` runs the whole zoo.
"""

import shutil

import pytest
import torch

import acosp

torchvision = pytest.importorskip("torchvision", reason="the zoo needs torchvision (see tests/test_zoo.py)")

from benchmarks.zoo import timm_models, torchvision_models, try_network  # noqa: E402

TORCHVISION = dict(torchvision_models())

# What compresses exactly today, with independent masks at 0.5 and coupled masks at 0.75.
EXACT = [
    "resnet18",
    "mobilenet_v3_small",
    "regnet_x_400mf",
    "efficientnet_b0",
    "densenet121",
    "lraspp_mobilenet_v3_large",
    "shufflenet_v2_x0_5",
]
# Where compression keeps a tensor whole, the report names the operation and its layer.
KEPT_WHOLE = {
    "convnext_tiny": "'layer_norm' (called in features.0.1) normalises with statistics or parameters of every channel"
}


@pytest.mark.parametrize("coupled, sparsity", [(False, 0.5), (True, 0.75)])
@pytest.mark.parametrize("name", EXACT)
def test_torchvision_networks_train_harden_and_compress_exactly(name, coupled, sparsity):
    row = try_network(TORCHVISION[name], sparsity, coupled, 96)
    assert row["exact"], row["error"]
    assert row["macs"] > 1.3 and row["parameters"] > 1.3


@pytest.mark.parametrize("name", ["resnext50_32x4d", "regnet_x_400mf", "regnet_y_400mf"])
def test_grouped_networks_shrink_within_a_quarter_of_resnet50(name):
    """Masks even over the groups of grouped convs: whole channels leave every group."""
    reference = try_network(TORCHVISION["resnet50"], 0.75, True, 96)
    row = try_network(TORCHVISION[name], 0.75, True, 96)
    assert row["exact"], row["error"]
    assert row["macs"] >= 0.75 * reference["macs"], (row["macs"], reference["macs"])


@pytest.mark.parametrize("name, where", KEPT_WHOLE.items())
def test_what_compression_keeps_whole_is_named_with_its_layer(name, where):
    """ConvNeXt: a LayerNorm over channels moved last keeps its stream whole; exact all the same."""
    row = try_network(TORCHVISION[name], 0.5, False, 96)
    assert row["exact"], row["error"]
    assert where in row["full_width"]


@pytest.mark.parametrize("name, least", [("convnext_tiny", 3.5), ("alexnet", 10.0)])
def test_the_hidden_features_of_mlps_narrow(name, least):
    """The linear layers of ConvNeXt's blocks (channels moved last) and of AlexNet's classifier are masked
    over their hidden features, and compression removes what they prune."""
    model = TORCHVISION[name]()
    x = torch.randn(2, 3, 96, 96)
    hidden = {"convnext_tiny": "features.1.0.block.3", "alexnet": "classifier.1"}[name]
    assert hidden in acosp.compress.maskable_linears(model, x)
    row = try_network(TORCHVISION[name], 0.75, True, 96)
    assert row["exact"], row["error"]
    assert row["macs"] > least


def test_edgenext_compresses_once_the_conv_whose_weight_it_reads_keeps_its_width():
    """EdgeNeXt's positional encoding asks its conv for ``weight.device``: masked, that conv has no weight
    and the error says to mark it unprunable (docs/zoo.md). Marked, EdgeNeXt compresses exactly, its MLPs'
    hidden features narrower, though its tokens come back from attention through a reshape."""
    timm = pytest.importorskip("timm", reason="timm is not installed")
    x = torch.randn(2, 3, 96, 96)
    masked = acosp.SoftTopKPruner(final_sparsity=0.75).configure_model(timm.create_model("edgenext_xx_small"), x)
    with pytest.raises(AttributeError, match=r"acosp.unprunable\(conv\)"):
        masked(x)

    def make():
        model = timm.create_model("edgenext_xx_small")
        for name, module in model.named_modules():
            if name.endswith("token_projection"):
                acosp.unprunable(module)
        return model

    row = try_network(make, 0.75, True, 96)
    assert row["exact"], row["error"]
    assert row["macs"] > 2.5, row["macs"]


# timm networks built of its BatchNormAct2d (and its Linear), or of weight-standardised convs (NF-ResNet).
TIMM_EXACT = ["resnet18", "efficientnet_b0", "regnety_002", "cspresnet50", "ghostnet_100", "nf_resnet26"]
# Split attention (ResNeSt), ECA's 1-D conv across channels, ConvNeXt-V2's GRN: exact, their inputs whole.
TIMM_EXACT += ["resnest14d", "ecaresnet26t", "convnextv2_atto"]
# Convs called as functions in a layer's own forward (TensorFlow's 'same' padding, BlurPool), SK's stack.
TIMM_EXACT += ["tf_efficientnet_lite0", "resnetblur18", "skresnet18"]


@pytest.mark.parametrize("name", TIMM_EXACT)
def test_timm_networks_compress_exactly(name):
    pytest.importorskip("timm", reason="timm is not installed")
    ((_, make),) = timm_models([name])
    row = try_network(make, 0.5, False, 96)
    assert row["exact"], row["error"]
    assert row["macs"] > 1.3


def test_speed_says_where_the_time_goes():
    row = try_network(TORCHVISION["mobilenet_v3_small"], 0.75, True, 96, speed_size=64)
    assert row["exact"] and row["dense_seconds"] > 0 and row["compressed_seconds"] > 0
    assert row["speedup"] == pytest.approx(row["dense_seconds"] / row["compressed_seconds"])
    for form in ("dense", "compressed"):
        split = row["conv_time"][form]
        assert 0 < split["convs"] < 1 and split["rest"] >= 0 and split["gmacs_per_second"] > 0
    # more than the image read and a map of its size written; fewer bytes compressed, but not MACs-fewer
    image_bytes = 3 * 64 * 64 * 4
    assert row["bytes"]["dense"] > 2 * image_bytes
    assert 2 < row["bytes"]["dense"] / row["bytes"]["compressed"] < row["macs"]


# CSPNet splits by sizes written in the code: the tensor stays whole, its readers leave its constants out
# (9.1x when they read it whole). GhostNet's ``out[:, :self.out_chs]`` takes every channel of its
# concatenation: a step, not a cut (3.3x when it kept its tensor whole); its shortcut convs gather the mask
# the concatenation's two convs share (5.9x with masks of their own).
@pytest.mark.parametrize("name, least", [("cspresnet50", 11), ("ghostnet_100", 9)])
def test_fixed_splits_and_slices_still_let_the_network_narrow(name, least):
    pytest.importorskip("timm", reason="timm is not installed")
    ((_, make),) = timm_models([name])
    row = try_network(make, 0.75, True, 96)
    assert row["exact"], row["error"]
    assert row["macs"] > least, row["macs"]


# TensorFlow's 'same' padding (timm's Conv2dSame) and weight-standardised convs (NFNets): convs in a forward of their
# own narrow, and take part in coupled masks, like plain ones (7.1x and 5.4x when they kept their tensors whole).
@pytest.mark.parametrize("name, twin", [("tf_efficientnet_b0", "efficientnet_b0"), ("dm_nfnet_f0", "resnet50")])
def test_convs_with_a_forward_of_their_own_shrink_like_plain_ones(name, twin):
    pytest.importorskip("timm", reason="timm is not installed")
    row, reference = (try_network(make, 0.75, True, 96) for _, make in timm_models([name, twin]))
    assert row["exact"], row["error"]
    assert row["macs"] >= 0.95 * reference["macs"], (row["macs"], reference["macs"])
    assert not row["full_width"], row["full_width"]


@pytest.mark.parametrize(
    "name, classifiers",
    [
        ("deeplabv3_mobilenet_v3_large", ["classifier.4"]),
        ("lraspp_mobilenet_v3_large", ["classifier.low_classifier", "classifier.high_classifier"]),
        ("squeezenet1_0", ["classifier.1"]),
        ("resnet18", []),  # its classes come from a linear layer, whose outputs are never masked
    ],
)
def test_the_convs_that_compute_the_classes_keep_them(name, classifiers):
    torch.manual_seed(0)
    model, x = TORCHVISION[name]().eval(), torch.randn(2, 3, 96, 96)
    assert acosp.unprunable_outputs(model, x) == classifiers
    model = acosp.SoftTopKPruner(final_sparsity=0.75, coupled_masks=True).configure_model(model, x)
    compressed = acosp.compress.compress(acosp.soft_to_hard_k(model).eval(), x)
    classes = 1000 if name == "squeezenet1_0" else 21
    for classifier in classifiers:
        conv = compressed.get_submodule(classifier)
        assert conv.out_channels == classes and getattr(conv, "out_width", None) is None, classifier


def test_reparameterising_repvgg_after_compression_is_not_exact_and_before_it_is():
    """What docs/zoo.md tells RepVGG's users: ship the compressed training form, do not fuse it afterwards."""
    timm = pytest.importorskip("timm", reason="timm is not installed")
    from timm.utils.model import reparameterize_model

    torch.manual_seed(0)
    model, x = timm.create_model("repvgg_a0").eval(), torch.randn(2, 3, 96, 96)
    pruner = acosp.SoftTopKPruner(final_sparsity=0.75, min_remaining_elements=1, coupled_masks=True)
    model = acosp.soft_to_hard_k(pruner.configure_model(model, x)).eval()
    with torch.no_grad():
        expected = model(x)
        compressed = acosp.compress.compress(model, x)
        assert acosp.compress.relative_error(expected, compressed(x)) < 1e-5
        fused_after = reparameterize_model(compressed)
        assert acosp.compress.relative_error(expected, fused_after(x)) > 1e-3  # the border corrections are gone
        fused_before = reparameterize_model(acosp.hard_to_conv(model))
        assert acosp.compress.relative_error(expected, fused_before(x)) < 1e-5


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on the CPU needs a C++ compiler")
def test_speed_times_both_networks_compiled_too():
    row = try_network(TORCHVISION["mobilenet_v3_small"], 0.75, True, 96, speed_size=64, compiled=True)
    assert row["exact"], row["error"]
    timed = row["compiled_speed"]
    assert timed["dense_seconds"] > 0 and timed["compressed_seconds"] > 0 and timed["compile_seconds"] > 0
    assert timed["speedup"] == pytest.approx(timed["dense_seconds"] / timed["compressed_seconds"])


def test_rounded_widths_keep_more_channels_and_stay_exact():
    plain, rounded = (try_network(TORCHVISION["mobilenet_v3_small"], 0.75, True, 96, round_to=r) for r in (1, 16))
    assert plain["exact"] and rounded["exact"], rounded["error"]
    assert 1.3 < rounded["macs"] < plain["macs"]
