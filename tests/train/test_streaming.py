"""Streamed training data: coverage per epoch, the in-memory batches, exact resume, mixes, memory."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

from tuneloop.config import load_config
from tuneloop.data.layout import open_split
from tuneloop.errors import ConfigError, TuneloopError
from tuneloop.models.loading import load_tokenizer
from tuneloop.train import segments
from tuneloop.train import trainer as trainer_module
from tuneloop.train.config import TrainConfig
from tuneloop.train.loader import LoadedMixture, Sources, data_workers
from tuneloop.train.mixture import Entry, Mixture
from tuneloop.train.recipe import run
from tuneloop.train.streaming import RowFiles, ShardStream, Tokenizing

from .conftest import base_overrides, sft_rows, write_jsonl


def write_sharded(folder: Path, rows: list[dict], shard_rows: int) -> Path:
    """A dataset in `tuneloop data prepare`'s sharded layout: train/part-*.jsonl + manifest.json."""
    names, outputs = [], {}
    for k in range(0, max(1, len(rows)), shard_rows):
        name = f"train/part-{k // shard_rows:05d}.jsonl"
        path = write_jsonl(folder / name, rows[k : k + shard_rows])
        names.append(name)
        outputs[name] = {"rows": len(rows[k : k + shard_rows]), "bytes": path.stat().st_size}
    manifest = {
        "fingerprint": f"test:{len(rows)}",
        "counts": {"train_rows": len(rows), "val_rows": 0},
        "outputs": outputs,
        "shards": {"train": names, "val": []},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def text_rows(n: int, width: int = 0) -> list[dict]:
    return [{"text": f"row {i} " + "x" * width} for i in range(n)]


def stream(
    folder: Path | str, tokenizer, part=0, parts=1, buffer=7, limit=None, packing=False
) -> ShardStream:
    split = open_split(str(folder), "train")
    how = Tokenizing(tokenizer, "pretrain", 64, "truncate", packing)
    return ShardStream(RowFiles(split, limit), how, 42, buffer, part, parts)


def row_of(tokenizer, example) -> int:
    """The row index a pretraining example came from ("row N ...")."""
    return int(tokenizer.decode(example.input_ids).split()[1])


def train(model: Path, data: Path | None, out: Path, **extra):
    overrides = base_overrides(model, data or "unused", out, **extra)
    if data is None:
        overrides = [o for o in overrides if not o.startswith("data.path=")]
    return run(load_config(TrainConfig, None, overrides))


# ---------------------------------------------------------------- order and coverage


def test_partitions_are_disjoint_and_cover_every_row_once_per_epoch(tiny_llama, tmp_path):
    tok = load_tokenizer(tiny_llama)
    data = write_sharded(tmp_path / "d", text_rows(50), shard_rows=13)
    streams = [stream(data, tok, part, 3) for part in range(3)]
    epochs = []
    for epoch in range(2):
        seen = [[row_of(tok, s.next()) for _ in range(len(range(p, 50, 3)))] for p, s in enumerate(streams)]
        assert all(s.position.epoch == epoch for s in streams)
        flat = [r for part in seen for r in part]
        assert sorted(flat) == list(range(50)), "each row exactly once per epoch"
        assert all(set(a).isdisjoint(b) for i, a in enumerate(seen) for b in seen[i + 1 :])
        epochs.append(flat)
    assert epochs[0] != epochs[1], "every epoch is shuffled anew"


def test_dataloader_workers_take_disjoint_partitions(tiny_llama, tmp_path):
    tok = load_tokenizer(tiny_llama)
    data = write_sharded(tmp_path / "d", text_rows(40), shard_rows=9)
    loader = torch.utils.data.DataLoader(stream(data, tok, 0, 1, buffer=5), batch_size=None, num_workers=2)
    got = []
    for example in loader:
        got.append(row_of(tok, example))
        if len(got) == 40:
            break
    assert sorted(got) == list(range(40))


def test_max_train_examples_streams_the_first_rows_in_shard_order(tiny_llama, tmp_path):
    tok = load_tokenizer(tiny_llama)
    data = write_sharded(tmp_path / "d", text_rows(50), shard_rows=13)
    s = stream(data, tok, limit=20, buffer=6)
    rows = [row_of(tok, s.next()) for _ in range(40)]
    assert sorted(rows[:20]) == list(range(20)) and sorted(rows[20:]) == list(range(20))


def test_position_restores_the_same_examples(tiny_llama, tmp_path):
    tok = load_tokenizer(tiny_llama)
    data = write_sharded(tmp_path / "d", text_rows(60), shard_rows=11)
    a = stream(data, tok, 1, 2, buffer=4, packing=True)
    for _ in range(23):
        a.next()
    saved = a.state()
    b = stream(data, tok, 1, 2, buffer=4, packing=True)
    b.restore(saved)
    assert [b.next().input_ids for _ in range(30)] == [a.next().input_ids for _ in range(30)]


@pytest.mark.parametrize("packing", [False, True])
def test_one_window_stream_gives_the_in_memory_batches(
    tiny_llama, text_dataset, tmp_path, monkeypatch, packing
):
    seen = record_batches(monkeypatch)
    gb = 1 if packing else 4  # a whole number of batches per epoch: the in-memory path's last one is short
    kw = {"objective": "pretrain", "data.packing": packing, "data.max_length": 64, "max_steps": 8,
          "batch.global_batch": gb, "batch.micro_batch": gb}  # fmt: skip
    listed = train(tiny_llama, text_dataset, tmp_path / "list", **kw, **{"data.streaming": "false"})
    in_memory = list(seen)
    seen.clear()
    streamed = train(tiny_llama, text_dataset, tmp_path / "stream", **kw, **{"data.streaming": "true"})
    assert seen == in_memory
    assert streamed.metrics["train_loss"] == listed.metrics["train_loss"]
    assert streamed.metrics["total_steps"] == listed.metrics["total_steps"]
    assert streamed.metrics["streaming"] is True and listed.metrics["streaming"] is False


def record_batches(monkeypatch) -> list[list[list[int]]]:
    """The token ids of every optimizer step's examples, in order, as the trainer hands them on."""
    seen: list[list[list[int]]] = []
    original = trainer_module.Trainer._accumulate_with_backoff

    def spy(self, examples):
        seen.append([e.input_ids for e in examples])
        return original(self, examples)

    monkeypatch.setattr(trainer_module.Trainer, "_accumulate_with_backoff", spy)
    return seen


# ---------------------------------------------------------------- exact resume


def test_resume_after_a_stop_sees_the_batches_of_an_uninterrupted_run(tiny_llama, tmp_path, monkeypatch):
    data = write_sharded(tmp_path / "d", [r for r in sft_rows(40)], shard_rows=9)
    kw = {"max_steps": 9, "data.streaming": "true", "data.shuffle_buffer": 5, "checkpoint.every": 3}
    seen = record_batches(monkeypatch)
    full = train(tiny_llama, data, tmp_path / "full", **kw)
    uninterrupted = list(seen)
    seen.clear()

    original = trainer_module.Trainer._my_examples

    def stop_at_5(self, step):
        mine = original(self, step)
        if step == 5:  # mid-step, after this step's examples were drawn: Ctrl-C
            raise KeyboardInterrupt
        return mine

    monkeypatch.setattr(trainer_module.Trainer, "_my_examples", stop_at_5)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_llama, data, tmp_path / "cut", **kw)
    assert (tmp_path / "cut" / "checkpoints" / "step-00000005").is_dir()
    monkeypatch.setattr(trainer_module.Trainer, "_my_examples", original)
    resumed = train(tiny_llama, data, tmp_path / "cut", **kw)  # resume=auto
    assert seen == uninterrupted, "the stopped and resumed run saw other batches"
    assert [x for _, x in resumed.metrics["train_loss"]] == pytest.approx(
        [x for _, x in full.metrics["train_loss"]], rel=1e-5
    )


