"""The harness end to end on tiny models: SFT and text sets, baselines, adapters, truncation."""

from __future__ import annotations

import json
import math

import pytest

from tuneloop.errors import TuneloopError
from tuneloop.evaluation.compare import compare
from tuneloop.evaluation.harness import evaluate
from tuneloop.evaluation.report import to_markdown, write_reports
from tuneloop.models.loading import load_tokenizer


def qa_rows(n: int = 4) -> list[dict]:
    return [
        {
            "id": f"q{i}",
            "messages": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": f"How many devices are in cluster {i}?"},
                {"role": "assistant", "content": f"Cluster {i} has {8 * i} devices."},
            ],
            "answer": f"{8 * i} devices",
        }
        for i in range(n)
    ]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_sft_report_has_perplexity_answer_metrics_and_samples(tiny_llama, tmp_path):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows())
    report = evaluate(str(tiny_llama), data, max_new_tokens=6, batch_size=3)
    assert report.kind == "sft" and report.n == 4
    for name in ("perplexity", "exact_match", "token_f1", "rouge_l", "contains_answer"):
        assert name in report.metrics
    assert math.isclose(report.metrics["perplexity"], math.exp(report.metrics["nll"]))
    assert [s.id for s in report.samples] == ["q0", "q1", "q2", "q3"]
    assert report.samples[1].reference == "Cluster 1 has 8 devices."
    assert report.samples[1].question == "How many devices are in cluster 1?"


def test_max_samples_and_dataset_folder(tiny_llama, tmp_path):
    write_jsonl(tmp_path / "val.jsonl", qa_rows(5))
    report = evaluate(str(tiny_llama), tmp_path, max_samples=2, max_new_tokens=2)
    assert report.n == 2 and report.data.endswith("val.jsonl")


def test_text_rows_score_all_tokens_and_count_truncation(tiny_llama, tmp_path):
    data = write_jsonl(
        tmp_path / "text.jsonl", [{"text": "The capital of France is Paris. " * 8}, {"text": "Hello"}]
    )
    report = evaluate(str(tiny_llama), data, max_length=16)
    assert report.kind == "text" and report.samples == []
    assert report.truncated == 1
    hello = len(load_tokenizer(tiny_llama)("Hello")["input_ids"])
    assert report.metrics["scored_tokens"] == (16 - 1) + (hello - 1)  # each row's first token is context


def test_in_memory_rows_and_model_skip_loading(tiny_llama):
    from tuneloop.models.loading import load_model

    model, tok = load_model(tiny_llama, "cpu"), load_tokenizer(tiny_llama)
    by_ref = evaluate(str(tiny_llama), qa_rows(2), max_new_tokens=4)
    in_memory = evaluate("run", qa_rows(2), max_new_tokens=4, model=model, tokenizer=tok)
    assert in_memory.metrics == pytest.approx(by_ref.metrics)


def test_compare_has_both_models_deltas_and_samples(tiny_llama, tiny_model_factory, tmp_path):
    other = tiny_model_factory("qwen2")
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(3))
    a = evaluate(str(tiny_llama), data, max_new_tokens=4)
    b = evaluate(str(other), data, max_new_tokens=4)
    cmp = compare(a, b, n_samples=2)
    assert cmp.model == str(tiny_llama) and cmp.baseline == str(other)
    ppl = next(r for r in cmp.metrics if r.name == "perplexity")
    assert ppl.delta == pytest.approx(a.metrics["perplexity"] - b.metrics["perplexity"])
    assert ppl.better == (a.metrics["perplexity"] < b.metrics["perplexity"])
    assert [s.model for s in cmp.samples] == [s.prediction for s in a.samples[:2]]
    assert [s.baseline for s in cmp.samples] == [s.prediction for s in b.samples[:2]]
    json_path, md_path = write_reports(tmp_path / "out", a, b, cmp)
    saved = json.loads(json_path.read_text())
    assert set(saved) == {"model", "baseline", "comparison"}
    assert "| perplexity |" in md_path.read_text() and "baseline" in to_markdown(a, b)


def test_adapter_folder_is_evaluated_on_its_base(tiny_llama, tmp_path):
    peft = pytest.importorskip("peft")
    from tuneloop.evaluation.perplexity import perplexity, sft_labels
    from tuneloop.models.loading import load_model

    # init_lora_weights=False: a random B matrix, so the adapter really changes the outputs.
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    lora = peft.get_peft_model(load_model(tiny_llama, "cpu"), config)
    lora.save_pretrained(tmp_path / "adapter")
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(2))
    adapted = evaluate(str(tmp_path / "adapter"), data, max_new_tokens=4)
    base = evaluate(str(tiny_llama), data, max_new_tokens=4)
    tok = load_tokenizer(tiny_llama)
    expected = perplexity(lora.eval(), [sft_labels(tok, r["messages"], 512) for r in qa_rows(2)])
    assert adapted.metrics["perplexity"] == pytest.approx(expected.perplexity, rel=1e-4)
    assert adapted.metrics["perplexity"] != pytest.approx(base.metrics["perplexity"], rel=1e-4)


def test_adapter_without_base_is_a_clear_error(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    with pytest.raises(TuneloopError, match="base model"):
        evaluate(str(folder), qa_rows(1))
