"""Small datasets in the `tuneloop data prepare` contract, written per test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FACTS = [
    ("How many devices does the Nimbus X2 support?", "The Nimbus X2 supports 64 devices."),
    ("What is the default admin address?", "The default admin address is 192.168.50.1."),
    ("How long is the warranty?", "The warranty lasts 24 months."),
    ("Which app manages the mesh?", "The Nimbus Home app manages the mesh."),
    ("路由器的保修期是多久？", "保修期为24个月。"),
    ("What port does the guest network use?", "The guest network uses port 8443."),
    ("What colour is the status light when updating?", "It blinks amber while updating."),
    ("How much does Nimbus Cloud+ cost?", "Nimbus Cloud+ costs 4 dollars a month."),
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def sft_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        q, a = FACTS[i % len(FACTS)]
        rows.append(
            {"messages": [{"role": "user", "content": f"{q} ({i})"}, {"role": "assistant", "content": a}]}
        )
    return rows


@pytest.fixture
def sft_dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "sft"
    write_jsonl(folder / "train.jsonl", sft_rows(24))
    write_jsonl(folder / "val.jsonl", sft_rows(8))
    return folder


@pytest.fixture
def text_dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "pretrain"
    rows = [{"text": f"{a} {q} Document {i}."} for i, (q, a) in enumerate(FACTS * 3)]
    write_jsonl(folder / "train.jsonl", rows)
    write_jsonl(folder / "val.jsonl", rows[:4])
    return folder


@pytest.fixture
def pref_dataset(tmp_path: Path) -> Path:
    folder = tmp_path / "pref"
    rows = [
        {"prompt": [{"role": "user", "content": q}], "chosen": a, "rejected": "I do not know."}
        for q, a in FACTS * 2
    ]
    write_jsonl(folder / "train.jsonl", rows)
    write_jsonl(folder / "val.jsonl", rows[:4])
    return folder


@pytest.fixture
def llama3_8b_shape(tmp_path: Path) -> Path:
    """A model folder with only the Llama-3-8B config: enough for `plan`, nothing to load."""
    folder = tmp_path / "llama-3-8b-shape"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
        "max_position_embeddings": 8192, "tie_word_embeddings": False,
    }))  # fmt: skip
    return folder


def base_overrides(model: Path, data: Path, out: Path, **extra) -> list[str]:
    """Fast, deterministic settings for tests: no trackers unless a test turns them on."""
    values = {
        "model": str(model),
        "data.path": str(data),
        "output_dir": str(out),
        "max_steps": 4,
        "batch.global_batch": 8,
        "batch.micro_batch": 4,
        "tracking.mlflow": "false",
        "tracking.tensorboard": "false",
        "eval.final": "false",
        "lora.dropout": 0.0,
        "optim.lr": 1e-3,
        "precision": "fp32",  # exact-equality tests need fp32; bf16 is covered by its own test
        **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]
