"""LoRA training speed on one GPU: tuneloop's trainer vs plain transformers + PEFT, same run, same card.

A Llama-3-8B-shaped model with random bf16 weights (values do not change speed), LoRA r=16 on all
linear layers, gradient checkpointing, micro-batch 4 x 2048 tokens. The baseline is
`hf_peft_lora_step` from ../shared/bench/hf_baseline_gpu.py (copied into a carried folder).

    PYTHONPATH=src:.devcarry python3 benchmarks/train_gpu.py $OUT [--tiny]

`--tiny` runs the same code on a small shape (CPU or GPU) to check the script before a GPU lease.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tuneloop.train.config import BatchSettings, DataSettings, TrackingSettings, TrainConfig
from tuneloop.train.dataset import Example
from tuneloop.train.distributed import Dist
from tuneloop.train.model_setup import Precision, _add_lora
from tuneloop.train.trainer import Trainer

LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192,
                 rope_theta=500000.0, tie_word_embeddings=False)  # fmt: skip
TINY = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=1024, max_position_embeddings=512, tie_word_embeddings=False)  # fmt: skip


class NullTracker:
    run_id = None

    def log(self, metrics, step):
        pass


def build(shape: dict, device: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**shape))
    torch.set_default_dtype(torch.float32)
    return model


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def tuneloop_lora(shape: dict, device: str, batch: int, seq: int, steps: int) -> dict:
    cfg = TrainConfig(
        model="bench", data=DataSettings(path="-", max_length=seq), method="lora", gradient_checkpointing=True,
        batch=BatchSettings(micro_batch=batch, global_batch=batch), max_steps=steps + 2, precision="bf16",
        tracking=TrackingSettings(mlflow=False, tensorboard=False, wandb=False), log_every=10_000,
    )  # fmt: skip
    model = build(shape, device)
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = _add_lora(model, cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"dropout": 0.0})}))
    vocab = shape["vocab_size"]
    g = torch.Generator().manual_seed(0)
    examples = [
        Example(ids, list(ids))
        for ids in torch.randint(100, vocab - 1, (batch * (steps + 2), seq), generator=g).tolist()
    ]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, model, examples, [], pad_id=0, device=device, precision=Precision("bf16", torch.bfloat16),
                          dist=Dist(), run_dir=Path(tmp), tracker=NullTracker())  # fmt: skip
        for s in range(2):  # warm-up: allocator, kernels, autotuning
            trainer._optimizer_step(s)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync(device)
        t = time.perf_counter()
        for s in range(2, steps + 2):
            trainer._optimizer_step(s)
        sync(device)
        dt = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    del trainer, model
    return {"lora_r": 16, "batch": batch, "seq": seq, "gradient_checkpointing": True, "steps": steps,
            "tokens_per_s": round(batch * seq * steps / dt, 1), "peak_gib": peak and round(peak, 1)}  # fmt: skip


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    tiny = "--tiny" in sys.argv
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape, batch, seq, steps = (TINY, 2, 128, 2) if tiny else (LLAMA3_8B, 4, 2048, 4)
    res: dict = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                 "versions": {m.__name__: m.__version__ for m in (torch, __import__("transformers"), __import__("peft"))}}  # fmt: skip
    if device == "cuda" and not tiny:
        import hf_baseline_gpu as hf  # the shared baseline, carried in .devcarry

        model = hf.build_model()
        res["hf_peft_lora"] = hf.hf_peft_lora_step(model, batch=batch, seq=seq, steps=steps)
        print(json.dumps(res["hf_peft_lora"]), flush=True)
        del model
        torch.cuda.empty_cache()
    res["tuneloop_lora"] = tuneloop_lora(shape, device, batch, seq, steps)
    print(json.dumps(res["tuneloop_lora"]), flush=True)
    if "hf_peft_lora" in res:
        res["ratio_tokens_per_s"] = round(
            res["tuneloop_lora"]["tokens_per_s"] / res["hf_peft_lora"]["tokens_per_s"], 3
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_gpu.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
