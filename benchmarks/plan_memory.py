"""Measure real training-step memory and compare it with `tuneloop plan`'s estimate.

    PYTHONPATH=src python benchmarks/plan_memory.py --cpu OUTDIR          # SmolLM2-135M shape, CPU
    PYTHONPATH=src python benchmarks/plan_memory.py --gpu OUTDIR          # Llama-3-8B / 3.2-1B shapes, CUDA
    PYTHONPATH=src python benchmarks/plan_memory.py --gpu OUTDIR --tiny   # the GPU list on tiny shapes (smoke)

Each setting runs in a fresh subprocess (clean allocator and peak counters): random weights in bf16,
three optimizer steps (AdamW, foreach), peak taken over the steps. On CUDA the peak is
`max_memory_allocated` / `max_memory_reserved`; on the CPU a dispatch-mode tracker sums the bytes
of live tensor storages (the analogue of `max_memory_allocated`), with peak RSS growth beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from tuneloop.resources.plan import GiB, PlanRequest, make_plan
from tuneloop.resources.shapes import KNOWN_SHAPES, ModelShape

TINY = ModelShape("tiny", 64, 160, 2, 4, 2, 512, 4096)
MiB = 1024**2


class LiveTensorTracker(TorchDispatchMode):
    """Peak bytes of live tensor storages created under the mode, plus a starting baseline."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        # parameters and buffers exist before the mode starts; views of them allocate nothing
        self.live = {
            t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
            for t in (*model.parameters(), *model.buffers())
        }
        self.current = self.peak = sum(self.live.values())

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                st = t.untyped_storage()
                key = st.data_ptr()
                if key and key not in self.live:
                    self.live[key] = st.nbytes()
                    self.current += st.nbytes()
                    weakref.finalize(st, self._free, key)
        self.peak = max(self.peak, self.current)
        return out


# ---------------------------------------------------------------- one setting (in a subprocess)


def build_model(shape: ModelShape, method: str, rank: int, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        head_dim=shape.hd,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=shape.tie_word_embeddings,
        use_cache=False,
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # build in bf16 directly: no fp32 copy in the cache
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    if method == "qlora":
        _quantize_nf4(model)
    return model


def _quantize_nf4(model) -> None:
    """Swap each decoder linear for a bitsandbytes NF4 Linear4bit (double quant), as from_pretrained does."""
    import bitsandbytes as bnb

    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, lin in list(parent.named_children()):
                if not isinstance(lin, torch.nn.Linear):
                    continue
                q = bnb.nn.Linear4bit(
                    lin.in_features,
                    lin.out_features,
                    bias=False,
                    compute_dtype=torch.bfloat16,
                    compress_statistics=True,
                    quant_type="nf4",
                    device="meta",
                )
                q.weight = bnb.nn.Params4bit(
                    lin.weight.data, requires_grad=False, quant_type="nf4", compress_statistics=True
                ).to("cuda")
                setattr(parent, name, q)
    model.is_loaded_in_4bit = True
    torch.cuda.empty_cache()


def prepare(model, method: str, rank: int, gc: bool):
    if gc:
        model.gradient_checkpointing_enable()
    if method == "full":
        return model
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=targets)
    )


def train_steps(model, shape: ModelShape, seq: int, mb: int, device: str, steps: int = 3) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, foreach=True)
    model.train()
    for _ in range(steps):
        ids = torch.randint(0, shape.vocab_size, (mb, seq), device=device)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(setting: dict) -> dict:
    shape = TINY if setting["shape"] == "tiny" else KNOWN_SHAPES[setting["shape"]]
    device = setting["device"]
    import peft  # noqa: F401  (imported before the RSS baseline)
    import transformers  # noqa: F401

    rss0 = rss_bytes()
    model = build_model(shape, setting["method"], setting["rank"], device)
    model = prepare(model, setting["method"], setting["rank"], setting["gc"])
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        train_steps(model, shape, setting["seq"], setting["mb"], device)
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        return {
            "allocated": torch.cuda.max_memory_allocated(),
            "reserved": torch.cuda.max_memory_reserved(),
            "context": (total - free) - torch.cuda.memory_reserved(),
        }
    with LiveTensorTracker(model) as tracker:
        train_steps(model, shape, setting["seq"], setting["mb"], device, steps=2)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"allocated": tracker.peak, "reserved": peak_rss - rss0}


# ---------------------------------------------------------------- the driver


