"""Recording what a network computes on one example input: its layers and functions and the tensors between them.

torch.fx cannot follow Python control flow on shapes (PSPNet checks its input size, and returns
different things in train and eval mode), so the network simply runs on the example input while a
``TorchFunctionMode`` and module hooks note every torch function and every layer call with the
tensors it consumed and produced. The record holds for that input's shape and the path the
forward pass took.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

_TAG = "_acosp_traced_value"


@dataclasses.dataclass(eq=False)
class Value:
    """One tensor the forward pass computed (an in-place op makes a new Value of the same tensor)."""

    index: int
    shape: tuple[int, ...]
    producer: Node | None = None
    # Where the channels are: dimension 1, unless a permute moved them (a channels-last block) or a
    # linear layer computed them as the last dimension of a larger tensor. Set by ``ChannelFlow``.
    channel_dim: int = 1

    @property
    def channels(self) -> int | None:
        """The size of the channel (or feature) dimension; None for tensors of fewer than two dims."""
        return self.shape[self.channel_dim] if len(self.shape) >= 2 else None


@dataclasses.dataclass(frozen=True)
class Ref:
    """Stands for a recorded tensor inside a node's arguments."""

    value: Value


@dataclasses.dataclass(eq=False)
class Snapshot:
    """Per channel of a tensor: its value at the first position of the first sample, and max - min over all.

    ``last`` holds the same for the last dimension (the features a linear layer computes and reads in a
    tensor of more than two dimensions), None for two-dimensional tensors.
    """

    first: torch.Tensor
    spread: torch.Tensor
    last: Snapshot | None = None

    def along(self, dim: int) -> Snapshot:
        """The snapshot of the channels in dimension ``dim`` (1, or the last)."""
        if dim == 1:
            return self
        if self.last is None:
            raise RuntimeError(f"internal error: no snapshot along dimension {dim}")
        return self.last


@dataclasses.dataclass(eq=False)
class Node:
    """One call: a layer (``kind == 'module'``) or a torch function (``kind == 'function'``)."""

    index: int
    kind: str
    target: Any
    name: str
    scope: str
    args: tuple
    kwargs: dict
    inputs: list[Value]
    outputs: list[Value]
    snapshots: dict[int, Snapshot]

    def argument(self, position: int, keyword: str, default: Any = None) -> Any:
        """An argument by position or keyword, with recorded tensors as ``Ref``."""
        if position < len(self.args):
            return self.args[position]
        return self.kwargs.get(keyword, default)

    def where(self) -> str:
        return f"'{self.name}' (called in {self.scope})"


@dataclasses.dataclass(eq=False)
class Graph:
    """The record of one forward pass."""

    nodes: list[Node]
    inputs: list[Value]
    outputs: list[Value]
    output: Any
    called_modules: set[int]
    used_tensors: set[int]

    def module_calls(self) -> dict[int, list[Node]]:
        """``{id(layer): [its calls in order]}`` for the layers recorded as one step."""
        calls: dict[int, list[Node]] = {}
        for node in self.nodes:
            if node.kind == "module":
                calls.setdefault(id(node.target), []).append(node)
        return calls


def leaves(structure: Any) -> Iterator[Any]:
    """Everything in nested tuples, lists and dicts that is none of them."""
    if isinstance(structure, (tuple, list)):
        for item in structure:
            yield from leaves(item)
    elif isinstance(structure, dict):
        for item in structure.values():
            yield from leaves(item)
    else:
        yield structure


def tensors_in(structure: Any) -> Iterator[torch.Tensor]:
    """Every tensor in nested tuples, lists and dicts."""
    return (item for item in leaves(structure) if isinstance(item, torch.Tensor))


