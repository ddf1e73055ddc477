"""tool/download.py: the publication's starting files, fetched (here from file:// and a local server) and checked."""

import hashlib
import http.server
import io
import tarfile
import threading

import pytest
import torch
from test_models import _torchvision_vgg16
from train_helpers import ROOT, load_tool, make_cifar10_batches, write_config

from semseg.config import load_config
from semseg.data import download
from semseg.data.download import DownloadError, Source, check, fetch
from semseg.models.segnet import SegNet

download_tool = load_tool("download")
train_tool = load_tool("train")


@pytest.fixture(scope="module")
def vgg16_file(tmp_path_factory):
    """A state dict in torchvision's VGG16 layout (random tensors), and its SHA-256."""
    path = tmp_path_factory.mktemp("published") / "vgg16-test.pth"
    torch.manual_seed(0)
    torch.save(_torchvision_vgg16(batchnorm=False), path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def vgg16_source(prefix: str) -> Source:
    return Source("vgg16", "test", "data/pretrained/vgg16.pth", "unused", sha256_prefix=prefix)


def files_under(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_a_download_with_the_published_hash_lands_whole_and_fits_segnet(tmp_path, vgg16_file):
    path, digest = vgg16_file
    message = fetch(vgg16_source(digest[:8]), tmp_path, path.as_uri(), progress=False)
    landed = tmp_path / "data" / "pretrained" / "vgg16.pth"
    assert landed.read_bytes() == path.read_bytes() and files_under(tmp_path) == ["data/pretrained/vgg16.pth"]
    assert f"{landed} fits SegNet's encoder" in message
    # there already: checked, not fetched again
    assert fetch(vgg16_source(digest[:8]), tmp_path, "file:///nowhere", progress=False).startswith("already there")
    # every encoder conv receives its tensor, the decoder and every BatchNorm keep their initialisation
    torch.manual_seed(1)
    fresh = SegNet(classes=11)
    torch.manual_seed(1)
    loaded = SegNet(classes=11, pretrained_weights=landed)
    state = torch.load(landed, weights_only=True)
    assert torch.equal(loaded.enc1[0][0].weight, state["features.0.weight"])
    assert torch.equal(loaded.enc5[2][0].bias, state["features.28.bias"])
    for name, tensor in fresh.state_dict().items():
        if not name.startswith("enc") or name.split(".")[2] == "1":  # decoder, BatchNorm
            assert torch.equal(loaded.state_dict()[name], tensor), name


def test_a_wrong_hash_or_an_unreachable_address_leaves_nothing(tmp_path, vgg16_file):
    path, digest = vgg16_file
    with pytest.raises(DownloadError, match="SHA-256 does not begin with 00000000, .*it was not kept"):
        fetch(vgg16_source("00000000"), tmp_path, path.as_uri(), progress=False)
    with pytest.raises(DownloadError, match="cannot download file:///no/such/file.*put the file at .*vgg16.pth"):
        fetch(vgg16_source(digest[:8]), tmp_path, "file:///no/such/file", progress=False)
    assert files_under(tmp_path) == []


def test_an_interrupted_transfer_leaves_nothing_partial(tmp_path, vgg16_file):
    path, digest = vgg16_file
    body = path.read_bytes()

    class HalfAndHangUp(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), HalfAndHangUp)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/vgg16.pth"
        with pytest.raises(DownloadError, match="SHA-256 does not begin with .* cut short ends this way too"):
            fetch(vgg16_source(digest[:8]), tmp_path, url, progress=False)
    finally:
        thread.join(5)
        server.server_close()
    assert files_under(tmp_path) == []


@pytest.mark.slow
def test_check_names_the_file_and_what_does_not_fit(tmp_path, vgg16_file):
    path, _ = vgg16_file
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DownloadError, match="truncated.pth cannot be read as a torch state dict"):
        check("vgg16", truncated)
    resnet = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.randn(64, 3, 7, 7), "fc.weight": torch.randn(10, 2048)}, resnet)
    with pytest.raises(DownloadError, match="resnet.pth does not fit SegNet: missing keys: enc1.0.0.bias"):
        check("vgg16", resnet)
    with pytest.raises(DownloadError, match="resnet.pth does not fit ResNet: missing keys"):
        check("resnet50_v2", resnet)
    assert files_under(tmp_path) == ["resnet.pth", "truncated.pth"]  # nothing written


