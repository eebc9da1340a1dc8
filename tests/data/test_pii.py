"""PII and secrets: each detector finds its items, and no look-alike class is ever touched.

Precision first: a false positive silently corrupts training text (`std::vector` -> `st<IP>vector`),
so every class of look-alike found in real technical and Chinese text has its own cases here.
"""

from __future__ import annotations

import json

import pytest

from tuneloop.config import load_config
from tuneloop.data.config import DataConfig, PIIConfig
from tuneloop.data.document import Doc
from tuneloop.data.pii import (
    PIIStep,
    find_pii,
    find_spans,
    luhn_ok,
    masked_context,
    redact,
    shape,
    valid_cn_id,
)
from tuneloop.data.pii_numbers import _ID_CHECK, _ID_WEIGHTS, card_issuer
from tuneloop.data.pii_secrets import looks_random
from tuneloop.data.stats import Stats
from tuneloop.errors import ConfigError


def test_chinese_id_checksum() -> None:
    assert valid_cn_id("11010519491231002X")
    assert valid_cn_id("110105194912310021") is False  # last digit wrong
    assert valid_cn_id("440524188001010014")


def test_luhn_and_issuer() -> None:
    assert luhn_ok("4111111111111111") and luhn_ok("6222020200112233440") is False
    assert luhn_ok("4111111111111112") is False
    assert card_issuer("4111111111111111") == "visa" and card_issuer("378282246310005") == "amex"
    assert (
        card_issuer("6222020200112233445") == "unionpay" and card_issuer("5555555555554444") == "mastercard"
    )
    assert card_issuer("1234567812345670") is None  # passes Luhn, no issuer starts with 1
    assert card_issuer("4111111111111") == "visa" and card_issuer("41111111111111") is None  # 13 yes, 14 no


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("邮箱是zhang.san@example.com谢谢", "邮箱是<EMAIL>谢谢"),
        ("Author-email: Jane Doe <jane.doe+pypi@mail.example.co.uk>", "Author-email: Jane Doe <<EMAIL>>"),
        ("手机13812345678请回电", "手机<PHONE>请回电"),
        ("联系电话：138-1234-5678。", "联系电话：<PHONE>。"),
        ("call +86 138-1234-5678 now", "call <PHONE> now"),
        ("热线 010-65529988，传真 (0755) 26543210", "热线 <PHONE>，传真 <PHONE>"),
        ("call +44 20 7946 0958 now", "call <PHONE> now"),
        ("Tel. +49 30 901820 (office)", "Tel. <PHONE> (office)"),
        ("call (415) 555-0132 now", "call <PHONE> now"),
        ("toll free 1-800-555-0199.", "toll free <PHONE>."),
        ("phone: 415.555.0132", "phone: <PHONE>"),  # dots need a phone word
        ("身份证11010519491231002X已登记", "身份证<ID_CARD>已登记"),
        ("卡号4111 1111 1111 1111到期", "卡号<BANK_CARD>到期"),
        ("card 4111-1111-1111-1111, amex 3782 822463 10005", "card <BANK_CARD>, amex <BANK_CARD>"),
        ("card_number=4111111111111111", "card_number=<BANK_CARD>"),
        ("银行卡6222 0202 0011 2233 446", "银行卡<BANK_CARD>"),
        ("server 192.168.1.20 and 2001:db8::8a2e:370:7334 down", "server <IP> and <IP> down"),
        ("ssh root@203.0.113.9 -p 22", "ssh root@<IP> -p 22"),
        ("host=10.1.2.3:8080", "host=<IP>:8080"),
        ("http://[fe80::1%eth0]:8080/ and ::ffff:192.0.2.1", "http://[<IP>%eth0]:8080/ and <IP>"),
        ("服务器10.0.0.12无法访问", "服务器<IP>无法访问"),
        ("ssh deploy@2400::5352", "ssh deploy@<IP>"),
    ],
)
def test_redacts_each_type_with_a_typed_placeholder(text: str, expected: str) -> None:
    assert redact(text) == expected


SECRETS = [
    'aws_access_key_id = "AKIAZ7Q3X5M2K8P4N6R1"',
    "GITHUB_TOKEN=ghp_" + "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dE3fG5",
    "slack: xoxb-12345678901-12345678901-AbCdEfGhIjKlMnOpQrStUvWx",
    'stripe.api_key = "sk_live_' + "4eC39HqLyjWDarjtT1zdp7dc" + '"',
    "HF_TOKEN=hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh",
    "key=AIza" + "SyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY",
    "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    'password = "Tr0ub4dor&3x"',
    "DB_PASSWORD=S3cr3t!x9",
    '{"client_secret": "9f8e7d6c5b4a39281706f5e4d3c2b1a0"}',
    '"SecretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzKEY"',
    "SECRET_KEY_BASE=9f8e7d6c5b4a39281706f5e4d3c2b1a0",
    "apikey: Zx9kq2LpW7mNq4Rt",
]


