"""Fixtures for the data pipeline tests: a tokenizer folder, configs, corpora (mixed, bad) and Spark."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textgen import random_text

from tuneloop.data.config import DataConfig

ROOT = Path(__file__).parents[2]

EN = (
    "Machine learning models need clean data. Our support team answers billing questions within a day. "
    "Refunds are processed to the original payment method after the returned item is inspected."
)
EN_MORE = "Gift cards cannot be exchanged for cash. Warranty claims need the serial number printed under the battery."
ZH_MORE = "礼品卡不能兑换现金。保修申请需要提供电池下方印刷的序列号，以及购买凭证的照片。"
ZH = "机器学习模型需要高质量的数据。我们的客服团队会在一天内回答账单问题！退款将在检查退回的商品后原路退回。"


@pytest.fixture(scope="session")
def tok_dir(tiny_llama: Path) -> str:
    return str(tiny_llama)


@pytest.fixture
def make_cfg(tok_dir: str) -> Callable[..., DataConfig]:
    def make(**overrides: Any) -> DataConfig:
        data: dict[str, Any] = {"tokenizer": tok_dir, "chunk": {"max_tokens": 64}}
        for key, value in overrides.items():
            section, _, field = key.partition("__")
            if field:
                data.setdefault(section, {})[field] = value
            else:
                data[key] = value
        return DataConfig.model_validate(data)

    return make


def write_mixed_corpus(root: Path) -> Path:
    """A small corpus of every supported format, with an exact copy, a near copy, PII and junk."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "docs").mkdir()
    (root / "docs" / "guide.md").write_text(
        f"# Guide\n\n{EN}\n\n{EN_MORE}\n\nEmail help@example.com for help.\n"
    )
    (root / "docs" / "zh.txt").write_text(f"{ZH}\n\n{ZH_MORE}\n\n联系电话：13812345678。\n", encoding="utf-8")
    gbk = "北京是中国的首都，也是政治和文化中心。上海是中国最大的经济城市之一，金融业十分发达。"
    (root / "docs" / "zh-gbk.txt").write_bytes(gbk.encode("gbk"))
    (root / "docs" / "page.html").write_text(
        "<html><head><script>track()</script><style>p{}</style></head><body><nav>Home | Pricing | Login</nav>"
        "<article><h1>Shipping policy</h1><p>Orders ship within two business days from our warehouse in Lyon.</p>"
        "<p>Tracking numbers are emailed as soon as the carrier scans the parcel.</p></article>"
        "<footer>Copyright 2026</footer></body></html>"
    )
    rows = [
        {"text": "Server 10.0.0.12 handles the payment queue; it restarts nightly at two in the morning."},
        {
            "text": "Server 10.0.0.12 handles the payment queue; it restarts nightly at two in the morning."
        },  # exact dup
        {
            "text": "SERVER 10.0.0.12 handles the payment queue -- it restarts nightly at two in the morning!"
        },  # normalized dup
        {"text": "too short"},
        {"text": "buy now " * 40},
        {
            "text": "The warehouse inventory is reconciled every Friday against the purchase orders and invoices."
        },
        {
            "text": "The warehouse inventory is reconciled every Friday against the purchase orders and the invoices."
        },
    ]
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    (root / "rows.jsonl.gz").write_bytes(gzip.compress(payload, mtime=0))  # mtime=0: same bytes every run
    (root / "table.csv").write_text(
        'id,text\n1,"A customer asked, in writing, whether the warranty covers water damage to the screen."\n'
    )
    (root / "list.json").write_text(
        json.dumps(
            {"data": [{"text": "身份证号11010519491231002X已登记，请勿外传给任何第三方人员或机构。"}]},
            ensure_ascii=False,
        )
    )
    return root


@pytest.fixture
def mixed_corpus(tmp_path: Path) -> Path:
    return write_mixed_corpus(tmp_path / "corpus")


def write_bad_corpus(root: Path) -> Path:
    """Every kind of bad input next to one good file."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "good.jsonl").write_text(json.dumps({"text": EN}) + "\n")
    (root / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    lines = "".join(
        json.dumps({"text": f"line {i} {hashlib.sha256(str(i).encode()).hexdigest()}"}) + "\n"
        for i in range(400)
    )
    (root / "corrupt.jsonl.gz").write_bytes(gzip.compress(lines.encode(), mtime=0)[:1500])  # cut mid-stream
    (root / "notgzip.jsonl.gz").write_bytes(b'{"text": "plain"}\n')
    (root / "empty.txt").write_bytes(b"")
    (root / "lines.jsonl").write_text(
        json.dumps({"text": ZH}, ensure_ascii=False)
        + "\n{not json\n[1, 2]\n"
        + json.dumps({"body": "no text field"})
        + "\n"
    )
    short = "".join(json.dumps({"text": f"短句{i}"}, ensure_ascii=False) + "\n" for i in range(250))
    (root / "badenc.jsonl").write_bytes(short.encode() + b'{"text": "\xff\xfe\xfa broken"}\n')

    (root / "image.png").write_bytes(b"\x89PNG\r\n")
    (root / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    return root


@pytest.fixture
def bad_corpus(tmp_path: Path) -> Path:
    return write_bad_corpus(tmp_path / "bad")


@pytest.fixture(scope="session")
def spark_master() -> str:
    """One local Spark context for the whole session (started once, ~10 s)."""
    pytest.importorskip("pyspark")
    if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
        pytest.skip("Spark needs a Java runtime (java on PATH or JAVA_HOME)")
    from tuneloop.data.executors.spark import spark_context

    spark_context("local[2]")
    return "local[2]"


def trained_bytelevel(tmp: Path, vocab: int) -> str:
    """A GPT-2 style byte-level BPE with a larger vocabulary than the tiny test model (merges across spaces: 'Ġword')."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    rng = random.Random(7)
    corpus = [random_text(rng, 200) for _ in range(400)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<|endoftext|>", "<|im_start|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tmp.mkdir(parents=True, exist_ok=True)
    tok.save(str(tmp / "tokenizer.json"))
    return str(tmp)


def local_smollm2() -> str | None:
    """The default model's tokenizer: from TUNELOOP_HOME, else the dev checkout's copy (.devcarry)."""
    from tuneloop.paths import home

    for folder in (home() / "models" / "smollm2-135m-instruct", ROOT / ".devcarry" / "smollm2-shape"):
        if (folder / "tokenizer.json").is_file():
            return str(folder)
    return None


@pytest.fixture(scope="module", params=["tiny", "bytelevel-2k", "smollm2"])
def fast_dir(request, tok_dir: str, tmp_path_factory) -> str:
    """Byte-level BPE tokenizers with the GPT-2 pre-tokenizer: the tiny test one, a trained 2k one, SmolLM2's."""
    if request.param == "tiny":
        return tok_dir
    if request.param == "bytelevel-2k":
        return trained_bytelevel(tmp_path_factory.mktemp("bl2k"), 2000)
    path = local_smollm2()
    if path is None:
        pytest.skip(
            "smollm2-135m-instruct is not in TUNELOOP_HOME (the tiny and trained tokenizers still run)"
        )
    return path
