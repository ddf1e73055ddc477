"""Fetch the files the publication's runs start from, or check ones placed by hand.

    python tool/download.py                        # what there is, where it goes, whether it is there
    python tool/download.py vgg16                  # torchvision's ImageNet VGG16 -> data/pretrained/vgg16.pth
    python tool/download.py cifar10                # CIFAR-10's python batches -> data/cifar10/cifar-10-batches-py/
    python tool/download.py resnet50_v2 --check    # verify semseg's ResNet-50 placed by hand
    python tool/download.py vgg16 --url file:///mnt/mirror/vgg16-397923af.pth   # a mirror or a local copy

Downloads are verified (SHA-256 prefix of the published file name, or the published MD5) and
checked against the network they initialise (every key and shape, one forward pass) before they
are moved into place; nothing partial is left behind. Exit status 1 when a file could not be
fetched or does not fit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from semseg.data.download import SOURCES, DownloadError, check, fetch

ROOT = Path(__file__).resolve().parents[1]


def listing(root: Path) -> str:
    lines = []
    for source in SOURCES.values():
        there = "there" if (root / source.destination).exists() else "missing"
        how = "download" if source.url else "by hand"
        lines.append(f"{source.name:<12} {there:<8} {how:<9} {source.destination}: {source.what}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", choices=sorted(SOURCES), help="what to fetch or check")
    parser.add_argument("--check", action="store_true", help="only verify the file that is there")
    parser.add_argument("--url", help="fetch from this address instead (a mirror, or file:///path)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository root the destinations are under")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.name is None:
        print(listing(args.root))
        return 0
    source = SOURCES[args.name]
    try:
        if args.check:
            print(check(source.name, args.root / source.destination))
        else:
            print(fetch(source, args.root, args.url, progress=not args.quiet))
    except DownloadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