@pytest.mark.parametrize("text", SECRETS)
def test_secrets_in_configs_and_code_become_a_secret_placeholder(text: str) -> None:
    found = find_pii(text)
    assert [t for t, _ in found] == ["secret"], found
    assert "<SECRET>" in redact(text)


def test_private_key_blocks_and_url_credentials() -> None:
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7yq\nZx9Tt5Lw==\n-----END RSA PRIVATE KEY-----"
    assert redact(f"key:\n{pem}\nend") == "key:\n<SECRET>\nend"
    url = "DATABASE_URL=postgres://app:Zx9kq2LpW7@db.internal:5432/app"
    assert redact(url) == "DATABASE_URL=postgres://app:<SECRET>@db.internal:5432/app"


LOOKALIKES = {
    "float": ["loss 0.41111111111111116 at step 5", "5:0.4111111111111111", "x = -1.234567890123e-05"],
    "exponent": ["3.1415926535e+00", "6.02214076e+23 mol", "1e-4111111111111111"],
    "version": [
        "version 1.2.3.4",
        "version: 1.2.3.4",
        "v2.10.0.1",
        "brotli>=1.2.1.0",
        "torch==2.4.1",
        "Windows 10.0.19045.3803",
    ],
    "ip_versions": ["pkg-1.2.3.4.tar.gz", "see section 7.9.2.2", "1.2.3.4.5", "999.1.1.1", "OID 1.3.6.1.4.1"],
    "hash": [
        "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "commit 4111111111111111abc",
        "digest sha1:4111111111111111a1b2c3d4e5f6a7b8c9d0e1f2",
    ],
    "uuid": ["550e8400-e29b-41d4-a716-446655440000", "12345678-1234-5678-1234-567812345678"],
    "hex": ["0x4111111111111111", "0x13812345678", "#4111111111111111"],
    "timestamp": [
        "2024-01-15T09:30:00.123456Z",
        "created_at=1704067200",
        "ts 1704067200123",
        "1704067200123456789 ns",
        "meeting at 12:30:45",
        "20240115093000123",
    ],
    "code_path": [
        "std::vector<int> v;",
        "Foo::bar()",
        "std::fs::read(path)?",
        "Self::add(a, b)",
        "bad::cafe()",
        "Programming Language :: Python :: 3",
        "x[1::2] and a[10::20] and y[::2] and z[100::5]",
        "MAC 00:1a:2b:3c:4d:5e",
    ],
    "legal_citation": [
        "48 C.F.R. § 252.204-7012(a)(1)",
        "15 U.S.C. § 78j(b)",
        "42 U.S.C. 2000e-2(a)",
        "Cal. Civ. Code § 1798.100",
        "550 U.S. 544 (2007)",
    ],
    "zh_date_amount": [
        "2024年1月15日",
        "人民币13800000000元",
        "¥1,234,567.89",
        "共计15800000000元",
        "营收13800000000万元",
        "订单号202401151234567890",
    ],
    "other_number": [
        "order 4111111111111112",  # Luhn fails
        "id=4111111111111111",  # a number under a key that is not a card's
        "snowflake 4111111111111111113",  # 19 digits starting with 4: an id, not a Visa
        "id 1234567812345670",  # Luhn passes, no issuer
        "订单号110105194912310021",  # ID shape, bad checksum
        "ISBN 978-3-16-148410-0",
        "read_bytes=18626220032, write_bytes=24081764352",
        "in 2026 we sold 12345 units",
        "200-300-4000 rows",  # no such area code
        "range 415 555 0132",  # spaces, no phone word
    ],
    "local_addresses": ["127.0.0.1", "0.0.0.0:8000", "netmask 255.255.255.0", "[::1]:8080", "bind ::"],
    "email_like": ["h = x@self.weight", "icon@2x.png", "git@github.com:org/repo.git", "@decorator.method"],
    "placeholder_secret": [
        'password = "changeme"',
        'api_key = "YOUR_API_KEY"',
        'token = os.environ["HF_TOKEN"]',
        'pad_token = "</s>"',
        "secret_key: ${SECRET_KEY}",
        'password: "********"',
        "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
        'key = "input_ids"',
        "API_KEY = 'this-will-ordinarily-be-detected-by-a-plugin'",
        "API_KEY = 'WillAlsoBeIgnored'",
        "the access token expires after one hour",
        "tokenizer_name: meta-llama/Llama-3.1-8B",
        "badge.svg?token=GU63K7WDBE",
        "hotkey: Ctrl+Shift+K9",
        "zoneinfo.ZoneInfo(key='America/Los_Angeles')",
        "zoneinfo.ZoneInfo(key='US/Eastern')",
        "`comment_key='#comment'`",
        'STATS_KEY = "_hypothesis_stats"',
        'monkey = "Zx9kq2LpW7mN"',
        "bypass=Qz8kL2mN5pR7",
    ],
}