def test_a_run_streamed_from_s3_resumes_exactly_after_kill_9(tiny_llama, tmp_path, s3_env):
    """The issue's test: the data on (moto) S3, read in windows much smaller than the dataset; the
    process is killed with SIGKILL after a checkpoint; `resume=auto` gives the uninterrupted losses."""
    import time

    import boto3

    data = write_sharded(tmp_path / "d", sft_rows(120), shard_rows=15)
    s3 = boto3.client("s3", endpoint_url=s3_env)
    s3.create_bucket(Bucket="train")
    for p in sorted(data.rglob("*")):
        if p.is_file():
            s3.upload_file(str(p), "train", f"ds/{p.relative_to(data)}")
    kw = {"max_steps": 30, "data.shuffle_buffer": 20, "checkpoint.every": 3}  # a URL streams (auto)
    full = train(tiny_llama, "s3://train/ds", tmp_path / "full", **kw)
    assert full.metrics["steps"] == 30
    out = tmp_path / "killed"
    args = base_overrides(tiny_llama, "s3://train/ds", out, **kw)
    proc = subprocess.Popen([sys.executable, "-m", "tuneloop.train.launch", "-", *args],
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 180
    while time.time() < deadline and not (out / "checkpoints" / "step-00000006" / "state.json").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists(), "the run finished before it could be killed"
    resumed = run(load_config(TrainConfig, None, args))  # resume=auto is the default
    assert [x for _, x in resumed.metrics["train_loss"]] == pytest.approx(
        [x for _, x in full.metrics["train_loss"]], rel=1e-5, abs=1e-6
    )


# ---------------------------------------------------------------- DataLoader workers (num_workers)


def loaded(folder: Path, tokenizer, workers: int, buffer: int = 5) -> LoadedMixture:
    split = open_split(str(folder), "train")
    how = Tokenizing(tokenizer, "pretrain", 64, "truncate", False)
    sources = Sources([RowFiles(split)], how, 42, buffer, [Entry(str(folder), 1.0)])
    return LoadedMixture(sources, 1, 0, 1, workers, per_step=3)


def test_workers_cover_every_row_once_per_epoch(tiny_llama, tmp_path):
    tok = load_tokenizer(tiny_llama)
    data = write_sharded(tmp_path / "d", text_rows(40), shard_rows=9)
    m = loaded(data, tok, workers=2)
    epochs = [[row_of(tok, e) for e in m.take(40)] for _ in range(2)]
    m.close()
    assert sorted(epochs[0]) == list(range(40)) and sorted(epochs[1]) == list(range(40))
    assert epochs[0] != epochs[1], "every epoch is shuffled anew"
    assert m.tokens[0] > 0 and m.state()["workers"] == 2


def test_workers_resume_from_what_the_trainer_consumed_not_what_they_made_ahead(tiny_llama, tmp_path):
    tok = load_tokenizer(tiny_llama)
    data = write_sharded(tmp_path / "d", text_rows(40), shard_rows=9)
    a = loaded(data, tok, workers=3)
    a.take(13)  # the workers have prefetched far past 13; worker 1 is next in turn
    saved = {"world": 1, "ranks": [a.state()]}
    assert saved["ranks"][0]["next"] == 13 % 3
    b = loaded(data, tok, workers=3)
    b.restore(saved, 0, 1)
    assert [e.input_ids for e in b.take(50)] == [e.input_ids for e in a.take(50)]
    a.close(), b.close()


def test_one_worker_keeps_the_in_process_order_and_its_checkpoints(tiny_llama, tmp_path):
    tok = load_tokenizer(tiny_llama)
    data = write_sharded(tmp_path / "d", text_rows(30), shard_rows=7)
    plain = Mixture([stream(data, tok, buffer=5)], [Entry(str(data), 1.0)], 1)
    one = loaded(data, tok, workers=1)
    assert [e.input_ids for e in one.take(17)] == [e.input_ids for e in plain.take(17)]
    resumed = loaded(data, tok, workers=1)  # a num_workers=0 checkpoint, continued by one worker
    resumed.restore({"world": 1, "ranks": [plain.state()]}, 0, 1)
    assert [e.input_ids for e in resumed.take(20)] == [e.input_ids for e in plain.take(20)]
    one.close(), resumed.close()


def test_a_bad_row_read_in_a_worker_is_named_without_a_traceback(tiny_llama, tmp_path):
    tok = load_tokenizer(tiny_llama)
    rows = text_rows(20)
    rows[12] = {"txt": "no text field"}
    data = write_sharded(tmp_path / "d", rows, shard_rows=10)
    m = loaded(data, tok, workers=2)
    with pytest.raises(TuneloopError, match=r"part-00001\.jsonl:3: row has neither") as caught:
        m.take(40)
    assert "Traceback" not in str(caught.value) and "DataLoader worker" not in str(caught.value)


def test_num_workers_shapes_a_streamed_run_from_two_on():
    def cfg(workers: int) -> TrainConfig:
        return load_config(TrainConfig, {"data": {"path": "d", "streaming": True}, "num_workers": workers})

    kept = [segments.new_segment(cfg(0), 0)]
    assert segments.continue_segments(cfg(1), kept, 3, "ck", explicit=False)[-1]["starts"] == 2
    with pytest.raises(TuneloopError, match=r"num_workers: null -> 2"):
        segments.continue_segments(cfg(2), kept, 3, "ck", explicit=False)
    two = [segments.new_segment(cfg(2), 0)]
    with pytest.raises(TuneloopError, match=r"num_workers: 2 -> 3"):
        segments.continue_segments(cfg(3), two, 3, "ck", explicit=False)
    in_memory = load_config(TrainConfig, {"data": {"path": "d", "streaming": False}, "num_workers": 4})
    assert "num_workers" not in segments.shaping_values(in_memory)
    assert segments.continue_segments(cfg("auto"), kept, 3, "ck", explicit=False)[-1]["starts"] == 2


def test_auto_workers_are_one_when_streaming_on_cuda_only():
    assert load_config(TrainConfig, {"data": {"path": "d"}}).num_workers == "auto"
    assert data_workers("auto", True, "cuda:0") == 1
    assert data_workers("auto", True, "cpu") == 0 and data_workers("auto", False, "cuda") == 0
    assert data_workers(3, True, "cpu") == 3 and data_workers(3, False, "cpu") == 0
    with pytest.raises(ConfigError, match=r"num_workers.*0 or more, or auto"):
        load_config(TrainConfig, {"data": {"path": "d"}, "num_workers": -1})


def test_a_run_with_workers_gives_the_same_batches_twice(tiny_llama, tmp_path, monkeypatch):
    data = write_sharded(tmp_path / "d", sft_rows(30), shard_rows=7)
    kw = {"max_steps": 4, "data.streaming": "true", "data.shuffle_buffer": 5, "num_workers": 2,
          "batch.global_batch": 3, "batch.micro_batch": 3}  # fmt: skip
    seen = record_batches(monkeypatch)
    first = train(tiny_llama, data, tmp_path / "a", **kw)
    once = list(seen)
    seen.clear()
    second = train(tiny_llama, data, tmp_path / "b", **kw)
    assert len(once) == 4 and seen == once
    assert second.metrics["train_loss"] == first.metrics["train_loss"]


def test_a_run_with_workers_stopped_mid_step_resumes_to_the_uninterrupted_batches(
    tiny_llama, tmp_path, monkeypatch
):
    data = write_sharded(tmp_path / "d", sft_rows(30), shard_rows=7)
    # 3 examples a step over 2 workers: the checkpoint at step 5 has worker 1 next in turn
    kw = {"max_steps": 8, "data.streaming": "true", "data.shuffle_buffer": 5, "checkpoint.every": 3,
          "num_workers": 2, "batch.global_batch": 3, "batch.micro_batch": 3}  # fmt: skip
    seen = record_batches(monkeypatch)
    full = train(tiny_llama, data, tmp_path / "full", **kw)
    uninterrupted = list(seen)
    seen.clear()
    original = trainer_module.Trainer._my_examples

    def stop_at_5(self, step):  # the trainer's side: the workers have already made the next examples
        mine = original(self, step)
        if step == 5:
            raise KeyboardInterrupt
        return mine

    monkeypatch.setattr(trainer_module.Trainer, "_my_examples", stop_at_5)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_llama, data, tmp_path / "cut", **kw)
    state = json.loads((tmp_path / "cut" / "checkpoints" / "step-00000005" / "state.json").read_text())
    assert state["data_position"]["ranks"][0]["next"] == 1
    monkeypatch.setattr(trainer_module.Trainer, "_my_examples", original)
    resumed = train(tiny_llama, data, tmp_path / "cut", **kw)  # resume=auto
    assert seen == uninterrupted, "the stopped and resumed run saw other batches"
    assert [x for _, x in resumed.metrics["train_loss"]] == pytest.approx(
        [x for _, x in full.metrics["train_loss"]], rel=1e-5
    )