def settings(mode: str, tiny: bool) -> list[dict]:
    """(shape, method, seq, micro-batch, checkpointing) to measure."""
    if mode == "cpu":
        shape = "tiny" if tiny else "smollm2-135m"
        rows = [("lora", 256, 1, False), ("lora", 256, 2, True), ("full", 128, 1, False)]
        return [dict(shape=shape, method=m, seq=s, mb=b, gc=g, rank=16, device="cpu") for m, s, b, g in rows]
    big, small = ("tiny", "tiny") if tiny else ("llama-3-8b", "llama-3.2-1b")
    rows = [
        (big, "lora", 1024, 1, False),
        (big, "lora", 2048, 1, False),
        (big, "lora", 1024, 4, False),
        (big, "lora", 2048, 4, True),
        (big, "lora", 4096, 1, True),
        (big, "lora", 4096, 4, True),
        (big, "qlora", 2048, 1, True),
        (big, "qlora", 4096, 2, True),
        (small, "full", 1024, 1, False),
        (small, "full", 2048, 4, True),
    ]
    device = "cpu" if tiny and not torch.cuda.is_available() else "cuda"
    return [dict(shape=sh, method=m, seq=s, mb=b, gc=g, rank=16, device=device) for sh, m, s, b, g in rows]


def estimate(setting: dict) -> dict:
    shape = TINY if setting["shape"] == "tiny" else KNOWN_SHAPES[setting["shape"]]
    req = PlanRequest(
        model=shape.name,
        method=setting["method"],
        seq_len=setting["seq"],
        micro_batch=setting["mb"],
        gradient_checkpointing=setting["gc"],
        lora_rank=setting["rank"],
        gpu_memory=80 * GiB,
    )
    if setting["method"] == "qlora" and setting["device"] == "cpu":
        req = req.model_copy(update={"method": "lora"})  # bitsandbytes 4-bit needs CUDA
    plan = make_plan(shape, req)
    slack = next(c.bytes for c in plan.components if c.name.startswith("CUDA context"))
    from tuneloop.resources.plan import CUDA_CONTEXT

    return {
        "allocated": plan.peak_allocated,
        "reserved": plan.peak_allocated + slack - CUDA_CONTEXT,
        "total": plan.total,
        "components": {c.name: c.bytes for c in plan.components if c.at_peak},
    }


def run_one(setting: dict, timeout: int) -> dict:
    if setting["method"] == "qlora" and setting["device"] == "cpu":
        setting = {**setting, "method": "lora"}
    cmd = [sys.executable, __file__, "--worker", json.dumps(setting)]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": "timeout"}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
        return {"error": "OOM" if "OutOfMemory" in proc.stderr else tail[0][:200]}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["seconds"] = round(time.time() - t0, 1)
    return out


def err(est: int, meas: int) -> float:
    return 100.0 * (est - meas) / meas


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu", type=Path)
    ap.add_argument("--gpu", type=Path)
    ap.add_argument("--tiny", action="store_true", help="tiny shapes, to check the script runs")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=int, default=240)
    ap.add_argument("--rescore", type=Path, help="re-estimate a saved JSON's settings (no measuring)")
    args = ap.parse_args()
    if args.rescore:
        saved = json.loads(args.rescore.read_text())
        print_table([{**r, "estimate": estimate(r["setting"])} for r in saved["results"]], saved["env"])
        return
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    mode, out_dir = ("gpu", args.gpu) if args.gpu else ("cpu", args.cpu)
    if out_dir is None:
        ap.error("give --cpu OUTDIR or --gpu OUTDIR")
    results = []
    for s in settings(mode, args.tiny):
        measured = run_one(s, args.timeout)
        results.append({"setting": s, "estimate": estimate(s), "measured": measured})
        print(json.dumps(results[-1]), flush=True)
        out_dir.mkdir(parents=True, exist_ok=True)  # rewritten after each setting: partial runs count
        (out_dir / f"plan_memory_{mode}.json").write_text(
            json.dumps({"env": environment(), "results": results}, indent=1)
        )
    print_table(results, environment())


def environment() -> dict:
    import peft
    import transformers

    env = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    try:
        import bitsandbytes

        env["bitsandbytes"] = bitsandbytes.__version__
    except ImportError:
        pass
    return env


def print_table(results: list[dict], env: dict) -> None:
    print(env)
    print(
        f"{'shape':14} {'method':6} {'seq':>5} {'mb':>3} {'gc':3} | {'est alloc':>9} {'meas alloc':>10} {'err%':>6}"
        f" | {'est resv':>8} {'meas resv':>9} {'err%':>6} (MiB)"
    )
    for r in results:
        s, e, m = r["setting"], r["estimate"], r["measured"]
        head = f"{s['shape']:14} {s['method']:6} {s['seq']:>5} {s['mb']:>3} {'on' if s['gc'] else 'off':3}"
        if "error" in m:
            print(f"{head} | est {e['allocated'] / MiB:.0f} MiB: {m['error']}")
            continue
        print(
            f"{head} | {e['allocated'] / MiB:9.0f} {m['allocated'] / MiB:10.0f} {err(e['allocated'], m['allocated']):+6.1f}"
            f" | {e['reserved'] / MiB:8.0f} {m['reserved'] / MiB:9.0f} {err(e['reserved'], m['reserved']):+6.1f}"
        )


if __name__ == "__main__":
    main()
