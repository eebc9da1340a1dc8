"""Packing without padding: forward+backward time and peak memory of three ways to batch SFT data.

The same documents (lengths drawn uniformly in 64..1024, about 16k tokens) go through a few
Llama-3-8B-shaped decoder layers (bf16, random weights, every layer weight trained) as:

- dense: packed into 4096-token rows, dense block-diagonal (B, 1, T, T) mask, SDPA (today's packing);
- padding_free: one flattened row, `attention.use_padding_free`, varlen kwargs passed (no sync);
- padding_free_positions: the same, position_ids only (documents found inside the attention);
- padded: no packing, every document right-padded to the longest one, SDPA with the padding mask.

The loss is the sum over real tokens of the last hidden state's mean square, so every mode must
give the same number (checked, bf16 tolerance); it needs no LM head, which would dwarf attention.

    PYTHONPATH=src python3 benchmarks/train_packing.py $OUT/train_packing.json [--tiny]
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from tuneloop.models import varlen
from tuneloop.train import attention
from tuneloop.train.batching import collate
from tuneloop.train.dataset import Example, pack

LLAMA3_8B_LAYERS = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=4, num_attention_heads=32,
                        num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192,
                        rope_theta=500000.0)  # fmt: skip
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, max_position_embeddings=512)  # fmt: skip
FULL_MIX = dict(low=64, high=1024, total=16384, row=4096, warmup=2, iters=6)
TINY_MIX = dict(low=8, high=64, total=512, row=128, warmup=1, iters=2)


def documents(low: int, high: int, total: int, vocab: int, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    docs, n = [], 0
    while n < total:
        length = rng.randint(low, high)
        ids = [rng.randrange(1, vocab) for _ in range(length)]
        docs.append(Example(ids, ids))
        n += length
    return docs


def batches(docs: list[Example], row: int) -> dict[str, dict[str, Any]]:
    """Each mode's model inputs, and the (B, T) bool of the positions that hold a real token."""
    dense = collate(pack(docs, row), pad_id=0)
    flat = collate(docs, pad_id=0, padding_free=True)
    padded = collate(docs, pad_id=0)
    rows = pack(docs, row)
    dense_real = torch.zeros(dense["input_ids"].shape, dtype=torch.bool)
    for b, e in enumerate(rows):
        dense_real[b, : len(e.input_ids)] = True
    no_labels = {k: v for k, v in flat.items() if k != "labels"}
    return {
        "dense": {"inputs": _drop(dense, "labels"), "real": dense_real},
        "padding_free": {"inputs": no_labels, "real": torch.ones_like(flat["input_ids"], dtype=torch.bool)},
        "padding_free_positions": {
            "inputs": {"input_ids": flat["input_ids"], "position_ids": flat["position_ids"]},
            "real": torch.ones_like(flat["input_ids"], dtype=torch.bool),
        },
        "padded": {"inputs": _drop(padded, "labels"), "real": padded["attention_mask"].bool()},
    }


def _drop(batch: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if k != key}


def to(batch: dict[str, Any], device: str) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def step(model: Any, inputs: dict[str, Any], real: torch.Tensor) -> float:
    hidden = model(**inputs, use_cache=False).last_hidden_state  # (B, T, H)
    loss = hidden.float().square().mean(-1)[real].sum()
    loss.backward()
    model.zero_grad(set_to_none=True)
    return float(loss.detach())


def measure(model: Any, mode: str, case: dict[str, Any], device: str, warmup: int, iters: int) -> dict:
    if mode.startswith("padding_free"):
        attention.use_padding_free(model)
    else:
        model.set_attn_implementation("sdpa")
    cuda = device == "cuda"
    inputs, real = to(case["inputs"], device), case["real"].to(device)
    for _ in range(warmup):
        loss = step(model, inputs, real)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        loss = step(model, inputs, real)  # float(): syncs
        times.append(time.perf_counter() - t)
    shape = tuple(inputs["input_ids"].shape)
    tokens, slots = int(real.sum()), shape[0] * shape[1]
    ms = 1000 * statistics.median(times)
    return {
        "batch_shape": list(shape), "real_tokens": tokens, "pad_fraction": round(1 - tokens / slots, 3),
        "ms_fwd_bwd": round(ms, 2), "real_tokens_per_s": round(tokens / ms * 1000),
        "peak_extra_gib": round((torch.cuda.max_memory_allocated() - base) / 2**30, 3) if cuda else None,
        "loss": loss,
    }  # fmt: skip


def main(out: Path, tiny: bool) -> dict:
    from transformers import LlamaConfig, LlamaModel

    device = "cuda" if torch.cuda.is_available() and not tiny else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    shape, mix = (TINY, TINY_MIX) if tiny else (LLAMA3_8B_LAYERS, FULL_MIX)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaModel(LlamaConfig(**shape, attn_implementation="sdpa")).to(dtype)
    model.embed_tokens.weight.requires_grad_(False)  # its dense grad would only add noise
    docs = documents(mix["low"], mix["high"], mix["total"], shape["vocab_size"])
    results = {
        mode: measure(model, mode, case, device, mix["warmup"], mix["iters"])
        for mode, case in batches(docs, mix["row"]).items()
    }
    ref = results["dense"]["loss"]
    report = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__, "dtype": str(dtype).removeprefix("torch."),
        "varlen_attn": sorted(varlen.VARLEN_PARAMS) if varlen.VARLEN_PARAMS else None,
        "model": {k: shape[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                        "num_key_value_heads")},
        "documents": {"count": len(docs), "tokens": sum(len(d.input_ids) for d in docs),
                      "lengths": [mix["low"], mix["high"]], "row": mix["row"]},
        "modes": results,
        "losses_agree": all(abs(r["loss"] - ref) <= 2e-2 * abs(ref) for r in results.values()),
    }  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 1:
        sys.exit(__doc__)
    print(json.dumps(main(Path(args[0]), "--tiny" in sys.argv), indent=2))
