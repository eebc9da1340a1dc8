"""FSDP (fully_shard, FSDP2) for models whose weights, gradients and optimizer states do not fit one GPU.

Each decoder layer is its own shard unit, then the root. Parameters become DTensors; the helpers
here turn them into plain full state dicts (on every process: they are collectives) for
checkpoints and the final save, and back.

The torch.distributed submodules are imported where used: their public paths moved between the
torch versions we support (`fully_shard` is public from 2.6, `DTensor` from 2.5), and only FSDP
runs reach them.
"""

from __future__ import annotations

from typing import Any

import torch

from tuneloop.train.model_setup import decoder_layers


def shard_model(model: torch.nn.Module, compute_dtype: torch.dtype | None, device: str) -> torch.nn.Module:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # bf16 compute with fp32 gradient reduction on a GPU; plain fp32 on a CPU (gloo, tests)
    if compute_dtype is not None and device.startswith("cuda"):
        policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    else:
        policy = MixedPrecisionPolicy()
    layers = decoder_layers(model)
    if not layers:
        raise ValueError("no decoder layers found to shard (expected modules named *DecoderLayer)")
    for layer in layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_state(model: torch.nn.Module, trainable_only: bool) -> dict[str, torch.Tensor]:
    """Full (unsharded) CPU state dict; every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    names = {n for n, p in model.named_parameters() if p.requires_grad} if trainable_only else set(state)
    # own copies: with gloo on a CPU the gathered tensors can alias buffers FSDP reuses
    return {k: v.detach().clone() for k, v in state.items() if k in names}


def load_full_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))


def optimizer_full_state(model: Any, optimizer: Any) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def load_optimizer_full_state(model: Any, optimizer: Any, state: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