# ---------------------------------------------------------------- mixes


def test_mixture_token_shares_follow_the_weights(tiny_llama, tmp_path):
    tok = load_tokenizer(tiny_llama)
    short = write_sharded(tmp_path / "short", text_rows(30), shard_rows=10)
    long = write_sharded(tmp_path / "long", text_rows(20, width=40), shard_rows=10)
    m = Mixture([stream(short, tok), stream(long, tok)], [Entry("short", 0.7), Entry("long", 0.3)], 50)
    m.take(600)
    assert m.shares()["short"] == pytest.approx(0.7, abs=0.01)
    assert m.shares()["long"] == pytest.approx(0.3, abs=0.01)


def test_mix_run_records_normalized_weights_and_token_shares(tiny_llama, tmp_path):
    short = write_sharded(tmp_path / "short", text_rows(30), shard_rows=10)
    long = write_sharded(tmp_path / "long", text_rows(20, width=40), shard_rows=10)
    mix = f"[{{path: {short}, weight: 7}}, {{path: {long}, weight: 3}}]"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = train(
        tiny_llama, None, tmp_path / "run", objective="pretrain", max_steps=12,
        **{"data.mix": mix, "batch.global_batch": 16, "batch.micro_batch": 16,
           "tracking.mlflow": "true", "tracking.tracking_uri": uri, "tracking.system_metrics": "false"},
    )  # fmt: skip
    shares = result.metrics["data_mix_token_share"]
    assert shares[str(short)] == pytest.approx(0.7, abs=0.01)
    assert shares[str(long)] == pytest.approx(0.3, abs=0.01)
    import mlflow

    params = mlflow.MlflowClient(uri).get_run(result.mlflow_run_id).data.params
    assert params["run.mix.0.weight"] == "0.7" and params["run.mix.1.path"] == str(long)
    lineage = json.loads((tmp_path / "run" / "run.json").read_text())["dataset"]
    assert [p["weight"] for p in lineage["mix"]] == [0.7, 0.3]


