"""Cleaning and quality filters, with Chinese text."""

from __future__ import annotations

from tuneloop.data.clean import Cleaner, QualityFilter, clean_text, duplicate_ngram_fraction
from tuneloop.data.config import CleanConfig, QualityConfig
from tuneloop.data.document import Doc
from tuneloop.data.stats import Stats


def test_clean_text_normalizes_unicode_controls_and_whitespace() -> None:
    raw = "Cafe\u0301\u200b  costs\t\t5\u00a0EUR.\r\n\r\n\r\n\r\n  indented\x07 line   \n"
    assert clean_text(raw, CleanConfig()) == "Café costs 5 EUR.\n\n  indented line"


def test_nfc_keeps_chinese_punctuation_but_nfkc_folds_it() -> None:
    text = "你好，世界！　全角"
    assert clean_text(text, CleanConfig()) == "你好，世界！ 全角"
    assert clean_text(text, CleanConfig(normalization="NFKC")) == "你好,世界! 全角"


def test_cleaner_rewrites_every_message_but_not_roles() -> None:
    doc = Doc(
        0,
        0,
        "x:1",
        {
            "messages": [
                {"role": "user", "content": " hi\u200b "},
                {"role": "assistant", "content": "yo  there"},
            ]
        },
    )
    (out,) = Cleaner(CleanConfig())([doc], Stats())
    assert out.row["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo there"},
    ]


def _reasons(texts: list[str], **cfg) -> list[str | None]:
    f = QualityFilter(QualityConfig(**cfg))
    return [f.reason(Doc(0, i, f"x:{i}", {"text": t})) for i, t in enumerate(texts)]


def test_quality_filters_name_their_reason() -> None:
    good_en = "The quarterly report shows revenue grew in every region, led by strong demand in Asia."
    good_zh = "机器学习模型需要高质量的数据，北京是中国的首都，也是政治和文化的中心。"
    texts = [
        good_en,
        good_zh,
        "短文本",
        "#### $$$ %%% &&& *** @@@ !!! ((( ))) ### $$$ %%% ok",
        "same line\n" * 10,
        "买买买买买" * 30,
    ]
    assert _reasons(texts) == [None, None, "too_short", "symbol_ratio", "repeated_lines", "repeated_ngrams"]


def test_length_counts_characters_not_words_for_chinese() -> None:
    # 25 Chinese characters and no spaces: long enough, although it is a single "word"
    assert _reasons(["北京是中国的首都也是政治和文化的中心城市之一啊"], min_chars=20) == [None]


def test_repeated_ngrams_use_characters_for_cjk() -> None:
    assert duplicate_ngram_fraction("天气很好" * 20, 5) > 0.9
    assert (
        duplicate_ngram_fraction("机器学习模型需要高质量的数据北京是中国的首都也是政治和文化的中心", 5) == 0.0
    )


def test_quality_filter_counts_drops_by_reason() -> None:
    stats = Stats()
    docs = [
        Doc(0, i, f"x:{i}", {"text": t})
        for i, t in enumerate(["tiny", "x " * 3, "A normal sentence that is long enough to keep."])
    ]
    kept = list(QualityFilter(QualityConfig())(docs, stats))
    assert len(kept) == 1 and stats.removed == {"quality.too_short": 2} and stats.counts["quality"] == 1
