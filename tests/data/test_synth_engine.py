"""`data synth` with the default model as an in-process engine teacher (offline): guided decoding
holds even a 135M model to the reply's JSON schema, so every reply parses. Kept to two small chunks
and a few dozen tokens: the CPU is slow."""

from __future__ import annotations

from pathlib import Path

from tuneloop.data.synth import SynthConfig
from tuneloop.flows.synth import run_synth

DOCS = Path(__file__).parents[2] / "examples" / "acme-kb" / "docs"


def test_the_default_model_as_teacher_replies_json_that_parses_for_every_chunk(default_model, tmp_path):
    cfg = SynthConfig(
        teacher=str(default_model),
        tokenizer=str(default_model),
        chunk_tokens=64,
        questions_per_chunk=1,
        paraphrases=0,
        answer_chars=40,
        max_tokens=64,
        max_chunks=1,  # one chunk: the check is that guided decoding makes the small model's reply parse
        retries=0,
        min_support=0.0,
        device="cpu",
    )
    m = run_synth([str(DOCS / "arc-r5-product-overview.md")], tmp_path / "out", cfg).manifest
    assert m["teacher"] == f"engine:{default_model}"
    assert m["counts"]["chunks"] == 1 and "malformed" not in m["removed"]["chunks"]
    assert m["counts"]["candidate_rows"] == 1  # the chunk's one item parsed
    assert m["counts"]["rows"] >= 1 and (tmp_path / "out" / "train" / "part-00000.jsonl").is_file()
