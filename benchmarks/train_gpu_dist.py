"""Multi-GPU training through the CLI: `tuneloop train --nproc N`, DDP for LoRA and FSDP for full fine-tuning.

A Llama-3.2-1B-shaped model with random bf16 weights is saved as an HF folder (with the carried
SmolLM2 tokenizer; its ids fit the 128k vocabulary), and a continued-pretraining dataset of random
words is written whose documents are longer than 2048 tokens (truncated: every sequence is 2048
tokens, no padding). Each setting trains the same steps with the same global batch on 1 GPU and on
N GPUs; the report gives steady-state tokens/s (first two steps dropped: compilation), scaling
efficiency = tokens/s on N / (N x tokens/s on 1), and the largest relative difference of the
per-step losses.

    PYTHONPATH=src python3 benchmarks/train_gpu_dist.py $OUT [--gpus 2] [--tiny]

`--tiny`: a small model on the CPU (gloo), to check the script.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

ONE_B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
             num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, tie_word_embeddings=True)  # fmt: skip
TINY = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=49152, max_position_embeddings=512, tie_word_embeddings=True)  # fmt: skip
TOKENIZER = Path(".devcarry/smollm2-shape")


def make_model(folder: Path, shape: dict) -> None:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(LlamaConfig(**shape, bos_token_id=1, eos_token_id=2))
    torch.set_default_dtype(torch.float32)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(TOKENIZER).save_pretrained(folder)


def make_data(folder: Path, docs: int, words: int) -> None:
    rng = random.Random(0)
    vocab = [f"w{i}{chr(97 + i % 26)}" for i in range(5000)]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.jsonl", "w") as f:
        for _ in range(docs):
            f.write(json.dumps({"text": " ".join(rng.choice(vocab) for _ in range(words))}) + "\n")


def train(model: Path, data: Path, out: Path, nproc: int, extra: list[str], tiny: bool) -> dict:
    args = [f"model={model}", f"data.path={data}", f"output_dir={out}", "objective=pretrain", "eval.final=false",
            "tracking.mlflow=false", "tracking.tensorboard=false", "tracking.wandb=false", "resume=never",
            "data.overlong=truncate", *extra]  # fmt: skip
    if tiny:
        args += ["device=cpu", "compile=false"]
    cmd = [sys.executable, "-m", "tuneloop", "train", *args, "--nproc", str(nproc)]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    wall = time.perf_counter() - t
    if p.returncode:
        return {"error": (p.stderr or p.stdout)[-2000:], "nproc": nproc}
    m = json.loads((out / "metrics.json").read_text())
    steps = [s for _, s in m["step_seconds"]][2:]  # the first steps compile and warm the allocator
    tokens_per_step = (
        m["tokens_per_s"] * m["train_seconds"] / max(1, m["steps"])
    )  # every step holds the same tokens
    return {"nproc": nproc, "wall_s": round(wall, 1), "steps": m["steps"],
            "tokens_per_s": round(tokens_per_step / (sum(steps) / len(steps)), 1),
            "losses": [loss for _, loss in m["train_loss"]], "grad_norm": [g for _, g in m["grad_norm"]]}  # fmt: skip


def compare(one: dict, many: dict, n: int) -> dict:
    if "error" in one or "error" in many:
        return {}
    diff = max(abs(a - b) / abs(a) for a, b in zip(one["losses"], many["losses"], strict=True))
    return {"scaling_efficiency": round(many["tokens_per_s"] / (n * one["tokens_per_s"]), 3),
            "speedup": round(many["tokens_per_s"] / one["tokens_per_s"], 2), "max_rel_loss_diff": diff}  # fmt: skip


def main() -> None:
    args = sys.argv[1:]
    tiny = "--tiny" in args
    n = int(args[args.index("--gpus") + 1]) if "--gpus" in args else 2
    out = Path(args[0] if args and not args[0].startswith("--") else ".")
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "tl-dist"
    shape, seq, docs, words = (TINY, 128, 64, 150) if tiny else (ONE_B, 2048, 8 * 16 * 2, 2600)
    t = time.perf_counter()
    make_model(work / "model", shape)
    make_data(work / "data", docs, words)
    print(f"model and data in {time.perf_counter() - t:.0f} s", flush=True)
    common = [f"data.max_length={seq}", "batch.global_batch=16", "max_steps=8", "optim.lr=1e-4",
              "lora.dropout=0.0", "optim.warmup_steps=0"]  # fmt: skip
    cases = {
        "lora_ddp": ["method=lora", "batch.micro_batch=4", "strategy=ddp"],
        "full_fsdp": ["method=full", "batch.micro_batch=4", "strategy=fsdp"],
    }
    res: dict = {"gpus": n, "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                 "torch": torch.__version__, "shape": "llama-3.2-1b" if not tiny else "tiny", "seq": seq,
                 "global_batch": 16, "cases": {}}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    for name, extra in cases.items():
        runs = {}
        for nproc in (1, n):
            runs[nproc] = train(
                work / "model", work / "data", work / f"{name}-{nproc}", nproc, common + extra, tiny
            )
            r = runs[nproc]
            print(name, nproc, json.dumps({k: r.get(k) for k in ("tokens_per_s", "wall_s", "losses")})
                  if "error" not in r else "ERROR " + r["error"][-800:], flush=True)  # fmt: skip
        res["cases"][name] = {"one": runs[1], "many": runs[n], **compare(runs[1], runs[n], n)}
        print(name, json.dumps(compare(runs[1], runs[n], n)), flush=True)
        (out / "train_gpu_dist.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