def test_mix_weight_must_be_positive():
    with pytest.raises(ConfigError, match=r"data\.mix\[1\]\.weight.*greater than 0"):
        load_config(TrainConfig, {"data": {"mix": [{"path": "a", "weight": 1}, {"path": "b", "weight": 0}]}})


def test_mix_entry_that_does_not_exist_is_named(tiny_llama, tmp_path):
    good = write_sharded(tmp_path / "good", text_rows(10), shard_rows=5)
    mix = f"[{{path: {good}, weight: 1}}, {{path: {tmp_path / 'nope'}, weight: 1}}]"
    with pytest.raises(TuneloopError, match=r"data\.mix\[1\] \(path '.*nope'\)"):
        train(tiny_llama, None, tmp_path / "run", objective="pretrain", **{"data.mix": mix})


def test_bad_streaming_settings_are_refused():
    with pytest.raises(ConfigError, match="cannot stream"):
        load_config(TrainConfig, {"objective": "kto", "data": {"path": "x", "streaming": True}})
    with pytest.raises(ConfigError, match="not both"):
        load_config(TrainConfig, {"data": {"path": "x", "mix": [{"path": "a", "weight": 1}]}})
    with pytest.raises(ConfigError, match=r"data\.mix is read streamed"):
        load_config(TrainConfig, {"data": {"mix": [{"path": "a", "weight": 1}], "streaming": False}})
    with pytest.raises(ConfigError, match=r"data\.path is required"):
        load_config(TrainConfig, {"data": {"max_length": 64}})


