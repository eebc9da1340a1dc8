#!/usr/bin/env bash
# The GPU measurements still owed (issues 19, 20, 21), as one device call: run from the repo root with
# the wheels carried (.whl: pydantic, msgspec, llguidance, pytest...; .whl-serve: the serve extra;
# .devcarry: hf_baseline_gpu.py and the SmolLM2 tokenizer files, see BENCHMARKS.md). Each step writes
# under $OUT and has its own time limit, so a slow step costs only itself. About 9 minutes on an H100.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .whl/*.whl .whl-serve/*.whl >/dev/null 2>&1 || echo "wheel install failed"
export PYTHONPATH=src:.devcarry:benchmarks:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt"
# issue 19: the engine's CUDA paths after the redesign (varlen prefill, LoRA in graphs, async, quant)
timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider tests/engine tests/train/test_padding_free.py \
  > "$OUT/gpu_tests.log" 2>&1
# issue 21: 8 adapters at defaults (+ where the time goes), long prompts with and without split-KV
timeout 220 python3 benchmarks/engine_gpu_defaults.py "$OUT" --phases lora,long,longsplit --profile \
  > "$OUT/defaults.log" 2>&1
# issue 21: 128 streams through the gateway as `tuneloop serve` builds it
timeout 150 python3 benchmarks/engine_gpu_serve.py "$OUT" --defaults --concurrency 128 --tiers engine,http \
  > "$OUT/serve_defaults.log" 2>&1
# issue 20: guided decoding cost on the 8B shape
timeout 60 python3 benchmarks/guided_decoding.py --gpu --skip adherence --out "$OUT/guided_decoding_gpu.json" \
  > "$OUT/guided.log" 2>&1
tail -3 "$OUT/gpu_tests.log" "$OUT/defaults.log" "$OUT/serve_defaults.log" "$OUT/guided.log"
