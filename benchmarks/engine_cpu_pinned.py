"""`tuneloop bench engine` on an isolated CPU: the default model's architecture and tokenizer, random weights.

For a machine that cannot hold the real weights (the GPU device's upload limit) but gives quiet
cores: pin it to 2 cores (`taskset -c 0,1`) to match a 2-core laptop. Tokens/s does not depend on
weight values (every request runs to max tokens, `ignore_eos`); the tokenizer and chat template are
the real ones (copied without the weights into FOLDER).

    taskset -c 0,1 python3 benchmarks/engine_cpu_pinned.py FOLDER OUT.json
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
from pathlib import Path

import torch


def main() -> None:
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(tempfile.mkdtemp())
    for f in src.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.bfloat16)
    model.save_pretrained(folder)
    torch.set_num_threads(2)
    from tuneloop.bench.engine import run

    res = run(str(folder), new=64, concurrency=(1, 8, 32), hf_requests=8, dtype="float32", device="cpu")
    res["machine"] = f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}"
    res["weights"] = "random, SmolLM2-135M-Instruct architecture and tokenizer"
    out.write_text(json.dumps(res, indent=1))
    for r in res["results"]:
        print(f"{r['name']:45s} {r['tokens_per_s']:8.1f} tok/s  x{r['ratio_vs_one_at_a_time']}")


if __name__ == "__main__":
    main()
