"""The files the publication's runs start from, fetched from their public addresses and checked.

``tool/download.py`` is the command. Each source names its address, where the file goes and how
it is verified: weight files by the SHA-256 prefix in their torchvision file name (PyTorch's own
``torch.hub.download_url_to_file``, with its progress bar), CIFAR-10 by the MD5 its authors
publish. A download goes to a temporary name beside its destination and is moved into place only
after its hash is right and it fits the network (or reads as the dataset), so an interrupted or
wrong transfer leaves nothing behind. Files that have no stable public address (semseg's
``resnet50_v2.pth``) are placed by hand; ``check`` verifies any of them.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


class DownloadError(RuntimeError):
    """A file that could not be fetched, or that is not what it should be; the message says what to do."""


@dataclass(frozen=True)
class Source:
    name: str
    what: str  # in plain words, with who publishes it
    destination: str  # relative to the repository root
    url: str | None = None  # None: no stable public address, placed by hand
    sha256_prefix: str | None = None
    md5: str | None = None
    manual: str = ""  # where to get it by hand


SOURCES = {
    "vgg16": Source(
        "vgg16",
        "torchvision's ImageNet VGG16 (no BatchNorm): the SegNet encoder of the publication",
        "data/pretrained/vgg16.pth",
        "https://download.pytorch.org/models/vgg16-397923af.pth",
        sha256_prefix="397923af",
    ),
    "resnet50_v2": Source(
        "resnet50_v2",
        "semseg's ImageNet ResNet-50 with the deep stem: the PSPNet backbone of the publication",
        "data/pretrained/resnet50_v2.pth",
        manual=(
            "semseg publishes it without a stable direct address: its README (https://github.com/hszhao/semseg, "
            "'Usage') links a Google Drive folder of ImageNet models; download resnet50_v2.pth from there"
        ),
    ),
    "resnet50": Source(
        "resnet50",
        "torchvision's ImageNet ResNet-50 (7x7 stem), for PSPNet with deep_base false: not the publication's start",
        "data/pretrained/resnet50.pth",
        "https://download.pytorch.org/models/resnet50-0676ba61.pth",
        sha256_prefix="0676ba61",
    ),
    "cifar10": Source(
        "cifar10",
        "CIFAR-10's python batches (Krizhevsky): the publication's ResNet18 runs",
        "data/cifar10/cifar-10-batches-py",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
    ),
}


def _network_check(name: str) -> Callable[[Path], str]:
    """Build the network the file initialises from it (strict: every key and shape) and run it once."""

    def check(path: Path) -> str:
        from semseg.models.pretrained import WeightFileError
        from semseg.models.pspnet import PSPNet
        from semseg.models.segnet import SegNet

        try:
            if name == "vgg16":
                network, x = SegNet(classes=11, pretrained_weights=path), torch.randn(1, 3, 64, 64)
            else:
                network = PSPNet(layers=50, classes=2, deep_base=name == "resnet50_v2", pretrained_weights=path)
                x = torch.randn(1, 3, 65, 65)
            with torch.no_grad():
                out = network.eval()(x)
        except WeightFileError as error:
            raise DownloadError(str(error)) from None
        if not torch.isfinite(out).all():
            raise DownloadError(f"{path}: the network it initialises gives non-finite outputs")
        return f"{path} fits {type(network).__name__}'s {'encoder' if name == 'vgg16' else 'backbone'}"

    return check


CIFAR10_IMAGES = (50000, 10000)  # training and test images of the published archive


def _cifar10_check(path: Path) -> str:
    from semseg.data.dataset import Cifar10
    from semseg.data.images import DatasetError

    try:
        train, test = Cifar10(path, train=True), Cifar10(path, train=False)
    except (DatasetError, OSError, ValueError) as error:
        raise DownloadError(f"{path}: not CIFAR-10's python batches: {error}") from None
    expected = CIFAR10_IMAGES
    if (len(train), len(test)) != expected:
        raise DownloadError(
            f"{path}: {len(train)} training and {len(test)} test images, not {expected[0]} and {expected[1]}"
        )
    return f"{path} holds CIFAR-10: {expected[0]} training and {expected[1]} test images"


CHECKS: dict[str, Callable[[Path], str]] = {
    "vgg16": _network_check("vgg16"),
    "resnet50_v2": _network_check("resnet50_v2"),
    "resnet50": _network_check("resnet50"),
    "cifar10": _cifar10_check,
}


def check(name: str, path: Path) -> str:
    """Verify a file (or CIFAR-10's folder) as the source ``name`` needs it; a sentence saying so, or DownloadError."""
    if not path.exists():
        raise DownloadError(f"{path} does not exist")
    return CHECKS[name](path)


def _unreachable(source: Source, url: str, destination: Path, error: Exception) -> DownloadError:
    return DownloadError(
        f"cannot download {url} ({error}). On a machine with a network, fetch that address and put "
        f"{'its contents' if source.md5 else 'the file'} at {destination}; then "
        f"'python tool/download.py {source.name} --check' verifies it"
    )


def fetch(source: Source, root: Path, url: str | None = None, progress: bool = True) -> str:
    """Download ``source`` (from ``url`` if given: a mirror, or a file:// address) into ``root``; a sentence
    saying what is where. A destination that is there already is checked, not fetched again."""
    destination = root / source.destination
    if destination.exists():
        return "already there: " + check(source.name, destination)
    url = url or source.url
    if url is None:
        raise DownloadError(
            f"{source.name} cannot be downloaded by this tool: {source.manual}; put it at {destination}"
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    if source.md5 is None:
        return _fetch_file(source, url, destination, progress)
    return _fetch_archive(source, url, destination, progress)


def _download(source: Source, url: str, target: Path, progress: bool) -> None:
    """``url`` to ``target`` with torch.hub's downloader, which removes its partial file on any failure."""
    try:
        torch.hub.download_url_to_file(url, str(target), hash_prefix=source.sha256_prefix, progress=progress)
    except RuntimeError as error:
        if "invalid hash value" in str(error):
            raise DownloadError(
                f"{url}: the downloaded file's SHA-256 does not begin with {source.sha256_prefix}, as its published "
                "name says (a transfer cut short ends this way too); it was not kept"
            ) from None
        raise
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise _unreachable(source, url, target.parent / Path(source.destination).name, error) from None


def _fetch_file(source: Source, url: str, destination: Path, progress: bool) -> str:
    temporary = destination.with_name(destination.name + ".download")
    try:
        _download(source, url, temporary, progress)
        message = check(source.name, temporary).replace(str(temporary), str(destination))
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)
    return message


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch_archive(source: Source, url: str, destination: Path, progress: bool) -> str:
    """A .tar.gz whose single top folder becomes ``destination`` once its MD5 and contents are right."""
    work = Path(tempfile.mkdtemp(prefix=f".{source.name}-", dir=destination.parent))
    try:
        archive = work / "archive.tar.gz"
        _download(source, url, archive, progress)
        if _md5(archive) != source.md5:
            raise DownloadError(f"{url}: the archive's MD5 is not the published {source.md5}; it was not kept")
        try:
            with tarfile.open(archive) as tar:
                _extract(tar, work / "contents")
        except (tarfile.TarError, EOFError, OSError) as error:
            raise DownloadError(f"{url}: the archive cannot be unpacked ({error})") from None
        unpacked = work / "contents" / destination.name
        check(source.name, unpacked)
        os.replace(unpacked, destination)
        return check(source.name, destination)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _extract(tar: tarfile.TarFile, folder: Path) -> None:
    """Unpack regular files and folders only, none outside ``folder``."""
    for member in tar.getmembers():
        target = (folder / member.name).resolve()
        if not (member.isfile() or member.isdir()) or not target.is_relative_to(folder.resolve()):
            raise DownloadError(f"the archive holds {member.name!r}, which is not a plain file or folder inside it")
    if hasattr(tarfile, "data_filter"):
        tar.extractall(folder, filter="data")
    else:  # Python without extraction filters: the members were checked above
        tar.extractall(folder)  # noqa: S202
