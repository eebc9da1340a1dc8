"""Every command that takes a model reference, against every folder format `tuneloop export` writes.

A command either uses the format (ask/chat/eval run ONNX and packed int4 exports) or refuses it by
name, with what to use instead, exit code 2, no traceback and nothing written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.export import onnx, quantize
from tuneloop.export.onnx import export_onnx
from tuneloop.export.quantize import quantize_folder
from tuneloop.models.formats import INT4_MANIFEST, ONNX_FILE, folder_format
from tuneloop.models.loading import load_model, load_tokenizer, stream_chat

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("torchao")

runner = CliRunner()
ROW = {"messages": [{"role": "user", "content": "Where is it?"}, {"role": "assistant", "content": "Here."}]}


@pytest.fixture(scope="module")
def exports(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model as each format: hf, int8 (torchao, quantized), int4 (packed), onnx, adapter."""
    root = tmp_path_factory.mktemp("formats")
    tokenizer = load_tokenizer(tiny_llama)
    folders = {"hf": tiny_llama, "onnx": root / "onnx", "int4": root / "int4", "int8": root / "int8"}
    export_onnx(load_model(tiny_llama, "cpu"), folders["onnx"])
    quantize_folder(tiny_llama, folders["int4"], "int4", "cpu")
    quantize_folder(tiny_llama, folders["int8"], "int8", "cpu")
    for name in ("onnx", "int4", "int8"):
        tokenizer.save_pretrained(folders[name])
    torch.manual_seed(0)
    adapter = get_peft_model(load_model(tiny_llama, "cpu"), LoraConfig(r=4, target_modules=["q_proj"]))
    adapter.save_pretrained(str(root / "adapter"))
    folders["adapter"] = root / "adapter"
    return folders


def _refused(result, *words: str) -> str:
    output = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "Traceback" not in output and "hint:" in output, output
    for word in words:
        assert word in output, output
    return output


def test_folder_format_names_each_export(exports) -> None:
    assert {name: folder_format(path) for name, path in exports.items()} == {
        "hf": "hf", "onnx": "onnx", "int4": "int4", "int8": "quantized", "adapter": "adapter",
    }  # fmt: skip
    assert (ONNX_FILE, INT4_MANIFEST) == (onnx.ONNX_FILE, quantize.INT4_MANIFEST)  # one set of marker names


# ---------------------------------------------------------------- ask and chat run every format


def _ask(folder: Path, *extra: str):
    return runner.invoke(
        app, ["ask", "Hello?", "-m", str(folder), "--max-new-tokens", "6", "--device", "cpu", *extra]
    )


def test_ask_answers_from_the_onnx_export_as_the_model_it_came_from(exports) -> None:
    hf, onnx = _ask(exports["hf"]), _ask(exports["onnx"])
    assert hf.exit_code == 0 and onnx.exit_code == 0, onnx.output
    assert onnx.stdout.strip() and onnx.stdout == hf.stdout  # greedy ONNX Runtime == greedy PyTorch


def test_ask_answers_from_int4_int8_and_adapter_folders(exports) -> None:
    for name in ("int4", "int8", "adapter"):
        result = _ask(exports[name])
        assert result.exit_code == 0 and result.stdout.strip(), (name, result.output)


def test_ask_and_chat_refuse_sampling_an_onnx_export(exports) -> None:
    _refused(
        _ask(exports["onnx"], "--temperature", "0.7"), "is an ONNX export", "greedily", "--temperature 0"
    )
    result = runner.invoke(app, ["chat", str(exports["onnx"]), "-t", "0.5"], input="hi\n")
    _refused(result, "is an ONNX export", "greedily")


@pytest.mark.parametrize("name", ["onnx", "int4"])
def test_chat_streams_replies_from_onnx_and_int4_exports(exports, name) -> None:
    result = runner.invoke(
        app, ["chat", str(exports[name]), "--max-new-tokens", "5", "--device", "cpu"], input="hi\n/exit\n"
    )
    assert result.exit_code == 0, result.output
    reply = result.stdout.split("bot> ", 1)[1].split("\n", 1)[0]
    assert reply.strip() and "bye" in result.output


# ---------------------------------------------------------------- eval runs every format


@pytest.mark.parametrize("name", ["onnx", "int4"])
def test_eval_measures_onnx_and_int4_exports(exports, name, tmp_path) -> None:
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps(ROW) + "\n")
    result = runner.invoke(
        app,
        [
            "eval",
            str(exports[name]),
            "--data",
            str(data),
            "--max-new-tokens",
            "3",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "o" / "eval.json").read_text())["model"]
    assert report["n"] == 1 and report["metrics"]["perplexity"] > 1


# ---------------------------------------------------------------- serve, train, export, plan refuse by name


@pytest.mark.parametrize(
    ("name", "what"),
    [("onnx", "is an ONNX export"), ("int4", "is a packed int4 export"), ("int8", "is a quantized export")],
)
def test_serve_refuses_exports_the_engine_cannot_run_before_starting(exports, name, what) -> None:
    result = runner.invoke(app, ["serve", "--model", str(exports[name]), "--no-auth", "--port", "1"])
    _refused(result, what, "`tuneloop serve` does not support", "exported from")
    assert "serving" not in result.output  # refused before the server was started


