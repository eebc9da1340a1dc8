"""Readers: formats, encodings, gzip, and bad input reported with file, line and reason."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tuneloop.data.config import InputConfig
from tuneloop.data.readers import FileReader, list_inputs
from tuneloop.data.readers.encoding import detect_encoding
from tuneloop.data.stats import Stats
from tuneloop.errors import TuneloopError

ZH = "机器学习模型需要高质量的数据。北京是中国的首都，也是文化中心。"


def read(path: Path, **cfg) -> tuple[list, Stats, FileReader]:
    stats = Stats()
    (file,) = list_inputs([str(path)], InputConfig(**cfg))
    reader = FileReader(file, InputConfig(**cfg), stats)
    return list(reader), stats, reader


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gbk", "gb18030", "utf-16"])
def test_text_file_decodes_chinese_in_any_common_encoding(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "doc.txt"
    path.write_bytes((ZH * 3).encode(encoding))
    records, stats, _ = read(path)
    assert records == [(1, ZH * 3)]
    assert stats.skips == []


def test_detect_encoding_maps_gbk_family_to_gb18030() -> None:
    assert detect_encoding((ZH * 4).encode("gbk")) == "gb18030"
    assert detect_encoding(b"plain ascii") == "utf-8"
    assert detect_encoding("\ufeffhi".encode("utf-16")) == "utf-16"


def test_jsonl_gz_rows_with_line_numbers_and_sha256(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl.gz"
    payload = b'{"text": "a"}\n\n{"text": "b"}\n'
    path.write_bytes(gzip.compress(payload, mtime=0))
    records, _stats, reader = read(path)
    assert records == [(1, {"text": "a"}), (3, {"text": "b"})]
    import hashlib

    assert reader.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_utf16_jsonl_is_split_into_lines(tmp_path: Path) -> None:
    path = tmp_path / "wide.jsonl"
    path.write_bytes(('{"text": "一"}\n{"text": "二"}\n').encode("utf-16"))
    records, _, _ = read(path)
    assert [r for _, r in records] == [{"text": "一"}, {"text": "二"}]


def test_csv_json_and_parquet_rows(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text('id,text\n1,"multi\nline, quoted"\n2,second\n')
    (tmp_path / "t.json").write_text(json.dumps([{"text": "x"}, {"text": "y"}]))
    pq.write_table(pa.table({"text": ["p", "q"]}), tmp_path / "t.parquet")
    assert [r["text"] for _, r in read(tmp_path / "t.csv")[0]] == ["multi\nline, quoted", "second"]
    assert read(tmp_path / "t.json")[0] == [(1, {"text": "x"}), (2, {"text": "y"})]
    assert read(tmp_path / "t.parquet")[0] == [(1, {"text": "p"}), (2, {"text": "q"})]


def test_html_keeps_main_text_and_drops_navigation_and_scripts(tmp_path: Path) -> None:
    path = tmp_path / "p.html"
    path.write_text(
        "<html><head><script>var secret = 1;</script></head><body><nav>Home | Login</nav><article>"
        "<p>The refund policy allows returns within thirty days of delivery for unused items.</p>"
        "<p>Contact support to start a return and print the prepaid shipping label.</p></article></body></html>"
    )
    for extractor in ("trafilatura", "plain"):
        ((_, text),), _, _ = read(path, html_extractor=extractor)
        assert "refund policy" in text and "prepaid shipping label" in text
        assert "secret" not in text and "Login" not in text


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty.txt", b"", "empty file"),
        ("bin.txt", b"abc\x00\x01\x02" * 10, "binary"),
        ("bad.jsonl.gz", b"not gzip at all", "not gzip"),
        ("x.parquet", b"PAR1garbage", "Parquet"),
        ("x.exe", b"MZ", "unsupported file type"),
    ],
)
def test_bad_files_are_reported_not_raised(tmp_path: Path, name: str, data: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    records, stats, _ = read(path)
    assert records == []
    assert len(stats.skips) == 1
    assert stats.skips[0].file.endswith(name) and reason in stats.skips[0].reason


def test_truncated_gzip_keeps_the_lines_before_the_damage(tmp_path: Path) -> None:
    path = tmp_path / "trunc.jsonl.gz"
    lines = "".join(
        json.dumps({"text": f"row {i} {i * 7919 % 10007} {i * 104729 % 1299709}"}) + "\n" for i in range(2000)
    )
    path.write_bytes(gzip.compress(lines.encode(), mtime=0)[:4000])
    records, stats, _ = read(path)
    assert len(records) > 50 and records[0] == (1, {"text": "row 0 0 0"})
    assert any("corrupt or truncated gzip" in s.reason and s.line == len(records) + 1 for s in stats.skips)


def test_bad_lines_are_skipped_one_by_one_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    good = "".join(f'{{"text": "ok {i} 中文"}}\n' for i in range(300)).encode()
    path.write_bytes(good + b'{broken\n{"text": "\xff\xfe"}\n{"text": "last"}\n')
    records, stats, _ = read(path)
    assert len(records) == 301 and records[-1] == (303, {"text": "last"})
    assert [(s.line, s.reason.split(":")[0]) for s in stats.skips] == [
        (301, "invalid JSON"),
        (302, "cannot decode as utf-8"),
    ]


def test_list_inputs_expands_folders_and_globs_sorted(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    for name in ("b/z.txt", "a.jsonl", "b/y.md"):
        (tmp_path / name).write_text("x")
    files = list_inputs([str(tmp_path)], InputConfig())
    assert [f.name for f in files] == [f"{tmp_path}/a.jsonl", f"{tmp_path}/b/y.md", f"{tmp_path}/b/z.txt"]
    globbed = list_inputs([str(tmp_path / "b" / "*.md")], InputConfig())
    assert [f.format for f in globbed] == ["text"]
    with pytest.raises(TuneloopError, match="does not exist"):
        list_inputs([str(tmp_path / "missing")], InputConfig())


def test_large_text_file_is_streamed_as_paragraph_documents(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    paragraphs = [f"段落 {i}：这是第{i}段的内容。\nsecond line of paragraph {i}\n" for i in range(40)]
    path.write_text("\n".join(paragraphs), encoding="utf-8")
    records, stats, _ = read(path, max_document_mb=0.0004)  # 400 bytes: far smaller than the file
    assert len(records) > 5 and stats.skips == []
    assert "".join(text for _, text in records).replace("\n", "") == "".join(paragraphs).replace("\n", "")
    lines = path.read_text(encoding="utf-8").split("\n")
    for line, text in records:  # each document starts at the line it says
        assert lines[line - 1] == text.split("\n")[0]
    whole, _, _ = read(path)
    assert len(whole) == 1
