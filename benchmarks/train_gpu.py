"""Training speed and memory on one GPU: tuneloop's trainer against plain transformers + PEFT (+ bnb).

Llama-3-8B shape (LoRA, QLoRA) and Llama-3.2-1B shape (full fine-tuning), random bf16 weights
(values do not change speed), sequences of 2048 random tokens, LoRA r=16 on all linear layers,
dropout 0. Each setting runs in its own process (clean peak memory, one failure does not end the
run); the plain baselines run in the same invocation on the same card. The shared reference is
`hf_peft_lora_step` of ../shared/bench/hf_baseline_gpu.py, copied into the carried .devcarry/.

    PYTHONPATH=src:.devcarry:benchmarks python3 benchmarks/train_gpu.py $OUT [--group lora|other|all] [--tiny]

`--tiny` runs every setting that needs no CUDA on a small shape on the CPU, to check the script.
For each setting the JSON holds tokens/s, peak allocated / reserved memory, and `plan`'s estimate
for the same configuration (checkpointed layers included).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

LLAMA3_8B = dict(name="llama-3-8b-shape", hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
                 num_kv_heads=8, vocab_size=128256, max_position_embeddings=8192)  # fmt: skip
LLAMA32_1B = dict(name="llama-3.2-1b-shape", hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
                  num_kv_heads=8, vocab_size=128256, max_position_embeddings=8192, tie_word_embeddings=True)  # fmt: skip
TINY = dict(name="tiny", hidden_size=256, intermediate_size=512, num_layers=3, num_heads=4, num_kv_heads=2,
            vocab_size=1024, max_position_embeddings=512)  # fmt: skip
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
H100_BF16_DENSE = 989e12  # FLOP/s, the H100 SXM datasheet figure MFU is quoted against


def settings(group: str) -> list[dict]:
    """What to measure. `tokens` = sequences x 2048 per optimizer step, the same for every setting of a shape."""
    lora = [
        dict(name="hf_peft_shared_ckpt_mb4", kind="hf_shared"),
        dict(name="hf_peft_nockpt_mb1", kind="hf", method="lora", mb=1, ckpt=False),
        dict(name="tuneloop_mb1_nockpt", kind="tuneloop", method="lora", mb=1, ckpt=False),
        dict(name="tuneloop_mb2_auto36", kind="tuneloop", method="lora", mb=2, ckpt="auto", budget=36),
        # rows instead of one flattened row (equal lengths: the same work) - a fallback and a comparison
        dict(
            name="tuneloop_mb2_auto36_rows",
            kind="tuneloop",
            method="lora",
            mb=2,
            ckpt="auto",
            budget=36,
            pf=False,
        ),
        dict(
            name="tuneloop_mb1_nockpt_liger_rows",
            kind="tuneloop",
            method="lora",
            mb=1,
            ckpt=False,
            compile=False,
            liger=True,
            pf=False,
        ),
    ]
    other = [
        dict(name="hf_peft_bnb_qlora_ckpt_mb4", kind="hf", method="qlora", mb=4, ckpt=True),
        dict(name="tuneloop_qlora_ckpt_mb4", kind="tuneloop", method="qlora", mb=4, ckpt=True),
        dict(name="hf_full_1b_mb4", kind="hf", method="full", mb=4, ckpt=False, shape="1b"),
        dict(name="tuneloop_full_1b_mb4", kind="tuneloop", method="full", mb=4, ckpt=False, shape="1b"),
    ]  # fmt: skip
    return {"lora": lora, "other": other, "all": lora + other}[group]


# ---------------------------------------------------------------- one setting, in its own process


def shape_of(setting: dict, tiny: bool):
    from tuneloop.resources.shapes import ModelShape

    if tiny:
        return ModelShape(**TINY)
    return ModelShape(**(LLAMA32_1B if setting.get("shape") == "1b" else LLAMA3_8B))


def build(shape, method: str, device: str):
    from plan_memory import build_model  # the same in-process builder (and NF4 swap) as the plan benchmark

    model = build_model(shape, method, 16, device)
    if method == "full":
        model.float()  # full fine-tuning: fp32 master weights, bf16 autocast (both trainers)
    return model


def batches(vocab: int, n: int, mb: int, seq: int, device: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(100, vocab - 1, (mb, seq), generator=g).to(device) for _ in range(n)]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def memory(device: str) -> dict:
    if device != "cuda":
        return {}
    return {"peak_alloc_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2)}  # fmt: skip


def run_hf(setting: dict, tiny: bool, device: str, seq: int, seqs_per_step: int, steps: int) -> dict:
    """Plain transformers + PEFT (+ bnb): bf16 base, PEFT's fp32 adapters, no autocast, torch AdamW."""
    shape = shape_of(setting, tiny)
    model = build(shape, setting["method"], device)
    model.config.use_cache = False
    if setting["ckpt"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if setting["method"] != "full":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS,
                                                 task_type="CAUSAL_LM"))  # fmt: skip
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    mb = setting["mb"]
    data = batches(shape.vocab_size, seqs_per_step // mb, mb, seq, device)
    full = setting["method"] == "full"

    def step() -> float:
        total = 0.0
        for x in data:
            with torch.autocast(device, dtype=torch.bfloat16, enabled=full):
                loss = model(input_ids=x, labels=x).loss / len(data)
            loss.backward()
            total += loss.detach()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(total)

    losses = [step() for _ in range(2)]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t = time.perf_counter()
    losses += [step() for _ in range(steps)]
    sync(device)
    dt = time.perf_counter() - t
    return {"tokens_per_s": round(seqs_per_step * seq * steps / dt, 1), "losses": losses, **memory(device)}


def run_tuneloop(setting: dict, tiny: bool, device: str, seq: int, seqs_per_step: int, steps: int) -> dict:
    from tuneloop.resources.plan import fewest_checkpointed_layers, make_plan
    from tuneloop.train.config import BatchSettings, DataSettings, LoraSettings, TrackingSettings, TrainConfig
    from tuneloop.train.dataset import Example
    from tuneloop.train.distributed import Dist
    from tuneloop.train.model_setup import Precision, plan_request, prepare_for_training
    from tuneloop.train.trainer import Trainer

    shape = shape_of(setting, tiny)
    method, mb = setting["method"], setting["mb"]
    cfg = TrainConfig(
        model="bench", method=method,
        lora=LoraSettings(dropout=0.0), batch=BatchSettings(micro_batch=mb, global_batch=seqs_per_step),
        max_steps=steps + 2, precision="bf16", compile=setting.get("compile", True), liger=setting.get("liger", False),
        data=DataSettings(path="-", max_length=seq, padding_free=setting.get("pf", "auto")),
        gradient_checkpointing=setting["ckpt"], memory_budget_gib=setting.get("budget"),
        tracking=TrackingSettings(mlflow=False, tensorboard=False, wandb=False), log_every=10_000,
    )  # fmt: skip
    precision = Precision("bf16", torch.bfloat16)
    budget = int(setting["budget"] * 2**30) if setting.get("budget") else None
    if budget is None and device == "cuda":
        budget = torch.cuda.get_device_properties(0).total_memory
    if setting["ckpt"] == "auto":  # what `checkpointing_layers` decides for a model folder, for this shape
        k = fewest_checkpointed_layers(shape, plan_request(cfg, shape, precision, 1, 0), budget or 2**50)
        k = shape.num_layers if k is None else k
    else:
        k = shape.num_layers if setting["ckpt"] else 0
    plan = make_plan(
        shape, plan_request(cfg, shape, precision, 1, k).model_copy(update={"gpu_memory": budget})
    )
    model = prepare_for_training(build(shape, method, device), cfg, device, precision, k)
    model.train()
    g = torch.Generator().manual_seed(0)
    examples = [Example(ids, list(ids))
                for ids in torch.randint(100, shape.vocab_size - 1, (seqs_per_step * (steps + 2), seq), generator=g).tolist()]  # fmt: skip

    class NullTracker:
        run_id = None

        def log(self, metrics, step):
            pass

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, model, examples, [], pad_id=0, device=device, precision=precision, dist=Dist(),
                          run_dir=Path(tmp), tracker=NullTracker())  # fmt: skip
        t = time.perf_counter()
        losses = [trainer._optimizer_step(s)[0] for s in range(2)]  # warm-up: compile, autotune, allocator
        warm = time.perf_counter() - t
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync(device)
        t = time.perf_counter()
        losses += [trainer._optimizer_step(s)[0] for s in range(2, steps + 2)]
        sync(device)
        dt = time.perf_counter() - t
    tps = seqs_per_step * seq * steps / dt
    out = {"tokens_per_s": round(tps, 1), "losses": losses, "warmup_s": round(warm, 1), "checkpointed_layers": k,
           "plan_peak_alloc_gib": round(plan.peak_allocated / 2**30, 2), "plan_total_gib": round(plan.total / 2**30, 2),
           **memory(device)}  # fmt: skip
    if (
        method == "full"
    ):  # model FLOPs: 6 N per token for the matmuls + causal attention (fwd 2 T d per layer, x3)
        flops = 6 * shape.num_params + 6 * shape.num_layers * seq * shape.num_heads * shape.hd
        out["mfu"] = round(tps * flops / H100_BF16_DENSE, 3)
        out["flops_per_token"] = flops
    return out


