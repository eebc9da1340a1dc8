"""GPU end-to-end checks of the training recipe (what CI cannot run: it has no GPU).

1. LoRA, QLoRA and full fine-tuning of a small Llama for a few steps on CUDA (bf16 autocast),
   each loss curve falling; QLoRA's base really 4-bit.
2. Kill-free exact resume on CUDA: 6 steps straight vs 3 + resume 3 (bitwise-close losses).
3. A REAL CUDA out-of-memory: a Llama-3.2-1B-shaped model at micro-batch 64 x 4096 tokens without
   checkpointing cannot fit 80 GB; the trainer must halve the micro-batch until it fits and finish
   with the same effective batch.

    PYTHONPATH=src python3 benchmarks/train_gpu_check.py $OUT
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import tuneloop.train.plots as plots
from tuneloop.config import load_config
from tuneloop.models.tiny import build_tiny_model
from tuneloop.train.config import TrainConfig
from tuneloop.train.recipe import run

plots.loss_plot = lambda *a, **k: None  # matplotlib is not on the GPU image; plots are tested on the CPU


def sft_rows(n: int, words: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    vocab = ["alpha", "beta", "gamma", "delta", "router", "mesh", "port", "64", "amber", "warranty"]
    rows = []
    for i in range(n):
        idx = torch.randint(0, len(vocab), (words,), generator=g).tolist()
        text = " ".join(vocab[j] for j in idx)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"Q{i}: {text[:40]}"},
                    {"role": "assistant", "content": text},
                ]
            }
        )
    return rows


def dataset(folder: Path, n: int, words: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft_rows(n, words)))
    return folder


def train(model: Path, data: Path, out: Path, **over) -> dict:
    values = {"model": str(model), "data.path": str(data), "output_dir": str(out), "tracking.mlflow": "false",
              "tracking.tensorboard": "false", "eval.final": "false", "lora.dropout": 0.0, **over}  # fmt: skip
    cfg = load_config(TrainConfig, None, [f"{k}={v}" for k, v in values.items()])
    t = time.perf_counter()
    result = run(cfg)
    m = result.metrics
    return {"losses": [round(x, 4) for _, x in m["train_loss"]], "precision": m["precision"], "device": m["device"],
            "oom_backoffs": m["oom_backoffs"], "seconds": round(time.perf_counter() - t, 1),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}  # fmt: skip


class Killed(Exception):
    pass


def resume_check(model: Path, data: Path, tmp: Path) -> dict:
    """6 steps straight vs a run killed right after its step-3 checkpoint and resumed (resume=auto)."""
    from tuneloop.train.trainer import Trainer

    over = {"max_steps": 6, "batch.global_batch": 16, "batch.micro_batch": 8, "lora.dropout": 0.1}
    straight = train(model, data, tmp / "straight", **over)
    original = Trainer.save_checkpoint

    def save_then_die(self):
        path = original(self)
        if self.state.step == 3:
            raise Killed
        return path

    Trainer.save_checkpoint = save_then_die
    try:
        train(model, data, tmp / "resumed", **over, **{"checkpoint.every": 3})
    except Killed:
        pass
    finally:
        Trainer.save_checkpoint = original
    resumed = train(model, data, tmp / "resumed", **over, **{"checkpoint.every": 3})
    return {
        "straight": straight["losses"],
        "resumed": resumed["losses"],
        "equal": straight["losses"] == resumed["losses"],
    }


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    res: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small = build_tiny_model(tmp / "small", hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                                 num_attention_heads=8, num_key_value_heads=4, dtype="bfloat16")  # fmt: skip
        data = dataset(tmp / "data", 64, 40)
        common = {"max_steps": 8, "batch.global_batch": 16, "batch.micro_batch": 8, "optim.lr": 1e-3}
        for method in ("lora", "qlora", "full"):
            try:
                res[method] = train(small, data, tmp / f"run-{method}", method=method, **common)
            except Exception as e:  # report and go on: one failure must not hide the others
                res[method] = {"error": f"{type(e).__name__}: {e}"}
            print(method, json.dumps(res[method]), flush=True)
        res["resume"] = resume_check(small, data, tmp)
        print("resume", json.dumps(res["resume"]), flush=True)
        one_b = build_tiny_model(tmp / "llama-1b", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                 num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                                 dtype="bfloat16")  # fmt: skip
        big = dataset(tmp / "big", 64, 3000)  # > 4096 tokens a row with this tokenizer: truncated to 4096
        torch.cuda.reset_peak_memory_stats()
        res["real_oom"] = train(one_b, big, tmp / "oom", method="lora", max_steps=2, fit_check="false",
                                **{"batch.global_batch": 64, "batch.micro_batch": 64, "data.max_length": 4096})  # fmt: skip
        print("real_oom", json.dumps(res["real_oom"]), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_gpu_check.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
