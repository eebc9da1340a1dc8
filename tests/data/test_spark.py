"""The Spark engine gives byte-identical datasets to the local engine, with global near-dup removal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shards import all_files, prose

from tuneloop.data import prepare

STORY = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk, trimmed the wick, polished the "
    "great lens and wrote the weather into a leather logbook that had belonged to his grandfather."
)


def _assert_same(a: Path, b: Path) -> None:
    fa, fb = all_files(a), all_files(b)
    assert sorted(fa) == sorted(fb) and "manifest.json" in fa
    for name in fa:
        assert fa[name] == fb[name], name


def test_local_and_spark_give_the_same_dataset(
    spark_master: str, mixed_corpus: Path, bad_corpus: Path, make_cfg, tmp_path: Path
) -> None:
    inputs = [str(mixed_corpus), str(bad_corpus)]
    local = prepare(inputs, tmp_path / "local", make_cfg(), workers=2)
    spark = prepare(inputs, tmp_path / "spark", make_cfg(), engine="spark", spark_master=spark_master)
    _assert_same(tmp_path / "local", tmp_path / "spark")
    assert spark["run"]["engine"] == "spark" and local["fingerprint"] == spark["fingerprint"]
    assert spark["skipped"]["total"] > 5 and spark["removed"]["dedup.exact"] >= 2


def test_spark_removes_near_duplicates_across_partitions(spark_master: str, make_cfg, tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    corpus.mkdir()
    # one partition per file: the copy lives in another partition than its original
    (corpus / "a.txt").write_text(STORY)
    (corpus / "b.txt").write_text(
        "完全不同的一篇文章，讲的是山区小学的老师如何带着学生们种树，十年后山坡变成了森林。"
    )
    (corpus / "c.txt").write_text(STORY.replace("every evening", "each evening"))
    for engine in ("local", "spark"):
        m = prepare(
            [str(corpus)], tmp_path / engine, make_cfg(), engine=engine, spark_master=spark_master, workers=2
        )
        assert m["removed"] == {"dedup.near": 1}
        (pair,) = m["dedup"]["near"]["pairs"]
        assert pair["removed"].endswith("c.txt:1") and pair["kept"].endswith("a.txt:1")
    _assert_same(tmp_path / "local", tmp_path / "spark")


def test_spark_sft_dataset_matches_local(spark_master: str, make_cfg, tmp_path: Path) -> None:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"问题 {i}：今天天气怎么样？"},
                {"role": "assistant", "content": f"回答 {i}：晴天。"},
            ]
        }
        for i in range(30)
    ]
    (tmp_path / "chat.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    cfg = make_cfg(kind="sft", dedup__near=False)
    prepare([str(tmp_path / "chat.jsonl")], tmp_path / "local", cfg, workers=1)
    prepare(
        [str(tmp_path / "chat.jsonl")], tmp_path / "spark", cfg, engine="spark", spark_master=spark_master
    )
    _assert_same(tmp_path / "local", tmp_path / "spark")


def test_spark_reads_and_writes_s3_across_partitions_with_global_dedup(
    spark_master: str, s3_endpoint: str, make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """10 input files = 10 partitions; an exact and a near copy planted in other partitions than
    their originals are caught; Spark writes the shards to S3 itself, and they equal the local
    engine's byte for byte."""
    import boto3

    creds = {"key": "testing", "secret": "testing"}  # explicit: the Spark workers started earlier
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="raw")
    s3.create_bucket(Bucket="out")
    docs = {f: [prose(f * 100 + d, 4) for d in range(6)] for f in range(10)}
    docs[7][3] = docs[0][1]  # exact copy, 7 partitions later
    words = docs[4][5].split(" ")
    docs[9][2] = " ".join([*words[:5], "different", *words[6:]])  # near copy (one word changed)
    for f, texts in docs.items():
        body = "".join(json.dumps({"text": t}) + "\n" for t in texts)
        s3.put_object(Bucket="raw", Key=f"c/f{f:02d}.jsonl", Body=body.encode())
    cfg = make_cfg(
        input__endpoint_url=s3_endpoint,
        input__storage_options=creds,
        output__endpoint_url=s3_endpoint,
        output__storage_options=creds,
        output__shard_rows=4,
    )
    local = prepare(["s3://raw/c"], tmp_path / "local", cfg, workers=2)
    spark = prepare(["s3://raw/c"], "s3://out/ds", cfg, engine="spark", spark_master=spark_master)
    for m in (local, spark):
        assert m["removed"] == {"dedup.exact": 1, "dedup.near": 1}
        assert m["dedup"]["exact"]["pairs"] == [
            {"removed": "s3://raw/c/f07.jsonl:4", "kept": "s3://raw/c/f00.jsonl:2"}
        ]
        assert m["dedup"]["near"]["pairs"][0]["removed"] == "s3://raw/c/f09.jsonl:3"
    assert len(spark["shards"]["train"]) > 5 and spark["outputs"] == local["outputs"]
    assert spark["fingerprint"] == local["fingerprint"]
    for name in spark["outputs"]:
        body = s3.get_object(Bucket="out", Key=f"ds/{name}")["Body"].read()
        assert body == (tmp_path / "local" / name).read_bytes(), name
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="out")["Contents"]}
    assert not [k for k in keys if ".tuneloop-tmp" in k] and "ds/manifest.json" in keys
