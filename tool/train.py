"""Train a network with ACoSP: python tool/train.py --config FILE [key value ...].

``run`` reads top to bottom: config, processes, seed, network, data, masks, optimizer, then
``Training``'s epochs, each one screen: the pruner's step (the masks' temperature; hard masks from
ending_epoch on), train, validate, log the masks, save.
Start several processes with torchrun (tool/train.sh does it when NPROC is set).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import torch
from torch import nn

from acosp import SoftTopKPruner
from acosp.inject import hard_to_conv, shared_mask_groups, soft_to_hard_k
from semseg.command_line import parse_with_overrides, setup_logging
from semseg.config import load_config, save_config
from semseg.data.dataset import build_datasets
from semseg.data.list_files import OverwriteError
from semseg.data.sampling import make_loader, per_process_batch, seed_epoch
from semseg.data.shapes import ensure_dataset
from semseg.evaluation.metrics import training_metrics
from semseg.models import build_model
from semseg.training import checkpoint
from semseg.training.distributed import barrier, broadcast_int, close_processes, init_processes, masks_agree
from semseg.training.epoch import StepContext, TrainingError, progress_bar, train_epoch, validate
from semseg.training.experiment_lock import ExperimentBusy, check_not_replacing, hold
from semseg.training.optimizer import build_optimizer, drop_stale_parameters
from semseg.training.stop_signals import StopRequested, StopSignals
from semseg.training.tensorboard import RunLog, read_palette

logger = logging.getLogger("train")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config", required=True, help="experiment YAML, e.g. config/cityscapes/cityscapes_pspnet50_0.75.yaml"
    )
    parser.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: CUDA when available"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides as 'key value' pairs")
    return parse_with_overrides(parser, argv)


# Config keys and the pruner settings they become (make_pruner); a resumed checkpoint must agree on them.
PRUNING_KEYS = {
    "sparsity": "final_sparsity",
    "starting_epoch": "starting_epoch",
    "ending_epoch": "ending_epoch",
    "min_remaining_elements": "min_remaining_elements",
    "initial_temp": "initial_temp",
    "final_temp": "final_temp",
    "learnable_weights": "learnable_weights",
    "round_to": "round_to",
    "coupled_masks": "coupled_masks",
    "selection": "selection",
}


def make_pruner(cfg) -> SoftTopKPruner:
    """The config's pruning schedule; at sparsity 0 (a dense run) an inactive pruner that changes nothing."""
    return SoftTopKPruner(active=cfg.sparsity > 0, **{setting: cfg[key] for key, setting in PRUNING_KEYS.items()})


def follow_resumed_pruning(cfg, pruner: SoftTopKPruner, saved: dict | None, path: Path) -> None:
    """Load the checkpoint's pruner state into ``pruner`` after checking it against the config.

    A difference stops the run and names both values, unless ``resume_pruning checkpoint``: then the
    checkpoint's settings win and the config takes them, so config.yaml and the checkpoints say
    what the run does.
    """
    saved_values = {key: saved.get(name) for key, name in PRUNING_KEYS.items()} if saved else {"sparsity": 0.0}
    differences = {
        key: (value, cfg[key]) for key, value in saved_values.items() if value is not None and value != cfg[key]
    }
    if differences and cfg.resume_pruning == "check":
        listed = "; ".join(f"{key}: checkpoint {old}, config {new}" for key, (old, new) in differences.items())
        raise TrainingError(
            f"the checkpoint {path} was pruned otherwise than this config ({listed}); set the config to the "
            "checkpoint's values, or 'resume_pruning checkpoint' to continue as the checkpoint was trained"
        )
    for key, (old, _) in differences.items():
        cfg[key] = old
    if differences:
        logger.warning("resume_pruning checkpoint: continuing with the checkpoint's %s", ", ".join(differences))
    if saved:
        pruner.load_state_dict(saved)  # a finished pruner makes configure_model harden the masks
    else:
        pruner.active = False  # a dense checkpoint continues dense


def initial_weights(model: nn.Module, path: str, cfg) -> None:
    """``weight PATH``: start from a dense or pruned checkpoint; its hard masks are folded into the convs."""
    source = checkpoint.model_from_checkpoint(path, cfg)
    source = hard_to_conv(soft_to_hard_k(source))
    checkpoint.load_network_state(model, source.state_dict(), path)
    logger.info("initialised the network from %s", path)


def resolve_resume(cfg) -> Path | None:
    if cfg.resume is None:
        return None
    if cfg.resume == "auto":
        last = cfg.path("save_path") / "last.pth"
        if not last.is_file():
            logger.warning("resume auto: no %s yet, so training starts from the beginning", last)
            return None
        return last
    return cfg.path("resume")


