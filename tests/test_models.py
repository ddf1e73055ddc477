"""The networks: shapes, losses, semseg's names, weight files, and ACoSP on each of them."""

import pytest
import torch
from torch import nn

from acosp.inject import MaskedConv, is_prunable, soft_to_hard_k
from acosp.masks import num_kept_channels
from acosp.pruner import SoftTopKPruner
from semseg.models import build_model, describe_arch
from semseg.models.cifar_resnet import CifarResNet18
from semseg.models.pretrained import WeightFileError, read_state_dict
from semseg.models.pspnet import PSPNet
from semseg.models.resnet import ResNet
from semseg.models.segnet import SegNet

# A few keys of hszhao/semseg's PSPNet50 (19 classes) with their shapes.
SEMSEG_PSPNET50_KEYS = {
    "layer0.0.weight": (64, 3, 3, 3),
    "layer0.1.running_var": (64,),
    "layer0.3.weight": (64, 64, 3, 3),
    "layer0.6.weight": (128, 64, 3, 3),
    "layer0.7.bias": (128,),
    "layer1.0.conv1.weight": (64, 128, 1, 1),
    "layer1.0.downsample.0.weight": (256, 128, 1, 1),
    "layer1.0.downsample.1.running_mean": (256,),
    "layer2.3.conv2.weight": (128, 128, 3, 3),
    "layer3.5.bn3.weight": (1024,),
    "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
    "layer4.2.conv3.weight": (2048, 512, 1, 1),
    "ppm.features.0.1.weight": (512, 2048, 1, 1),
    "ppm.features.3.2.running_var": (512,),
    "cls.0.weight": (512, 4096, 3, 3),
    "cls.1.weight": (512,),
    "cls.4.weight": (19, 512, 1, 1),
    "cls.4.bias": (19,),
    "aux.0.weight": (256, 1024, 3, 3),
    "aux.4.weight": (19, 256, 1, 1),
}

# torchvision's VGG16 configuration: conv widths and "M" for max-pool.
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


@pytest.fixture(scope="module")
def pspnet50():
    torch.manual_seed(0)
    return PSPNet(layers=50, classes=19)


def test_pspnet_has_semseg_names_shapes_and_size(pspnet50):
    state = pspnet50.state_dict()
    for key, shape in SEMSEG_PSPNET50_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(key.startswith("layer5") or ".fc." in key for key in state)
    assert round(sum(p.numel() for p in pspnet50.parameters()) / 1e6, 2) == 49.08


def test_pspnet_is_dilated_to_output_stride_8(pspnet50):
    assert pspnet50.layer3[1].conv2.dilation == (2, 2) and pspnet50.layer3[0].conv2.stride == (1, 1)
    assert pspnet50.layer4[0].conv2.dilation == (4, 4) and pspnet50.layer4[0].downsample[0].stride == (1, 1)
    features = pspnet50.layer4(
        pspnet50.layer3(pspnet50.layer2(pspnet50.layer1(pspnet50.layer0(torch.zeros(1, 3, 65, 65)))))
    )
    assert features.shape == (1, 2048, 9, 9)


