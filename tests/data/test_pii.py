"""PII detection: checksums, Chinese context, redaction placeholders, drop mode."""

from __future__ import annotations

import pytest

from tuneloop.data.config import PIIConfig
from tuneloop.data.document import Doc
from tuneloop.data.pii import PIIStep, find_pii, luhn_ok, redact, valid_cn_id
from tuneloop.data.stats import Stats


def test_chinese_id_checksum() -> None:
    assert valid_cn_id("11010519491231002X")
    assert valid_cn_id("110105194912310021") is False  # last digit wrong
    assert valid_cn_id("440524188001010014")


def test_luhn() -> None:
    assert luhn_ok("4111111111111111") and luhn_ok("6222020200112233440") is False
    assert luhn_ok("4111111111111112") is False


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("邮箱是zhang.san@example.com谢谢", "邮箱是<EMAIL>谢谢"),
        ("手机13812345678请回电", "手机<PHONE>请回电"),
        ("call +86 138-1234-5678 now", "call <PHONE> now"),
        ("call +44 20 7946 0958 now", "call <PHONE> now"),
        ("call (415) 555-0132 now", "call <PHONE> now"),
        ("身份证11010519491231002X已登记", "身份证<ID_CARD>已登记"),
        ("卡号4111 1111 1111 1111到期", "卡号<BANK_CARD>到期"),
        ("server 192.168.1.20 and 2001:db8::8a2e:370:7334 down", "server <IP> and <IP> down"),
    ],
)
def test_redacts_each_type_with_a_typed_placeholder(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "订单号110105194912310021",  # ID pattern, bad checksum
        "卡号4111 1111 1111 1112",  # card pattern, fails Luhn
        "version 1.2.3.4.5 and 999.1.1.1",  # not IPv4
        "meeting at 12:30:45",  # not IPv6
        "in 2026 we sold 12345 units",
    ],
)
def test_look_alikes_are_left_alone(text: str) -> None:
    assert find_pii(text) == []


def test_pii_step_counts_per_type_and_drop_mode_drops() -> None:
    doc = lambda: Doc(0, 0, "x:1", {"text": "a@b.io 或 a2@b.io, 电话13900001111"})  # noqa: E731
    stats = Stats()
    (out,) = PIIStep(PIIConfig())([doc()], stats)
    assert out.row["text"] == "<EMAIL> 或 <EMAIL>, 电话<PHONE>"
    assert stats.pii == {"email": 2, "phone": 1}
    stats = Stats()
    assert list(PIIStep(PIIConfig(mode="drop"))([doc()], stats)) == [] and stats.removed == {
        "pii.contains_pii": 1
    }
    assert next(iter(PIIStep(PIIConfig(mode="off"))([doc()], Stats()))).row["text"].startswith("a@b.io")
    only_phone = next(iter(PIIStep(PIIConfig(types=["phone"]))([doc()], Stats()))).row["text"]
    assert "a@b.io" in only_phone and "<PHONE>" in only_phone
