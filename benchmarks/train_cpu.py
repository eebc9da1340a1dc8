"""LoRA SFT speed on the CPU with the default model: tuneloop's trainer vs plain transformers + PEFT.

Same data (the Nimbus QA set, examples/acme-kb/qa/train.jsonl, tokenized with the model's chat
template), same LoRA (r=16, all linear layers, dropout 0), same micro-batch; each variant in a fresh
process, a warm-up step, then timed steps. Throughput counts every input token.

    python benchmarks/train_cpu.py [--steps 6] [--out benchmarks/train_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples/acme-kb/qa/train.jsonl"
BATCH = 8


def examples(tokenizer):
    from tuneloop.train.dataset import read_rows, tokenize

    return tokenize(read_rows(DATA, "sft"), tokenizer, "sft", 256, "truncate").examples


def variant(name: str, steps: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneloop.models.loading import load_tokenizer
    from tuneloop.models.resolve import resolve_model
    from tuneloop.train.batching import collate

    path = resolve_model("smollm2-135m-instruct", pull=True).path
    tok = load_tokenizer(path)
    exs = examples(tok)
    batches = [exs[i * BATCH : (i + 1) * BATCH] for i in range(steps + 1)]
    ntok = [sum(len(e.input_ids) for e in b) for b in batches]
    if name.startswith("hf"):
        bf16 = name == "hf_peft_bf16_autocast"
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if bf16 else torch.float32)
        model = get_peft_model(
            model,
            LoraConfig(
                r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
            ),
        )
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step(b):
            batch = collate(b, tok.pad_token_id)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        from tuneloop.train.config import (
            BatchSettings,
            DataSettings,
            LoraSettings,
            TrackingSettings,
            TrainConfig,
        )
        from tuneloop.train.distributed import Dist
        from tuneloop.train.model_setup import load_for_training, pick_precision
        from tuneloop.train.trainer import Trainer

        class Null:
            run_id = None

            def log(self, *a):
                pass

        cfg = TrainConfig(data=DataSettings(path=str(DATA)), batch=BatchSettings(micro_batch=BATCH, global_batch=BATCH),
                          lora=LoraSettings(dropout=0.0), tracking=TrackingSettings(mlflow=False, tensorboard=False, wandb=False),
                          max_steps=steps + 1, log_every=10_000)  # fmt: skip
        precision = pick_precision("auto", "cpu")
        model = load_for_training(cfg, str(path), "cpu", precision)
        flat = [e for b in batches for e in b]
        trainer = Trainer(cfg, model, flat, [], pad_id=tok.pad_token_id, device="cpu", precision=precision,
                          dist=Dist(), run_dir=Path(tempfile.mkdtemp()), tracker=Null())  # fmt: skip
        # the step plan shuffles; time by the tokens the plan actually feeds
        ntok = [sum(len(flat[i].input_ids) for i in trainer.plan.batch(s)) for s in range(steps + 1)]
        it = iter(range(steps + 1))

        def step(b):
            trainer._optimizer_step(next(it))

    step(batches[0])  # warm-up
    t = time.perf_counter()
    for b in batches[1:]:
        step(b)
    dt = time.perf_counter() - t
    return {"variant": name, "steps": steps, "micro_batch": BATCH, "seconds": round(dt, 2),
            "tokens_per_s": round(sum(ntok[1:]) / dt, 1)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/train_cpu.json"))
    ap.add_argument("--variant")
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(variant(args.variant, args.steps)))
        return
    import torch

    results = []
    for name in ("hf_peft_fp32", "hf_peft_bf16_autocast", "tuneloop"):
        out = subprocess.run([sys.executable, __file__, "--variant", name, "--steps", str(args.steps)],
                             capture_output=True, text=True, check=True)  # fmt: skip
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    base = results[0]["tokens_per_s"]
    for r in results:
        r["ratio_vs_hf_fp32"] = round(r["tokens_per_s"] / base, 2)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "results": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