@pytest.mark.parametrize("zoom_factor, size", [(8, 65), (4, 33), (2, 17), (1, 9)])
def test_pspnet_eval_output_size_follows_zoom_factor(zoom_factor, size):
    model = PSPNet(layers=50, classes=5, zoom_factor=zoom_factor).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 65, 57))
    assert logits.shape == (1, 5, size, (57 - 1) // 8 * zoom_factor + 1)


@pytest.mark.slow
def test_pspnet_train_mode_returns_prediction_and_losses_ignoring_the_ignore_label():
    model = PSPNet(layers=50, classes=4, ignore_label=7).train()
    labels = torch.randint(0, 4, (2, 33, 33))
    labels[:, :10] = 7
    prediction, main_loss, aux_loss = model(torch.randn(2, 3, 33, 33), labels)
    assert prediction.shape == (2, 33, 33) and prediction.dtype == torch.int64
    assert torch.isfinite(main_loss) and torch.isfinite(aux_loss)
    (main_loss + 0.4 * aux_loss).backward()
    assert model.aux[4].weight.grad is not None and model.cls[4].weight.grad is not None
    all_ignored = torch.full((2, 33, 33), 7)
    model.zero_grad()
    assert torch.isnan(model(torch.randn(2, 3, 33, 33), all_ignored)[1])  # nothing to learn from


def test_pspnet_compares_at_the_logits_size_when_zoom_factor_is_below_8():
    model = PSPNet(layers=50, classes=3, zoom_factor=2).train()
    prediction, main_loss, _ = model(torch.randn(2, 3, 33, 33), torch.randint(0, 3, (2, 33, 33)))
    assert prediction.shape == (2, 9, 9) and torch.isfinite(main_loss)


def test_pspnet_rejects_sizes_it_cannot_take():
    with pytest.raises(ValueError, match=r"8\*n\+1.*64x65"):
        PSPNet(layers=50, classes=3).eval()(torch.zeros(1, 3, 64, 65))
    with pytest.raises(ValueError, match="zoom_factor"):
        PSPNet(zoom_factor=3)
    with pytest.raises(ValueError, match="layers"):
        PSPNet(layers=34)
    with pytest.raises(ValueError, match="classes"):
        PSPNet(classes=1)


def test_pspnet101_builds():
    model = PSPNet(layers=101, classes=21)
    assert len(model.layer3) == 23
    assert 67.0 < sum(p.numel() for p in model.parameters()) / 1e6 < 69.0


@pytest.mark.slow
def test_semseg_checkpoint_with_module_prefix_loads_strictly(tmp_path, pspnet50):
    path = tmp_path / "train_epoch_100.pth"
    torch.save({"epoch": 100, "state_dict": {f"module.{k}": v for k, v in pspnet50.state_dict().items()}}, path)
    model = PSPNet(layers=50, classes=19)
    model.load_state_dict(read_state_dict(path), strict=True)
    assert torch.equal(model.cls[4].weight, pspnet50.cls[4].weight)


@pytest.mark.slow
def test_deep_stem_imagenet_file_initialises_pspnet(tmp_path):
    imagenet = ResNet(50, deep_base=True)
    state = {k: v for k, v in imagenet.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert {"conv1.weight", "bn3.running_mean", "layer1.0.conv1.weight", "fc.weight"} <= state.keys()
    path = tmp_path / "resnet50_v2.pth"
    torch.save(state, path)
    model = PSPNet(layers=50, classes=3, pretrained_weights=path)
    assert torch.equal(model.layer0[0].weight, state["conv1.weight"])
    assert torch.equal(model.layer0[7].running_mean, state["bn3.running_mean"])
    assert torch.equal(model.layer4[2].conv3.weight, state["layer4.2.conv3.weight"])


@pytest.mark.slow
def test_torchvision_format_file_initialises_the_standard_stem(tmp_path):
    state = ResNet(50, deep_base=False).state_dict()
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    path = tmp_path / "resnet50-torchvision.pth"
    torch.save(state, path)
    model = build_model({"arch": "psp", "classes": 3, "deep_base": False, "pretrained_weights": str(path)})
    assert len(model.layer0) == 4 and torch.equal(model.layer0[0].weight, state["conv1.weight"])
    assert torch.equal(model.layer1[0].downsample[0].weight, state["layer1.0.downsample.0.weight"])


@pytest.mark.slow
def test_weight_file_errors_name_the_file_and_keys(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(WeightFileError, match="pretrained_weights: .*nowhere.pth does not exist.*weights null"):
        PSPNet(pretrained_weights=missing)
    torchvision_stem = tmp_path / "standard.pth"
    torch.save(ResNet(50, deep_base=False).state_dict(), torchvision_stem)
    with pytest.raises(WeightFileError, match=r"standard\.pth does not fit.*missing keys: bn2\..*wrong shapes: conv1"):
        PSPNet(pretrained_weights=torchvision_stem)  # deep stem expected
    deeper = tmp_path / "resnet101.pth"
    torch.save(ResNet(101).state_dict(), deeper)
    with pytest.raises(WeightFileError, match=r"unexpected keys: layer3\.10\..* and \d+ more"):
        PSPNet(layers=50, pretrained_weights=deeper)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightFileError, match="garbage.pth cannot be read"):
        PSPNet(pretrained_weights=garbage)


def test_no_weight_file_is_said_in_the_log(caplog):
    with caplog.at_level("INFO"):
        build_model({"arch": "segnet", "classes": 3})
    assert "random initialisation" in caplog.text


def _torchvision_vgg16(batchnorm: bool) -> dict:
    """A state dict in the layout of torchvision's vgg16 / vgg16_bn, built from VGG's configuration."""
    state, index, in_channels = {}, 0, 3
    for width in VGG16:
        if width == "M":
            index += 1
            continue
        state[f"features.{index}.weight"] = torch.randn(width, in_channels, 3, 3)
        state[f"features.{index}.bias"] = torch.randn(width)
        if batchnorm:
            for name, value in (("weight", 1), ("bias", 0), ("running_mean", 0), ("running_var", 1)):
                state[f"features.{index + 1}.{name}"] = torch.rand(width) + value
            state[f"features.{index + 1}.num_batches_tracked"] = torch.tensor(5)
        index += 3 if batchnorm else 2
        in_channels = width
    state["classifier.6.weight"] = torch.randn(1000, 64)
    return state


@pytest.mark.slow
@pytest.mark.parametrize("batchnorm, conv, bn, last_conv", [(True, 17, 18, 40), (False, 12, None, 28)])
def test_vgg16_file_initialises_the_segnet_encoder(tmp_path, batchnorm, conv, bn, last_conv):
    state = _torchvision_vgg16(batchnorm)
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    model = SegNet(classes=4, pretrained_weights=path)
    assert torch.equal(model.enc3[1][0].weight, state[f"features.{conv}.weight"])  # block 3, second conv
    assert torch.equal(model.enc5[2][0].bias, state[f"features.{last_conv}.bias"])
    if bn is not None:
        assert torch.equal(model.enc3[1][1].running_var, state[f"features.{bn}.running_var"])
    else:
        assert torch.equal(model.enc3[1][1].running_var, torch.ones(256))


@pytest.mark.slow
def test_vgg16_errors(tmp_path):
    with pytest.raises(WeightFileError, match="vgg.pth does not exist"):
        SegNet(pretrained_weights=tmp_path / "vgg.pth")
    state = _torchvision_vgg16(True)
    del state["features.40.weight"]
    path = tmp_path / "cut.pth"
    torch.save(state, path)
    with pytest.raises(WeightFileError, match=r"cut\.pth does not fit SegNet: missing keys: enc5\.2\.0\.weight"):
        SegNet(pretrained_weights=path)


def test_segnet_shapes_and_losses_at_odd_sizes():
    model = SegNet(classes=6, ignore_label=5).train()
    labels = torch.randint(0, 6, (2, 45, 61))
    prediction, main_loss, aux_loss = model(torch.randn(2, 3, 45, 61), labels)
    assert prediction.shape == (2, 45, 61) and torch.isfinite(main_loss) and aux_loss.item() == 0
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 45, 61)).shape == (1, 6, 45, 61)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 29.4