@pytest.mark.parametrize(
    "text", [pytest.param(t, id=f"{kind}-{i}") for kind, ts in LOOKALIKES.items() for i, t in enumerate(ts)]
)
def test_look_alikes_are_left_alone(text: str) -> None:
    assert find_pii(text) == []
    assert redact(text) == text


def test_found_lists_type_and_match_in_text_order() -> None:
    found: list[tuple[str, str]] = []
    out = redact("ip 10.0.0.7, mail a@b.io, 手机13900001111", None, found)
    assert out == "ip <IP>, mail <EMAIL>, 手机<PHONE>"
    assert found == [("ip", "10.0.0.7"), ("email", "a@b.io"), ("phone", "13900001111")]


def test_types_select_detectors() -> None:
    text = "a@b.io 10.0.0.7 13900001111"
    assert redact(text, ["ip"]) == "a@b.io <IP> 13900001111"
    assert redact(text, []) == text


def _cn_id(body: str) -> str:
    return body + _ID_CHECK[sum(int(d) * w for d, w in zip(body, _ID_WEIGHTS, strict=True)) % 11]


def test_overlaps_go_to_the_stronger_type() -> None:
    # a Gansu ID (62...) that also has a UnionPay card's prefix and length, and passes Luhn
    ids = (_cn_id(f"62010219900101{seq:03d}") for seq in range(1000))
    gansu = next(n for n in ids if n[-1] != "X" and luhn_ok(n))
    assert valid_cn_id(gansu) and card_issuer(gansu) == "unionpay"
    assert find_pii(f"身份证{gansu}") == [("id_card", gansu)]
    # the password of a URL is a secret; the user@host part is not an email
    assert find_pii("postgres://app:Zx9kq2LpW7@db.example.com/x") == [("secret", "Zx9kq2LpW7")]


def test_looks_random_rejects_words_names_and_references() -> None:
    assert looks_random("Tr0ub4dor&3x") and looks_random("QkkOvxASQTzJdUoUG")
    for value in ("changeme", "account-id", "WillAlsoBeIgnored", "settings.SECRET", "${TOKEN}", "aaaaaaaa1"):
        assert not looks_random(value), value


def test_masked_context_shows_the_shape_not_the_value() -> None:
    text = "write to zhang.san@example.com or call 13812345678 today"
    spans = find_spans(text)
    assert (
        masked_context(text, spans, 0, width=10) == "write to [EMAIL:xxxxx.xxx@xxxxxxx.xxx] or call <PHONE>…"
    )
    assert shape("std::vector 3.14") == "xxx::xxxxxx 0.00"


def doc() -> Doc:
    return Doc(0, 0, "x:1", {"text": "a@b.io 或 a2@b.io, 电话13900001111"})


def test_pii_step_counts_per_type_and_drop_mode_drops() -> None:
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


def test_report_mode_counts_and_shows_examples_but_changes_nothing() -> None:
    stats = Stats()
    (out,) = PIIStep(PIIConfig(mode="report", examples=1))([doc()], stats)
    assert out.row["text"] == doc().row["text"] and stats.pii == {"email": 2, "phone": 1}
    (email,) = stats.pii_examples["email"]  # one example per type, the first in the text
    assert email[1] == "x:1" and email[2].startswith("[EMAIL:x@x.xx] 或 <EMAIL>")
    assert "13900001111" not in json.dumps(stats.to_json())  # examples are masked


def test_examples_keep_the_first_in_document_order_whatever_the_merge_order() -> None:
    def stats_for(file: int) -> Stats:
        s = Stats()
        d = Doc(file, 0, f"f{file}:1", {"text": f"mail u{file}@b.io"})
        list(PIIStep(PIIConfig(examples=2))([d], s))
        return s

    a = Stats().merge(stats_for(2)).merge(stats_for(0)).merge(stats_for(1))
    b = Stats().merge(stats_for(1)).merge(stats_for(2)).merge(stats_for(0))
    assert [i for _, i, _ in a.pii_examples["email"]][:2] == ["f0:1", "f1:1"]
    assert Stats.from_json(json.loads(json.dumps(a.to_json()))).pii_examples == b.pii_examples


def test_the_public_redact_keeps_its_signature_for_the_gateway_and_the_loop() -> None:
    """interactions/requestlog.py calls redact(text); loop/curate.py calls redact(text, None, found)."""
    found: list[tuple[str, str]] = []
    assert redact("mail a@b.io") == "mail <EMAIL>"
    assert redact("key AKIAZ7Q3X5M2K8P4N6R1", None, found) == "key <SECRET>" and found == [
        ("secret", "AKIAZ7Q3X5M2K8P4N6R1")
    ]


def test_an_unknown_type_or_mode_names_the_key_and_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"pii.types\[1\].*'secret', 'email'.*got 'ssn'"):
        load_config(DataConfig, None, ["pii.types=[email,ssn]"])
    with pytest.raises(ConfigError, match=r"pii.mode.*'report'.*got 'mask'"):
        load_config(DataConfig, None, ["pii.mode=mask"])
