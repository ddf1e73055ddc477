"""DistributedDataParallel through the hard conversion, with two gloo processes on CPU."""

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import SmallCNN, make_batches
from torch import nn

import acosp.inject
from acosp.inject import named_mask_layers
from acosp.pruner import SoftTopKPruner

WORLD_SIZE = 2


def _worker(rank, folder):
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD_SIZE)
    try:
        torch.manual_seed(0)
        network = SmallCNN()
        # min_remaining_elements=16 keeps all 16 channels of the first conv: its logits get no
        # useful gradient, which must not upset DDP's unused-parameter check.
        pruner = SoftTopKPruner(starting_epoch=0, ending_epoch=2, final_sparsity=0.75, min_remaining_elements=16)
        pruner.configure_model(network)
        model = nn.parallel.DistributedDataParallel(network)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        batches = make_batches(seed=rank)
        for epoch in range(4):
            if epoch == pruner.ending_epoch:
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


def test_ddp_two_processes_through_hard_conversion(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD_SIZE, join=True)
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
        assert "model = acosp.inject.soft_to_hard_k(model)" in (tmp_path / f"error{rank}.txt").read_text()