def test_auto_streams_urls_and_large_sharded_datasets_only(tmp_path):
    from tuneloop.train.streaming import is_large

    small = write_sharded(tmp_path / "small", text_rows(10), shard_rows=5)
    assert not is_large(open_split(str(small), "train"), None)
    big = open_split(str(small), "train").__class__("train", ("x",), 250_000, location=str(small))
    assert is_large(big, None) and not is_large(big, 1000)
    assert is_large(open_split(f"file://{small}", "train"), None)


# ---------------------------------------------------------------- memory


def _rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def _stream_all(s: ShardStream, n: int, tok) -> tuple[set[int], float]:
    s.next()
    start, rows = _rss_mb(), set()
    peak = start
    for i in range(n - 1):
        example = s.next()
        if i % 997 == 0:
            rows.add(row_of(tok, example))
        if i % 5000 == 0:
            peak = max(peak, _rss_mb())
    return rows, max(peak, _rss_mb()) - start


def test_streaming_50k_rows_keeps_memory_flat(tiny_llama, tmp_path):
    tok = load_tokenizer(tiny_llama)
    data = write_sharded(tmp_path / "d", text_rows(50_000, width=120), shard_rows=5_000)
    size_mb = sum(p.stat().st_size for p in (data / "train").glob("*.jsonl")) / 2**20
    s = stream(data, tok, buffer=500)
    _, growth = _stream_all(s, 50_000, tok)
    assert s.position.epoch == 0 and s.position.window == 99
    assert growth < 8, f"RSS grew {growth:.1f} MB streaming {size_mb:.1f} MB of rows"


