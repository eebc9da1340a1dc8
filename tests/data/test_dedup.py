"""Exact and near-duplicate detection, English and Chinese, and the keep-the-first rule."""

from __future__ import annotations

import numpy as np
import pytest

from tuneloop.data.config import DedupConfig
from tuneloop.data.dedup import (
    MinHasher,
    bucket_edges,
    exact_duplicates,
    exact_hash,
    group_edges,
    resolve_clusters,
)

EN = (
    "The quarterly report shows that revenue grew in every region, led by strong demand in Asia and a "
    "recovery in European sales after two slow years; margins improved as shipping costs fell."
)
ZH = (
    "机器学习模型需要大量高质量的训练数据。我们在清洗数据时会去除重复内容、过滤低质量文本，"
    "并对个人信息进行脱敏处理，以确保模型的安全性和可靠性。"
)


def similarity(a: str, b: str) -> float:
    h = MinHasher(DedupConfig())
    return float(np.mean(h.signature(a) == h.signature(b)))


def test_exact_hash_ignores_case_spacing_and_punctuation() -> None:
    assert exact_hash("Hello,  World!") == exact_hash("hello world")
    assert exact_hash("你好，世界。") == exact_hash("你好 世界")
    assert exact_hash("hello world") != exact_hash("hello word")


def test_minhash_estimates_high_similarity_for_near_copies_in_english_and_chinese() -> None:
    assert similarity(EN, EN.replace("every region", "each region")) > 0.8
    assert similarity(ZH, ZH.replace("大量", "海量")) > 0.8  # character shingles: no word split needed


def test_minhash_keeps_unrelated_texts_apart() -> None:
    assert similarity(EN, ZH) < 0.1
    assert similarity(ZH, "北京是中国的首都，也是全国的政治中心和文化中心，拥有三千多年的建城史。") < 0.3


def test_signature_is_deterministic_for_a_seed_and_changes_with_it() -> None:
    a, b = MinHasher(DedupConfig()), MinHasher(DedupConfig())
    assert np.array_equal(a.signature(EN), b.signature(EN))
    assert not np.array_equal(a.signature(EN), MinHasher(DedupConfig(seed=7)).signature(EN))


def test_exact_duplicates_keep_the_first_in_canonical_order() -> None:
    removed = exact_duplicates(
        [(5, (1, 0), "b:1"), (5, (0, 3), "a:4"), (9, (0, 1), "a:2"), (5, (2, 0), "c:1")]
    )
    assert removed == {(1, 0): ((0, 3), "b:1", "a:4"), (2, 0): ((0, 3), "c:1", "a:4")}


def test_clusters_are_transitive_and_keep_the_smallest_order() -> None:
    edges = [((0, 5), (0, 2), 0.9), ((0, 2), (0, 1), 0.85), ((3, 0), (2, 0), 0.95)]
    assert resolve_clusters(edges) == {(0, 2): ((0, 1), 0.85), (0, 5): ((0, 1), 0.9), (3, 0): ((2, 0), 0.95)}


def test_bucket_edges_are_verified_against_the_threshold() -> None:
    h = MinHasher(DedupConfig())
    members = [((0, 0), h.signature(EN)), ((0, 1), h.signature(EN + " Thanks.")), ((0, 2), h.signature(ZH))]
    edges = group_edges(members, 0.8)
    assert [(a, b) for a, b, _ in edges] == [((0, 1), (0, 0))]


def test_chat_rows_sharing_a_long_system_prompt_are_not_near_duplicates(tmp_path, make_cfg) -> None:
    import json

    from tuneloop.data import prepare

    system = "You are the support assistant of ACME. " + EN * 4
    questions = [
        "How do I reset my password?",
        "Where is my parcel?",
        "Can I pay by invoice?",
        "我想退货怎么办？",
    ]
    rows = [
        {
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": q},
                {"role": "assistant", "content": f"Answer {i}: see the help page."},
            ]
        }
        for i, q in enumerate(questions)
    ]
    rows.append(
        rows[0] | {"messages": [{"role": "system", "content": "Other prompt."}, *rows[0]["messages"][1:]]}
    )
    (tmp_path / "chat.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    m = prepare([str(tmp_path / "chat.jsonl")], tmp_path / "out", make_cfg(kind="sft"), workers=1)
    assert m["removed"] == {"dedup.exact": 1}  # only the same conversation under another system prompt
    assert m["counts"]["documents"] == 4


def test_a_pair_is_found_even_when_its_bucket_starts_with_an_unrelated_document() -> None:
    sig = lambda *values: np.array(values, dtype=np.uint32)  # noqa: E731
    members = [((0, 0), sig(1, 2, 3, 4)), ((0, 1), sig(1, 9, 9, 9)), ((0, 2), sig(1, 9, 9, 8))]
    assert group_edges(members, 0.7) == [((0, 2), (0, 1), 0.75)]


@pytest.mark.parametrize("max_reps", [256, 3])
def test_bucket_edges_are_group_edges_of_every_bucket(max_reps: int) -> None:
    """The batched verification (local engine) gives exactly the per-bucket loop's edges (Spark engine)."""
    rng = np.random.default_rng(0)
    k = 32
    base = rng.integers(0, 2**32, size=(40, k), dtype=np.uint32)
    sigs = np.repeat(base, 5, axis=0)  # families of near-copies: each copy changes a few values
    flip = rng.random(sigs.shape) < rng.choice([0.02, 0.1, 0.3], size=(len(sigs), 1))
    sigs[flip] = rng.integers(0, 2**32, size=int(flip.sum()), dtype=np.uint32)
    groups = []
    for _ in range(300):  # buckets of every size, related and unrelated members, some repeated
        size = int(rng.choice([2, 2, 2, 3, 4, 7, 16, 65, 90, 150]))
        groups.append(np.sort(rng.choice(len(sigs), size=size, replace=False)))
    groups += groups[:20]
    want = set()
    for g in groups:
        want.update(group_edges([(int(j), sigs[j]) for j in g], 0.8, max_reps))
    got = bucket_edges(groups, sigs, 0.8, max_reps)
    assert set(got) == want and len(want) > 20


@pytest.mark.parametrize(("num_perm", "bands", "shingle"), [(128, 16, 5), (96, 12, 3)])
def test_batched_signatures_equal_one_by_one(num_perm: int, bands: int, shingle: int) -> None:
    hasher = MinHasher(DedupConfig(num_perm=num_perm, bands=bands, shingle_size=shingle))
    rng = np.random.default_rng(1)
    alphabet = list("ab cd中文x")
    for _ in range(100):
        sizes = rng.choice([0, 1, 2, 3, 4, 5, 6, 10, 50, 300], size=int(rng.integers(1, 20)))
        texts = ["".join(rng.choice(alphabet, size=int(s))) for s in sizes]  # empty and short texts too
        want = np.stack([hasher.signature(t, t) for t in texts])
        assert (hasher.signatures(texts) == want).all()