def worker(setting: dict, tiny: bool) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    seq, seqs_per_step, steps = (128, 4, 2) if tiny else (2048, 8, 4)
    started = time.perf_counter()
    if setting["kind"] == "hf_shared":
        import hf_baseline_gpu as hf

        res = hf.hf_peft_lora_step(hf.build_model(), batch=4, seq=seq, steps=4)
        res["peak_alloc_gib"] = res.pop("peak_gib")
    elif setting["kind"] == "hf":
        res = run_hf(setting, tiny, device, seq, seqs_per_step, steps)
    else:
        res = run_tuneloop(setting, tiny, device, seq, seqs_per_step, steps)
    res["wall_s"] = round(time.perf_counter() - started, 1)
    return res


def run_one(setting: dict, tiny: bool, timeout: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps(setting)] + (["--tiny"] if tiny else [])
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**setting, "error": f"timed out after {timeout} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode or not lines:
        return {**setting, "error": (p.stderr or p.stdout)[-1500:]}
    return {**setting, **json.loads(lines[-1][7:])}


def environment() -> dict:
    import importlib

    env = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    for name in ("torch", "transformers", "peft", "bitsandbytes", "liger_kernel", "triton"):
        try:
            env[name] = importlib.import_module(name).__version__
        except Exception:
            env[name] = None
    return env