@pytest.mark.slow
def test_the_command_lists_fetches_and_checks_and_says_where_semsegs_file_is(tmp_path, vgg16_file, monkeypatch, capsys):
    path, digest = vgg16_file
    root = ["--root", str(tmp_path), "--quiet"]
    assert download_tool.main(root) == 0
    listing = capsys.readouterr().out
    assert "vgg16        missing  download  data/pretrained/vgg16.pth" in listing and "resnet50_v2" in listing
    assert download_tool.main(["resnet50_v2", *root]) == 1
    assert "hszhao/semseg" in capsys.readouterr().err
    assert download_tool.main(["vgg16", "--check", *root]) == 1
    assert "vgg16.pth does not exist" in capsys.readouterr().err
    monkeypatch.setitem(download.SOURCES, "vgg16", vgg16_source(digest[:8]))
    assert download_tool.main(["vgg16", "--url", path.as_uri(), *root]) == 0
    assert download_tool.main(["vgg16", "--check", *root]) == 0
    assert "fits SegNet's encoder" in capsys.readouterr().out


def cifar10_archive(tmp_path, members=None):
    """A .tar.gz in the layout of the published CIFAR-10 archive, with a few images per batch."""
    batches = tmp_path / "batches"
    make_cifar10_batches(batches / "cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(batches / "cifar-10-batches-py", arcname="cifar-10-batches-py")
        for name, data in (members or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def cifar10_source(md5: str) -> Source:
    return Source("cifar10", "test", "data/cifar10/cifar-10-batches-py", "unused", md5=md5)


def test_cifar10_is_unpacked_into_place_only_when_its_md5_and_batches_are_right(tmp_path, monkeypatch):
    archive, md5 = cifar10_archive(tmp_path / "published")
    root = tmp_path / "repo"
    with pytest.raises(DownloadError, match="MD5 is not the published 0123"):
        fetch(cifar10_source("0123"), root, archive.as_uri(), progress=False)
    assert files_under(root) == []
    with pytest.raises(DownloadError, match="40 training and 8 test images, not 50000 and 10000"):
        fetch(cifar10_source(md5), root, archive.as_uri(), progress=False)  # the small test archive
    assert files_under(root) == []
    monkeypatch.setattr(download, "CIFAR10_IMAGES", (40, 8))  # what make_cifar10_batches writes
    message = fetch(cifar10_source(md5), root, archive.as_uri(), progress=False)
    assert "holds CIFAR-10: 40 training and 8 test images" in message
    assert files_under(root) == [f"data/cifar10/cifar-10-batches-py/{n}" for n in sorted(
        [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"])]  # fmt: skip
    cfg = load_config(ROOT / "config" / "cifar10" / "cifar10_resnet18.yaml")
    assert cfg.data_root == "data/cifar10"  # where the configs read it


def test_an_archive_that_writes_outside_its_folder_is_refused(tmp_path):
    archive, md5 = cifar10_archive(tmp_path / "published", {"../escape.txt": b"x"})
    with pytest.raises(DownloadError, match="'../escape.txt', which is not a plain file or folder inside it"):
        fetch(cifar10_source(md5), tmp_path / "repo", archive.as_uri(), progress=False)
    assert files_under(tmp_path / "repo") == [] and not (tmp_path / "repo" / "escape.txt").exists()


def test_the_publications_segnet_configs_start_from_vgg16_and_the_cpu_recipes_from_scratch():
    for name in ("camvid/camvid_segnet_0.75", "cityscapes/cityscapes_segnet", "camvid/camvid_segnet"):
        assert load_config(ROOT / "config" / f"{name}.yaml").pretrained_weights == "data/pretrained/vgg16.pth"
    for name in ("camvid/camvid_segnet_cpu_0.75", "camvid/camvid_segnet_cpu_study", "shapes/shapes_segnet"):
        assert load_config(ROOT / "config" / f"{name}.yaml").pretrained_weights is None
    psp = load_config(ROOT / "config" / "ade20k" / "ade20k_pspnet50.yaml")
    assert psp.pretrained_weights == "data/pretrained/resnet50_v2.pth"


def test_training_starts_from_a_vgg16_file(tmp_path, vgg16_file, capsys):
    path, _ = vgg16_file
    config = write_config(tmp_path, width=1.0, blocks=2, epochs=1, ending_epoch=1, evaluate=False)
    overrides = ["pretrained_weights", str(path), "batch_size", "2"]
    assert train_tool.main(["--config", str(config), "--device", "cpu", *overrides]) == 0
    assert f"initialised SegNet from {path}" in capsys.readouterr().out  # in the run's log too
    final = torch.load(tmp_path / "exp" / "model" / "final.pth", weights_only=True)
    assert final["epoch"] == 1
