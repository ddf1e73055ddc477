"""Scalars from tensorboard event files, read without tensorboard: for figures and tests."""

from __future__ import annotations

import struct
from pathlib import Path


def read_scalars(folder: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` from every ``events.out.tfevents.*`` file in ``folder`` (TFRecord framing)."""
    from tensorboardX.proto.event_pb2 import Event

    folder = Path(folder)
    paths = sorted(folder.glob("events.out.tfevents.*"))
    if not paths:
        raise FileNotFoundError(f"{folder}: no tensorboard event files (events.out.tfevents.*)")
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in paths:
        data = path.read_bytes()
        offset = 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            if offset + 12 + length > len(data):
                break  # a record still being written
            event = Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars
