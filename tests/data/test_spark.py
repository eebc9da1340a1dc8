"""The Spark engine gives byte-identical datasets to the local engine, with global near-dup removal."""

from __future__ import annotations

import json
from pathlib import Path

from shards import all_files

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
