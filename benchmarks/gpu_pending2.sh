#!/usr/bin/env bash
# The rest of gpu_pending.sh after its first run on 2026-12-08 (that run measured the LoRA and
# long-context phases; the steps below failed there on a missing jsonschema wheel).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .whl/*.whl .whl-serve/*.whl >/dev/null 2>&1 || echo "wheel install failed"
export PYTHONPATH=src:.devcarry:benchmarks:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt"
timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider tests/engine tests/train/test_padding_free.py \
  > "$OUT/gpu_tests.log" 2>&1
timeout 140 python3 benchmarks/engine_gpu_serve.py "$OUT" --defaults --concurrency 128 --tiers engine,http \
  > "$OUT/serve_defaults.log" 2>&1
timeout 60 python3 benchmarks/guided_decoding.py --gpu --skip adherence --out "$OUT/guided_decoding_gpu.json" \
  > "$OUT/guided.log" 2>&1
for f in gpu_tests serve_defaults guided; do tail -n 4 "$OUT/$f.log"; done