def main() -> None:
    args = sys.argv[1:]
    tiny = "--tiny" in args
    if "--worker" in args:
        res = worker(json.loads(args[args.index("--worker") + 1]), tiny)
        print("RESULT " + json.dumps(res), flush=True)
        return
    out = Path(args[0] if args and not args[0].startswith("--") else ".")
    group = args[args.index("--group") + 1] if "--group" in args else "all"
    todo = settings(group)
    if "--only" in args:  # one setting by name, e.g. to re-measure after a change
        todo = [s for s in todo if s["name"] == args[args.index("--only") + 1]]
    if tiny:  # the CPU cannot run bitsandbytes or Liger
        todo = [
            s for s in todo if s.get("method") != "qlora" and not s.get("liger") and s["kind"] != "hf_shared"
        ]
    res = {"environment": environment(), "results": []}
    out.mkdir(parents=True, exist_ok=True)
    for s in todo:
        r = run_one(s, tiny, timeout=120 if tiny else 300)
        res["results"].append(r)
        brief = {k: r.get(k) for k in ("tokens_per_s", "peak_alloc_gib", "plan_peak_alloc_gib", "checkpointed_layers",
                                       "mfu", "warmup_s", "wall_s")}  # fmt: skip
        print(s["name"], json.dumps(brief) if "error" not in r else "ERROR " + r["error"][-600:], flush=True)
        (out / f"train_gpu_{group}.json").write_text(json.dumps(res, indent=1))
    base = next(
        (r for r in res["results"] if r["name"] == "hf_peft_shared_ckpt_mb4" and "tokens_per_s" in r), None
    )
    if base:
        for r in res["results"]:
            if "tokens_per_s" in r and r.get("shape") != "1b" and r.get("method") != "qlora":
                r["ratio_vs_shared_baseline"] = round(r["tokens_per_s"] / base["tokens_per_s"], 2)
    (out / f"train_gpu_{group}.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