def random_probe(shape: tuple[int, ...], like: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A random input to find out what a layer computes, on ``like``'s device and in its dtype.

    Drawn from a generator of its own, so that looking at a network (``configure_model`` does) leaves
    the global random stream, and with it the masks' initial logits, as it was.
    """
    generator = torch.Generator(device=like.device).manual_seed(seed)
    return torch.randn(shape, generator=generator, device=like.device).to(like.dtype)


def snapshot(tensor: torch.Tensor, along_last: bool = False) -> Snapshot | None:
    if tensor.dim() < 2 or tensor.numel() == 0 or not tensor.is_floating_point():
        return None
    shot = _snapshot_along(tensor, 1)
    if along_last and tensor.dim() > 2:
        shot.last = _snapshot_along(tensor, tensor.dim() - 1)
    return shot


def _snapshot_along(tensor: torch.Tensor, dim: int) -> Snapshot:
    flat = tensor.detach().movedim(dim, 0).reshape(tensor.shape[dim], -1)
    return Snapshot(first=flat[:, 0].double().cpu(), spread=(flat.amax(1) - flat.amin(1)).double().cpu())


class _Recorder(TorchFunctionMode):
    """Notes torch function calls outside the layers recorded as one step."""

    def __init__(self, is_step: Callable[[nn.Module], bool], names: dict[int, str], snapshot_functions: set[str]):
        super().__init__()
        self.is_step = is_step
        self.names = names
        self.snapshot_functions = snapshot_functions
        self.nodes: list[Node] = []
        # Each recorded tensor carries its Value as an attribute (so that the record does not keep every
        # activation alive, and a new tensor at a freed address is not mistaken for an old one).
        self.tagged: list[weakref.ref] = []
        self.values = 0
        self.paused = 0
        self.stack: list[tuple[nn.Module, bool, Any]] = []  # (module, recorded as one step, pending call)
        self.inside_step = 0
        self.called_modules: set[int] = set()
        self.used_tensors: set[int] = set()

    # --- values -------------------------------------------------------------------------------------
    def new_value(self, tensor: torch.Tensor, producer: Node | None) -> Value:
        value = Value(self.values, tuple(tensor.shape), producer)
        self.values += 1
        if getattr(tensor, _TAG, None) is None:
            self.tagged.append(weakref.ref(tensor))
        setattr(tensor, _TAG, (self, value))
        return value

    def value_of(self, tensor: torch.Tensor) -> Value | None:
        tag = getattr(tensor, _TAG, None)
        return tag[1] if tag is not None and tag[0] is self else None

    def untag(self) -> None:
        for reference in self.tagged:
            tensor = reference()
            if tensor is not None and hasattr(tensor, _TAG):
                delattr(tensor, _TAG)

    def tracked(self, structure: Any) -> list[tuple[torch.Tensor, Value]]:
        found = []
        for tensor in tensors_in(structure):
            value = self.value_of(tensor)
            if value is not None:
                found.append((tensor, value))
            else:
                self.used_tensors.add(id(tensor))
        return found

    def replace_refs(self, structure: Any) -> Any:
        if isinstance(structure, torch.Tensor):
            value = self.value_of(structure)
            return structure if value is None else Ref(value)
        if isinstance(structure, (tuple, list)):
            return type(structure)(self.replace_refs(item) for item in structure)
        if isinstance(structure, dict):
            return {key: self.replace_refs(item) for key, item in structure.items()}
        return structure

    def scope(self) -> str:
        for module, _, _ in reversed(self.stack):
            return self.names.get(id(module), type(module).__name__) or f"the network ({type(module).__name__})"
        return "the network"

    def record(self, kind, target, name, args, kwargs, inputs, snapshots, result) -> None:
        node = Node(
            index=len(self.nodes),
            kind=kind,
            target=target,
            name=name,
            scope=self.scope(),
            args=self.replace_refs(args),
            kwargs=self.replace_refs(kwargs),
            inputs=[value for _, value in inputs],
            outputs=[],
            snapshots=snapshots,
        )
        # Refs must point at the inputs before outputs (maybe the same tensors, in place) replace them.
        node.outputs = [self.new_value(tensor, node) for tensor in tensors_in(result)]
        self.nodes.append(node)

    def snapshots_of(self, inputs, along_last: bool = False) -> dict[int, Snapshot]:
        self.paused += 1
        try:
            shots = {}
            for tensor, value in inputs:
                shot = snapshot(tensor, along_last)
                if shot is not None:
                    shots[value.index] = shot
            return shots
        finally:
            self.paused -= 1

    # --- functions ----------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.paused or self.inside_step:
            return func(*args, **kwargs)
        inputs = self.tracked((args, kwargs))
        name = getattr(func, "__name__", repr(func))
        shots = self.snapshots_of(inputs) if inputs and name.strip("_") in self.snapshot_functions else {}
        result = func(*args, **kwargs)
        if not inputs:
            return result
        if name == "__setitem__":  # in place, returns None
            result = args[0]
        if not any(True for _ in tensors_in(result)):
            return result  # sizes, booleans, items: nothing flows on
        self.record("function", func, name, args, kwargs, inputs, shots, result)
        return result

    # --- modules ------------------------------------------------------------------------------------
    def pre_hook(self, module: nn.Module, args) -> None:
        if self.paused:
            return
        self.called_modules.add(id(module))
        step = not self.inside_step and self.is_step(module)
        pending = None
        if step:
            inputs = self.tracked(args)
            pending = (args, inputs, self.snapshots_of(inputs, along_last=_reads_features(module)))
            self.inside_step += 1
        self.stack.append((module, step, pending))

    def post_hook(self, module: nn.Module, args, output) -> None:
        if self.paused:
            return
        recorded, step, pending = self.stack.pop()
        if recorded is not module:
            raise RuntimeError(f"module calls did not nest while tracing ({type(module).__name__})")
        if step:
            self.inside_step -= 1
            args, inputs, shots = pending
            if inputs:
                name = self.names.get(id(module), type(module).__name__)
                self.record("module", module, name, args, {}, inputs, shots, output)


def _reads_features(module: nn.Module) -> bool:
    """A linear layer (masked or not): it reads the last dimension of its input."""
    return isinstance(getattr(module, "conv", module), nn.Linear)


def trace(
    model: nn.Module,
    example_args: tuple,
    is_step: Callable[[nn.Module], bool],
    snapshot_functions: set[str] = frozenset(),
) -> Graph:
    """Run ``model(*example_args)`` without gradients and record what it computes.

    Layers for which ``is_step`` is true are recorded as one call each (with per-channel
    snapshots of their inputs); everything else is recorded function by function.
    """
    names = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), name)
    recorder = _Recorder(is_step, names, set(snapshot_functions))
    inputs = [recorder.new_value(tensor, None) for tensor in tensors_in(example_args)]
    handles = [
        nn.modules.module.register_module_forward_pre_hook(recorder.pre_hook),
        nn.modules.module.register_module_forward_hook(recorder.post_hook),
    ]
    try:
        with torch.no_grad(), recorder:
            output = model(*example_args)
        outputs = [value for value in map(recorder.value_of, tensors_in(output)) if value is not None]
    finally:
        for handle in handles:
            handle.remove()
        recorder.untag()
    return Graph(
        nodes=recorder.nodes,
        inputs=inputs,
        outputs=outputs,
        output=output,
        called_modules=recorder.called_modules,
        used_tensors=recorder.used_tensors,
    )
