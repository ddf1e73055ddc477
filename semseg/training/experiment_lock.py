"""One run at a time per experiment folder, and a finished experiment kept unless the user says otherwise.

Two runs writing into one ``save_path`` would replace each other's checkpoints and mix their logs.
``hold`` takes an exclusive lock on ``<save_path>/.lock`` (released by the system when the process
ends, however it ends) and writes its holder there, so a second run fails at once and says who has
the folder. ``check_not_replacing`` stops a run that would start afresh over the checkpoints of an
earlier one: continuing it is ``resume``, replacing it ``overwrite true``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the folder is not guarded
    fcntl = None

LOCK = ".lock"


class ExperimentBusy(RuntimeError):
    """Another run holds the experiment folder, or the folder holds a run that would be replaced."""


@contextlib.contextmanager
def hold(folder: Path, what: str) -> Iterator[None]:
    """Hold ``folder`` for the duration of the block; ExperimentBusy (naming the holder) if another run does."""
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(folder / LOCK, "a+", encoding="utf-8") as handle:  # closing it releases the lock
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "a process that has not written its name yet"
            raise ExperimentBusy(
                f"{folder} is in use by another run ({holder}); wait for it to end, or give this run another save_path"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(
            f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: {what}\n"
        )
        handle.flush()
        yield


def check_not_replacing(folder: Path, resume: str | None, overwrite: bool) -> None:
    """ExperimentBusy when a run without ``resume`` would start afresh over the checkpoints in ``folder``."""
    if resume is not None or overwrite:
        return
    found = [name for name in ("final.pth", "last.pth") if (folder / name).is_file()]
    if found:
        state = "a finished run" if "final.pth" in found else "an unfinished run"
        raise ExperimentBusy(
            f"{folder} holds {state} ({', '.join(found)}); 'resume auto' continues it, 'overwrite true' starts "
            "afresh and replaces it, another save_path keeps both"
        )