def test_cifar_resnet18_shapes_and_loss():
    model = CifarResNet18(classes=10).train()
    prediction, loss, aux = model(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    assert prediction.shape == (4,) and torch.isfinite(loss) and aux.item() == 0
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == 11.17


def test_describe_arch_rebuilds_the_same_network():
    arch = describe_arch({"arch": "psp", "layers": 50, "classes": 7, "zoom_factor": 8, "base_lr": 0.01})
    assert arch == {"arch": "psp", "layers": 50, "classes": 7, "zoom_factor": 8, "deep_base": True, "ignore_label": 255}
    assert build_model(arch).cls[4].out_channels == 7
    assert isinstance(build_model({"arch": "resnet18", "classes": 10}), CifarResNet18)
    with pytest.raises(ValueError, match="unknown arch 'unet'"):
        build_model({"arch": "unet"})


def _classifier_convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and not is_prunable(m)]


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch, images, labels",
    [
        ({"arch": "psp", "classes": 3}, (2, 3, 33, 33), (2, 33, 33)),
        ({"arch": "segnet", "classes": 3}, (2, 3, 32, 48), (2, 32, 48)),
        ({"arch": "resnet18", "classes": 10}, (4, 3, 32, 32), (4,)),
    ],
    ids=["pspnet50", "segnet", "resnet18"],
)
def test_acosp_on_each_network(arch, images, labels):
    model = build_model(arch)
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    classifiers = _classifier_convs(model)
    model = SoftTopKPruner(ending_epoch=2, final_sparsity=0.5).configure_model(model)
    masked = [m for m in model.modules() if isinstance(m, MaskedConv)]
    assert len(masked) == convs - len(classifiers)
    assert len(classifiers) == {"psp": 2, "segnet": 1, "resnet18": 0}[arch["arch"]]
    assert all(not isinstance(m, MaskedConv) for m in classifiers)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(images), torch.randint(0, arch["classes"], labels)
    model.train()
    _, main_loss, aux_loss = model(x, y)
    (main_loss + 0.4 * aux_loss).backward()
    assert masked[0].mask_layer.weight.grad is not None
    optimizer.step()
    model = soft_to_hard_k(model).eval()
    with torch.no_grad():
        out = model(x)
    assert torch.isfinite(out).all() and out.shape[1] == arch["classes"]
    for layer in masked:
        mask = layer.mask_layer.mask
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert mask.sum() == num_kept_channels(mask.numel(), 0.5, 8)