def test_streaming_from_s3_covers_rows_with_flat_memory(tiny_llama, tmp_path, s3_env):
    import boto3

    data = write_sharded(tmp_path / "d", text_rows(6_000, width=60), shard_rows=1_000)
    s3 = boto3.client("s3", endpoint_url=s3_env)
    s3.create_bucket(Bucket="stream")
    for p in sorted(data.rglob("*")):
        if p.is_file():
            s3.upload_file(str(p), "stream", f"ds/{p.relative_to(data)}")
    tok = load_tokenizer(tiny_llama)
    s = stream("s3://stream/ds", tok, buffer=300)
    seen = [row_of(tok, s.next()) for _ in range(6_000)]
    assert sorted(seen) == list(range(6_000))
    _, growth = _stream_all(s, 6_000, tok)
    assert growth < 8, f"RSS grew {growth:.1f} MB streaming from S3"


# ---------------------------------------------------------------- two processes (gloo)

RANKS_SCRIPT = """
import json, sys
from tuneloop.config import load_config
from tuneloop.models.loading import load_tokenizer
from tuneloop.train import distributed, sources
from tuneloop.train.config import TrainConfig

cfg = load_config(TrainConfig, None, sys.argv[2:])
d = distributed.init("cpu")
tok = load_tokenizer(cfg.model)
mixture = sources.open_stream(cfg, sources.read(cfg), tok, d, "cpu")
share = len(range(d.rank, 50, d.world))
mine = [int(tok.decode(e.input_ids).split()[1]) for e in mixture.take(share)]
every = distributed.gather_objects(mine, d)
if d.main:
    open(sys.argv[1], "w").write(json.dumps({"ranks": every, "estimate": mixture.estimated_examples}))
distributed.shutdown(d)
"""


@pytest.mark.slow
def test_two_gloo_processes_see_disjoint_rows_covering_the_dataset(tiny_llama, tmp_path):
    data = write_sharded(tmp_path / "d", text_rows(50), shard_rows=7)
    script = tmp_path / "ranks.py"
    script.write_text(RANKS_SCRIPT)
    out = tmp_path / "ranks.json"
    args = [f"model={tiny_llama}", f"data.path={data}", "objective=pretrain", "data.streaming=true",
            "data.shuffle_buffer=6"]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(out), *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # its own process group: on a timeout the ranks go with torchrun instead of outliving the test
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    found = json.loads(out.read_text())
    a, b = found["ranks"]
    assert len(a) == 25 and len(b) == 25
    assert set(a).isdisjoint(b) and sorted(a + b) == list(range(50))
    assert found["estimate"] == 50