def take_folder(cfg, processes, stack: contextlib.ExitStack) -> list:
    """Rank 0 holds the experiment folder for the run and checks that it replaces nothing; every rank
    learns whether that worked. Returns the stale temporary files removed."""
    model_dir = cfg.path("save_path")
    error, removed = None, []
    if processes.is_main:
        try:
            stack.enter_context(hold(model_dir, f"tool/train.py --config {cfg.source}"))
            check_not_replacing(model_dir, cfg.resume, cfg.overwrite)
            removed = checkpoint.remove_stale_temporaries(model_dir)
        except ExperimentBusy as caught:
            error = caught
        except OSError as caught:
            error = checkpoint.CheckpointError(f"cannot write to the experiment folder {model_dir}: {caught}")
    if broadcast_int(int(error is not None), processes.device):
        raise error if error is not None else ExperimentBusy(f"{model_dir}: the main process could not take it")
    return removed


def prune_epoch_checkpoints(folder: Path, keep: int | None) -> None:
    if keep is None:
        return
    epochs = sorted(folder.glob("train_epoch_*.pth"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    for old in epochs[:-keep]:
        old.unlink(missing_ok=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # started in the background by tool/train.sh
    cfg = load_config(args.config, args.opts)
    processes = init_processes(args.device)
    with contextlib.ExitStack() as stack:
        removed = take_folder(cfg, processes, stack)
        return run(cfg, processes, removed)


def run(cfg, processes, removed: list) -> int:
    """The stages of a run, in the order their random numbers and their checks need."""
    model_dir = cfg.path("save_path")
    setup_logging(model_dir, "train", processes.rank)
    logger.info("config %s, %d process(es) on %s", cfg.source, processes.world_size, processes.device)
    if removed:
        logger.info("removed %d temporary file(s) that an interrupted save left in %s", len(removed), model_dir)
    resume_path = resolve_resume(cfg)
    resumed = checkpoint.load_checkpoint(resume_path) if resume_path is not None else None
    seed = choose_seed(cfg, resumed, processes.device)
    # Everything that can be wrong with the setup fails from here on, before anything is written.
    model = build_model(cfg, pretrained_weights=cfg.path("pretrained_weights"))  # the seed's first draws
    if processes.is_main:
        checkpoint.check_free_space(model_dir, model)
        ensure_dataset(cfg, logger.info)  # the built-in dataset is generated on first use
    barrier()
    torch.backends.cudnn.benchmark = cfg.manual_seed is None
    loaders = make_loaders(cfg, processes, seed)
    model, pruner = masked_network(cfg, model, resumed, resume_path)
    model = placed(cfg, processes, model)
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(processes.device.type, enabled=bool(cfg.amp) and processes.device.type == "cuda")
    start = Start(cfg.start_epoch)
    if resumed is not None:
        start = resume_training(resumed, resume_path, optimizer, scaler)
    if processes.is_main:  # only now, with the setup sound, does the folder change
        (model_dir.parent / "result").mkdir(parents=True, exist_ok=True)
        save_config(cfg)
    return Training(cfg, processes, seed, model, pruner, optimizer, scaler, loaders, start).run()


def choose_seed(cfg, resumed: dict | None, device: torch.device) -> int:
    """The run's seed, set for the network's initial weights.

    Without manual_seed, rank 0 draws one for all, so that the ranks' shards of every epoch still
    partition the data; a resumed run takes the one it started with.
    """
    seed = cfg.manual_seed if cfg.manual_seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
    if cfg.manual_seed is None and resumed is not None and resumed.get("seed") is not None:
        seed = int(resumed["seed"])
    seed = broadcast_int(seed, device)
    seed_epoch(seed, -1)
    return seed


@dataclasses.dataclass
class Loaders:
    train: Any
    sampler: Any
    val: Any = None


def make_loaders(cfg, processes, seed: int) -> Loaders:
    train_set, val_set = build_datasets(cfg)
    batch = per_process_batch(cfg.batch_size, processes, "batch_size")
    train_loader, train_sampler = make_loader(train_set, batch, cfg.workers, processes, True, seed)
    if len(train_loader) == 0:
        raise TrainingError(
            f"{cfg.train_list or cfg.data_root}: fewer samples ({len(train_set)}) than one batch ({batch})"
        )
    loaders = Loaders(train_loader, train_sampler)
    if val_set is not None:
        val_batch = per_process_batch(cfg.batch_size_val, processes, "batch_size_val")
        loaders.val, _ = make_loader(val_set, val_batch, cfg.workers, processes, False, seed)
    return loaders


def masked_network(cfg, model: nn.Module, resumed: dict | None, resume_path: Path | None):
    """The network with its starting weights and masks (the checkpoint's, when resumed), and its pruner.

    Masks come before the optimizer: the logits are trained too. Coupled masks are found on one
    training crop.
    """
    if cfg.weight:
        initial_weights(model, cfg.weight, cfg)
    pruner = make_pruner(cfg)
    if resumed is not None:
        follow_resumed_pruning(cfg, pruner, resumed.get("pruner"), resume_path)
    coupled = pruner.coupled_masks and (pruner.active or pruner.finished)
    model = pruner.configure_model(model, torch.zeros(1, 3, cfg.train_h, cfg.train_w) if coupled else None)
    if coupled and pruner.adds_masks:
        groups = shared_mask_groups(model)
        logger.info("coupled masks: %d groups share a mask: %s", len(groups), "; ".join(map(" + ".join, groups)))
    if resumed is not None:
        checkpoint.load_network_state(model, checkpoint.network_state(resumed, resume_path), resume_path)
    return model, pruner


def placed(cfg, processes, model: nn.Module) -> nn.Module:
    """The network on its device (channels-last under AMP), wrapped for several processes."""
    device = processes.device
    model.to(device)
    if device.type == "cuda" and cfg.amp:
        model = model.to(memory_format=torch.channels_last)  # tensor cores prefer NHWC in float16
    if processes.distributed:
        if device.type == "cuda" and cfg.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


@dataclasses.dataclass
class Start:
    """Where training starts: the first epoch, the best validation so far, and for a run stopped in
    the middle of an epoch, the iterations to skip and the random state to skip them with."""

    epoch: int = 0
    best: dict = dataclasses.field(default_factory=dict)
    skip: int = 0
    rng: Any = None


def resume_training(resumed: dict, resume_path: Path, optimizer, scaler) -> Start:
    optimizer.load_state_dict(resumed["optimizer"])
    scaler.load_state_dict(resumed["scaler"])
    checkpoint.restore_rng_state(resumed.get("rng"))
    skip = int(resumed.get("iteration") or 0)  # a run stopped by a signal in the middle of an epoch
    start = Start(int(resumed["epoch"]), dict(resumed.get("best") or {}), skip, resumed.get("rng") if skip else None)
    where = f"epoch {start.epoch + 1}, iteration {skip + 1}" if skip else f"after epoch {start.epoch}"
    logger.info("resumed from %s: continuing at %s", resume_path, where)
    return start


class Training:
    """The epochs: the pruner's step, training, validation, the logs, the checkpoints."""

    def __init__(self, cfg, processes, seed, model, pruner, optimizer, scaler, loaders: Loaders, start: Start):
        self.cfg, self.processes, self.seed = cfg, processes, seed
        self.model, self.pruner, self.optimizer, self.scaler = model, pruner, optimizer, scaler
        self.loaders, self.start, self.best = loaders, start, start.best
        self.model_dir = cfg.path("save_path")
        self.log = RunLog(self.model_dir.parent if processes.is_main else None)
        self.palette = read_palette(cfg.path("colors_path"), cfg.classes)
        self.signals = StopSignals()
        self.first_loss = None
        max_iterations = cfg.epochs * len(loaders.train)
        self.context = StepContext(
            cfg, processes, optimizer, scaler, max_iterations, self.log, logger.info, stop=lambda: self.signals.received
        )

    def run(self) -> int:
        cfg, processes = self.cfg, self.processes
        epoch = self.start.epoch
        try:
            with self.signals:
                epochs = range(self.start.epoch, cfg.epochs)
                for epoch in progress_bar(epochs, processes, desc="epochs", initial=epochs.start, total=cfg.epochs):
                    self.prune_step(epoch)  # the masks this epoch trains and validates with
                    self.train(epoch)
                    self.validate(epoch)
                    self.log_masks(epoch)
                    if epoch + 1 == cfg.epochs:
                        self.prune_step(cfg.epochs, last=True)  # training may end before pruning does
                    self.save(epoch + 1)
                    self.log.flush()
                    barrier()
        except StopRequested as stop:
            if processes.is_main:
                path = checkpoint.save_checkpoint(self.state(epoch, stop.iteration), self.model_dir / "last.pth")
                logger.warning(
                    "%s in epoch %d: saved %s at iteration %d; 'resume auto' continues from there",
                    stop.signal_name,
                    epoch + 1,
                    path,
                    stop.iteration + 1,
                )
            return stop.exit_status
        except KeyboardInterrupt:
            logger.warning("stopped at once by a second Ctrl-C: nothing saved; last.pth holds the last finished epoch")
            return 130
        finally:
            self.log.close()
        final = self.model_dir / "final.pth"
        if processes.is_main:
            if not final.is_file():
                # resumed from a last.pth that had finished every epoch, after a stop before final.pth was written
                checkpoint.save_checkpoint(self.state(cfg.epochs), final)
            logger.info("done: %s", final)
        close_processes()
        return 0

    def prune_step(self, epoch: int, last: bool = False) -> None:
        """The pruner's step before ``epoch``: anneal, and harden when pruning ends (the logits leave the optimizer)."""
        pruning = self.pruner.active
        self.model = self.pruner.step(self.model, epoch, last)
        if pruning and self.pruner.finished:
            dropped = drop_stale_parameters(self.optimizer, self.model)
            when = "after the last epoch" if last else f"before epoch {epoch + 1}"
            logger.info("%s: masks hardened; the optimizer dropped %d mask logits", when, dropped)

    def train(self, epoch: int) -> None:
        cfg, start = self.cfg, self.start
        seed_epoch(self.seed, epoch)
        self.loaders.sampler.set_epoch(epoch)
        skip = start.skip if epoch == start.epoch else 0
        metrics = training_metrics(cfg, self.processes.device)
        result = train_epoch(self.model, self.loaders.train, epoch, self.context, metrics, skip, start.rng)
        self.log.epoch("train", result.loss, result.metrics, epoch + 1)
        logger.info("epoch %d/%d train loss %.4f %s", epoch + 1, cfg.epochs, result.loss, _summary(result.metrics))
        self.first_loss = result.loss if self.first_loss is None else self.first_loss
        if math.isfinite(self.first_loss) and result.loss > 100 * max(self.first_loss, 1e-12):
            logger.warning(
                "epoch %d: the training loss rose from %.4g to %.4g: the run may be diverging (lower base_lr)",
                epoch + 1,
                self.first_loss,
                result.loss,
            )

    def validate(self, epoch: int) -> None:
        cfg = self.cfg
        if self.loaders.val is None:
            return
        val = validate(self.model, self.loaders.val, cfg, self.processes, training_metrics(cfg, self.processes.device))
        self.log.epoch("val", val.loss, val.metrics, epoch + 1)
        self.log.images(val.samples, self.palette, cfg.mean, cfg.std, epoch + 1)
        logger.info("epoch %d/%d val loss %.4f %s", epoch + 1, cfg.epochs, val.loss, _summary(val.metrics))
        self.best = {"epoch": epoch + 1, **val.metrics} if _better(val.metrics, self.best) else self.best

    def log_masks(self, epoch: int) -> None:
        """The masks this epoch trained with: checked alike on every process, logged on the main one."""
        processes = self.processes
        if processes.distributed and self.pruner.adds_masks:
            if not masks_agree(self.model):
                raise TrainingError(f"epoch {epoch + 1}: the masks differ between processes")
            logger.info("epoch %d: masks agree across %d processes", epoch + 1, processes.world_size)
        if self.log.writer is None:
            return
        logs = self.pruner.collect_logs(self.log.writer, self.model, epoch + 1)
        self.log.mask_logits(self.model, epoch + 1)
        if logs:
            kept, total = logs["acosp/kept_channels"], logs["acosp/total_channels"]
            logger.info("epoch %d: %d of %d channels kept", epoch + 1, kept, total)

    def state(self, epoch: int, iteration: int = 0) -> dict:
        saved = checkpoint.training_checkpoint(
            self.cfg, self.model, self.optimizer, self.scaler, self.pruner, epoch, self.best, iteration > 0
        )
        return {**saved, "iteration": iteration, "seed": self.seed}

    def save(self, epoch: int) -> None:
        """last.pth every epoch; train_epoch_N.pth every save_freq epochs; final.pth after the last."""
        if not self.processes.is_main:
            return
        saved, last_epoch = self.state(epoch), epoch == self.cfg.epochs
        if epoch % self.cfg.save_freq == 0 or last_epoch:
            checkpoint.save_checkpoint(saved, self.model_dir / f"train_epoch_{epoch}.pth")
            prune_epoch_checkpoints(self.model_dir, self.cfg.keep_checkpoints)
        if last_epoch:  # before last.pth: a run whose last.pth is finished always has its final.pth
            checkpoint.save_checkpoint(saved, self.model_dir / "final.pth")
        checkpoint.save_checkpoint(saved, self.model_dir / "last.pth")


def _summary(metrics: dict) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))


def _better(metrics: dict, best: dict) -> bool:
    key = "mIoU" if "mIoU" in metrics else "accuracy"
    return key in metrics and metrics[key] > best.get(key, float("-inf"))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (TrainingError, ValueError, FileNotFoundError, OverwriteError, ExperimentBusy) as error:
        logging.getLogger("train").error("%s", error)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