def test_masked_pspnet_keys_follow_the_masked_conv_layout():
    model = SoftTopKPruner(final_sparsity=0.5).configure_model(PSPNet(layers=50, classes=19))
    state = model.state_dict()
    assert state["layer1.0.conv1.0.weight"].shape == (64, 128, 1, 1)
    assert state["layer1.0.conv1.1.weight"].shape == (64,) and "layer1.0.conv1.1.mask" in state
    assert "layer0.0.0.weight" in state and "ppm.features.0.1.0.weight" in state
    assert "cls.4.weight" in state and "cls.4.0.weight" not in state and "aux.4.weight" in state


def test_width_makes_segnet_and_resnet18_narrower():
    narrow = build_model({"arch": "segnet", "classes": 4, "width": 0.25})
    assert narrow.enc1[0][0].out_channels == 16 and narrow.dec1[0][0].out_channels == 16
    assert narrow.dec1[1].out_channels == 4
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in SegNet(classes=4).parameters()) / 10
    assert narrow.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 4, 32, 32)
    resnet = build_model({"arch": "resnet18", "classes": 10, "width": 0.5})
    assert resnet.fc.in_features == 256 and resnet.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="width"):
        SegNet(width=0)
    with pytest.raises(ValueError, match="full-width"):
        SegNet(width=0.5, pretrained_weights="vgg16.pth")


def test_blocks_make_segnet_shallower_for_small_images():
    shallow = build_model({"arch": "segnet", "classes": 4, "width": 0.25, "blocks": 3})
    assert describe_arch({"arch": "segnet", "classes": 4, "blocks": 3})["blocks"] == 3
    assert not hasattr(shallow, "enc4") and not hasattr(shallow, "dec4")
    assert shallow.enc3[2][0].out_channels == 64 and shallow.dec3[0][0].in_channels == 64
    assert shallow.dec1[1].out_channels == 4
    assert shallow.eval()(torch.randn(1, 3, 24, 40)).shape == (1, 4, 24, 40)  # 1/8 of 24x40 is 3x5
    one = SegNet(classes=2, blocks=1).eval()
    assert [name for name, _ in one.named_children() if name[:3] in ("enc", "dec")] == ["enc1", "dec1"]
    assert one(torch.randn(1, 3, 6, 6)).shape == (1, 2, 6, 6)
    for blocks in (0, 6):
        with pytest.raises(ValueError, match=f"blocks must be in 1..5, got {blocks}"):
            SegNet(blocks=blocks)


def test_a_shallow_segnet_takes_the_first_blocks_of_a_vgg16_file(tmp_path):
    state = _torchvision_vgg16(True)
    path = tmp_path / "vgg16_bn.pth"
    torch.save(state, path)
    model = SegNet(classes=4, pretrained_weights=path, blocks=2)
    assert torch.equal(model.enc2[1][0].weight, state["features.10.weight"])  # block 2, second conv
    assert torch.equal(model.enc2[1][1].running_var, state["features.11.running_var"])
