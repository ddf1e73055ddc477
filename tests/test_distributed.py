"""DistributedDataParallel through the hard conversion, with two gloo processes on CPU."""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import SmallCNN, make_batches
from torch import nn

import acosp.inject
from acosp.inject import named_mask_layers
from acosp.pruner import SoftTopKPruner
from semseg.training.stop_signals import agreed_signal

WORLD_SIZE = 2


def _worker(rank, folder, wrap_first):
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD_SIZE)
    try:
        torch.manual_seed(0)
        network = SmallCNN()
        # min_remaining_elements=16 keeps all 16 channels of the first conv: its logits get no
        # useful gradient, which must not upset DDP's unused-parameter check.
        pruner = SoftTopKPruner(starting_epoch=0, ending_epoch=2, final_sparsity=0.75, min_remaining_elements=16)
        if wrap_first:
            model = pruner.configure_model(nn.parallel.DistributedDataParallel(network))
        else:
            pruner.configure_model(network)
            model = nn.parallel.DistributedDataParallel(network)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        batches = make_batches(seed=rank)
        for epoch in range(4):
            if epoch == pruner.ending_epoch:
                logits = {name: mask.weight.detach().clone() for name, mask in named_mask_layers(model)}
                torch.save(logits, f"{folder}/logits{rank}.pth")
                model = acosp.inject.soft_to_hard_k(model)
            for images, labels in batches:
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(images), labels).backward()
                optimizer.step()
            pruner.update_mask_layers(model, epoch)
        state = {key: value.clone() for key, value in model.module.state_dict().items()}
        torch.save(state, f"{folder}/rank{rank}.pth")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("wrap_first", [False, True], ids=["configure-then-wrap", "wrap-then-configure"])
def test_ddp_two_processes_through_hard_conversion(tmp_path, wrap_first):
    mp.spawn(_worker, args=(str(tmp_path), wrap_first), nprocs=WORLD_SIZE, join=True)
    # The logits learned during pruning are synchronised like every other parameter.
    logits = [torch.load(tmp_path / f"logits{rank}.pth", weights_only=True) for rank in range(WORLD_SIZE)]
    assert logits[0].keys() == {"features.0", "features.3", "up"}
    for name in logits[0]:
        assert torch.equal(logits[0][name], logits[1][name]), name
    states = [torch.load(tmp_path / f"rank{rank}.pth", weights_only=True) for rank in range(WORLD_SIZE)]
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        if "running_" in key or "num_batches_tracked" in key:
            continue  # BatchNorm statistics are per process; DDP broadcasts them at the next forward
        assert torch.equal(states[0][key], states[1][key]), key
    model = SmallCNN()
    SoftTopKPruner(final_sparsity=0.75, min_remaining_elements=16).configure_model(model)
    model = acosp.inject.prepare_for_state_dict(model, states[0])
    model.load_state_dict(states[0])
    kept = {name: int(mask.mask.sum()) for name, mask in named_mask_layers(model)}
    assert kept == {"features.0": 16, "features.3": 16, "up": 16}
    assert "features.0.1.weight" not in states[0]


def _stale_wrapper_worker(rank, folder):
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD_SIZE)
    try:
        network = SmallCNN()
        SoftTopKPruner(final_sparsity=0.5).configure_model(network)
        model = nn.parallel.DistributedDataParallel(network)
        acosp.inject.soft_to_hard_k(model)  # the returned wrapper is dropped
        try:
            model(torch.randn(2, 3, 8, 8))
        except RuntimeError as error:
            Path(folder, f"error{rank}.txt").write_text(str(error))
    finally:
        dist.destroy_process_group()


def test_stale_ddp_wrapper_says_what_to_do(tmp_path):
    mp.spawn(_stale_wrapper_worker, args=(str(tmp_path),), nprocs=WORLD_SIZE, join=True)
    for rank in range(WORLD_SIZE):
        message = (tmp_path / f"error{rank}.txt").read_text()
        assert "use the wrapper that call returned" in message and "soft_to_hard_k(model)" in message


def _signal_worker(rank, folder, received_per_rank):
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD_SIZE)
    try:
        agreed = agreed_signal(received_per_rank[rank], torch.device("cpu"))
        Path(folder, f"agreed{rank}.txt").write_text(str(agreed))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "received_per_rank, agreed",
    [
        ((None, "SIGTERM"), "SIGTERM"),
        (("SIGUSR1", None), "SIGUSR1"),
        (("SIGTERM", "SIGINT"), "SIGINT"),
        ((None, None), "None"),
    ],
)
def test_every_process_names_the_signal_that_reached_any_of_them(tmp_path, received_per_rank, agreed):
    # torchrun passes a SIGTERM to its workers one after another: the first process to check may not
    # have it yet, and must still log "SIGTERM" and exit 75 (or 130 for a Ctrl-C), not guess.
    mp.spawn(_signal_worker, args=(str(tmp_path), received_per_rank), nprocs=WORLD_SIZE, join=True)
    assert [(tmp_path / f"agreed{rank}.txt").read_text() for rank in range(WORLD_SIZE)] == [agreed] * WORLD_SIZE
