"""The sharded dataset layout on the local engine: shard boundaries, atomic commit, and `train`
reading the shards (streamed file by file, errors naming shard and line)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from shards import all_files, prose, shards, split_rows

from tuneloop.config import load_config
from tuneloop.data import prepare
from tuneloop.data.destination import Destination
from tuneloop.data.layout import open_split
from tuneloop.errors import TuneloopError
from tuneloop.train.config import TrainConfig
from tuneloop.train.dataset import dataset_files, read_rows
from tuneloop.train.recipe import run


def write_docs(folder: Path, n: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"d{i:03d}.txt").write_text(prose(seed * 1000 + i, 12))
    return folder


def test_shards_hold_shard_rows_rows_each_and_concatenate_to_the_unsharded_rows(
    tmp_path: Path, make_cfg
) -> None:
    corpus = write_docs(tmp_path / "c", 30)
    one = prepare([str(corpus)], tmp_path / "one", make_cfg(), workers=1)
    many = prepare([str(corpus)], tmp_path / "many", make_cfg(output__shard_rows=7), workers=2)
    train = shards(tmp_path / "many", "train")
    sizes = [len(p.read_text().splitlines()) for p in train]
    assert len(train) > 2 and all(s == 7 for s in sizes[:-1]) and 1 <= sizes[-1] <= 7
    assert sum(sizes) == many["counts"]["train_rows"] == one["counts"]["train_rows"]
    for split in ("train", "val"):  # the same rows in the same order, only cut differently
        assert split_rows(tmp_path / "many", split) == split_rows(tmp_path / "one", split)
    for p in train:  # each Parquet shard holds exactly its JSONL shard's rows
        assert pq.read_table(p.with_suffix(".parquet")).to_pylist() == [
            json.loads(x) for x in p.read_text().splitlines()
        ]
    assert many["outputs"][train[0].relative_to(tmp_path / "many").as_posix()]["rows"] == 7


def test_a_failed_prepare_keeps_the_previous_dataset_and_leaves_no_temporary_files(
    tmp_path: Path, make_cfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = write_docs(tmp_path / "c", 12)
    out = tmp_path / "out"
    prepare([str(corpus)], out, make_cfg(output__shard_rows=5), workers=1)
    before = all_files(out)
    calls = {"n": 0}
    real = Destination.write_shard

    def fail_on_third(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Destination, "write_shard", fail_on_third)
    with pytest.raises(OSError, match="disk full"):
        prepare([str(corpus)], out, make_cfg(output__shard_rows=3, split__seed=7), workers=1)
    assert calls["n"] == 3 and all_files(out) == before  # untouched; no .tuneloop-tmp-* left


def test_shards_without_a_manifest_are_an_unfinished_dataset(tmp_path: Path, make_cfg) -> None:
    out = tmp_path / "out"
    prepare([str(write_docs(tmp_path / "c", 6))], out, make_cfg(), workers=1)
    (out / "manifest.json").unlink()  # as a run killed during its commit leaves it
    with pytest.raises(TuneloopError, match=r"train/ shards but no manifest.json: an unfinished"):
        dataset_files(str(out), None)


def _sharded_sft(tmp_path: Path, make_cfg, n: int = 24) -> Path:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Question {i}: {prose(i, 1)}?"},
                {"role": "assistant", "content": f"Answer {i}: {prose(100 + i, 1)}."},
            ]
        }
        for i in range(n)
    ]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ds"
    cfg = make_cfg(kind="sft", output__shard_rows=5, dedup__near=False, split__val_fraction=0.2)
    prepare([str(tmp_path / "chat.jsonl")], out, cfg, workers=1)
    return out


def test_train_reads_every_shard_in_order_and_records_the_manifest_fingerprint(
    tmp_path: Path, make_cfg, tiny_llama: Path
) -> None:
    out = _sharded_sft(tmp_path, make_cfg)
    train, val = dataset_files(str(out), None)
    assert len(train.files) > 2 and val is not None
    assert read_rows(train, "sft") == split_rows(out, "train")
    assert read_rows(val, "sft") == split_rows(out, "val")
    overrides = {
        "model": str(tiny_llama),
        "data.path": str(out),
        "output_dir": str(tmp_path / "run"),
        "max_steps": 2,
        "batch.global_batch": 4,
        "batch.micro_batch": 4,
        "tracking.mlflow": "false",
        "tracking.tensorboard": "false",
        "eval.final": "false",
        "precision": "fp32",
    }
    result = run(load_config(TrainConfig, None, [f"{k}={v}" for k, v in overrides.items()]))
    run_info = json.loads((result.run_dir / "run.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert run_info["dataset"] == {"train": str(out), "fingerprint": manifest["fingerprint"]}
    assert len(result.metrics["train_loss"]) == 2


def test_a_bad_line_in_a_later_shard_names_the_shard_and_line(tmp_path: Path, make_cfg) -> None:
    out = _sharded_sft(tmp_path, make_cfg)
    third = shards(out, "train")[2]
    lines = third.read_text().splitlines()
    lines[1] = lines[1][:-5]  # cut JSON
    third.write_text("\n".join(lines) + "\n")
    train, _ = dataset_files(str(out), None)
    with pytest.raises(TuneloopError, match=rf"{third}:2: "):
        read_rows(train, "sft")


def test_a_shard_of_another_row_kind_names_the_shard_and_line(tmp_path: Path, make_cfg) -> None:
    out = _sharded_sft(tmp_path, make_cfg)
    second = shards(out, "train")[1]
    second.write_text(json.dumps({"text": "plain pretraining text, not a conversation"}) + "\n")
    with pytest.raises(
        TuneloopError, match=rf"{second}:1: objective 'sft' needs .* pretraining \(text\) rows"
    ):
        read_rows(dataset_files(str(out), None)[0], "sft")
    missing = shards(out, "train")[3]
    missing.unlink()
    with pytest.raises(TuneloopError, match=rf"shard '{missing}' is listed in the manifest but missing"):
        list(open_split(str(out), "train").lines())


def test_eval_reads_the_val_shards_of_a_dataset_folder(tmp_path: Path, make_cfg) -> None:
    from tuneloop.evaluation.rows import read_rows as eval_rows

    out = _sharded_sft(tmp_path, make_cfg, n=40)
    assert len(shards(out, "val")) > 1
    rows, kind = eval_rows(out)
    assert kind == "sft" and [r.messages for r in rows] == [r["messages"] for r in split_rows(out, "val")]