@pytest.mark.parametrize(
    ("name", "what", "extra"),
    [
        ("onnx", "is an ONNX export", []),
        ("int4", "is a packed int4 export", []),
        ("adapter", "is a LoRA adapter", []),
        ("int8", "method=full cannot train its weights", ["method=full"]),
    ],
)
def test_train_refuses_exports_by_name_and_leaves_no_run_folder(exports, name, what, extra, tmp_path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(ROW) + "\n")
    out = tmp_path / "run"
    args = [
        f"model={exports[name]}",
        f"data.path={data}",
        f"output_dir={out}",
        "tracking.mlflow=false",
        *extra,
    ]
    _refused(runner.invoke(app, ["train", *args]), what)
    assert not out.exists()


@pytest.mark.parametrize("name", ["onnx", "int4", "int8"])
def test_export_refuses_an_export_as_its_source_and_writes_nothing(exports, name, tmp_path) -> None:
    out = tmp_path / "exported"
    result = runner.invoke(app, ["export", str(exports[name]), "--quantize", "int8", "--out", str(out)])
    _refused(result, "`tuneloop export` does not support", "export from the full-precision folder")
    assert not out.exists()


def test_plan_refuses_onnx_and_names_the_base_of_an_adapter(exports) -> None:
    _refused(runner.invoke(app, ["plan", str(exports["onnx"]), "--seq-len", "256"]), "is an ONNX export")
    _refused(
        runner.invoke(app, ["plan", str(exports["adapter"])]), "is a LoRA adapter", "plan its base model"
    )
    assert runner.invoke(app, ["plan", str(exports["int8"]), "--seq-len", "256"]).exit_code == 0


def test_registry_register_names_an_export_given_for_a_run_folder(exports) -> None:
    result = runner.invoke(app, ["registry", "register", str(exports["onnx"]), "--name", "tiny"])
    _refused(result, "is an ONNX export, not a training run folder", "tuneloop export")


# ---------------------------------------------------------------- half-copied folders, every command


@pytest.fixture(scope="module")
def broken(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model folders missing what loading needs: weights, tokenizer files, a readable config.json."""
    root = tmp_path_factory.mktemp("broken")
    folders = {}
    for name, drop in (("no_weights", "model.safetensors"), ("no_tokenizer", "tokenizer.json")):
        folders[name] = Path(shutil.copytree(tiny_llama, root / name))
        (folders[name] / drop).unlink()
    folders["bad_config"] = Path(shutil.copytree(tiny_llama, root / "bad_config"))
    (folders["bad_config"] / "config.json").write_text("{not json")
    return folders


BROKEN = {"no_weights": "has no weight files", "no_tokenizer": "has no tokenizer files", "bad_config": "config.json cannot be read"}  # fmt: skip
COMMANDS = {
    "ask": lambda m, tmp: ["ask", "hi", "-m", m],
    "chat": lambda m, tmp: ["chat", m],
    "eval": lambda m, tmp: ["eval", m, "--data", str(tmp / "d.jsonl"), "--out", str(tmp / "o")],
    "train": lambda m, tmp: [
        "train",
        f"model={m}",
        f"data.path={tmp / 'd.jsonl'}",
        f"output_dir={tmp / 'o'}",
    ],
    "serve": lambda m, tmp: ["serve", "--model", m, "--no-auth"],
    "export": lambda m, tmp: ["export", m, "--quantize", "int8", "--out", str(tmp / "o")],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_an_incomplete_model_folder_is_named_by_every_command(broken, case, command, tmp_path) -> None:
    (tmp_path / "d.jsonl").write_text(json.dumps(ROW) + "\n")
    result = runner.invoke(app, COMMANDS[command](str(broken[case]), tmp_path), input="hi\n")
    _refused(result, str(broken[case]), BROKEN[case])
    assert not (tmp_path / "o").exists()


def test_export_refuses_an_unwritable_out_before_measuring(exports, tmp_path) -> None:
    (tmp_path / "a-file").write_text("x")
    result = runner.invoke(
        app, ["export", str(exports["hf"]), "--quantize", "int8", "--out", str(tmp_path / "a-file" / "o")]
    )
    _refused(result, "--out", "is a file, not a folder")


@pytest.mark.timeout(60)
def test_a_generate_that_fails_in_its_thread_raises_instead_of_hanging(tiny_llama) -> None:
    """stream_chat generates in a thread; its error must reach the caller (the streamer would wait forever)."""

    class FailingModel:  # stands in for a runner whose kernel is missing on this machine
        device = "cpu"

        def generate(self, **_: object) -> None:
            raise RuntimeError("int4 kernel not available")

    with pytest.raises(RuntimeError, match="int4 kernel not available"):
        list(stream_chat(FailingModel(), load_tokenizer(tiny_llama), [{"role": "user", "content": "hi"}]))
