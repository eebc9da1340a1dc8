"""Planted PII and planted look-alikes for the labelled PII benchmark (seeded, so reproducible).

`positives(rng)` yields (type, text) for every detector in several formats, each in an English or a
Chinese sentence template; `lookalikes(rng)` yields (class, text) of things that must stay: floats,
versions, hashes, UUIDs, timestamps, `::` code paths, legal citations, Chinese dates and amounts,
placeholder credentials. Generated values are valid (Luhn, GB 11643, libphonenumber) so a miss is a
detector's miss.
"""

from __future__ import annotations

import base64
import hashlib
import random
import string
import uuid
from collections.abc import Callable

import phonenumbers

from tuneloop.data.pii_numbers import _ID_CHECK, _ID_WEIGHTS

FIRST = [
    "james",
    "mary",
    "robert",
    "linda",
    "michael",
    "sarah",
    "david",
    "emma",
    "wei",
    "li",
    "jing",
    "hao",
    "yan",
    "lei",
    "min",
    "chen",
]
LAST = [
    "smith",
    "johnson",
    "garcia",
    "miller",
    "davis",
    "wang",
    "zhang",
    "liu",
    "chen",
    "yang",
    "huang",
    "zhao",
    "wu",
    "zhou",
    "kim",
]
DOMAINS = [
    "gmail.com",
    "qq.com",
    "163.com",
    "outlook.com",
    "example.org",
    "acme.io",
    "corp.example.cn",
    "mail.de",
    "uni-heidelberg.de",
    "bigcorp.co.uk",
]


def email(rng: random.Random) -> str:
    sep = rng.choice([".", "_", "", "-"])
    local = rng.choice(FIRST) + sep + rng.choice(LAST) + rng.choice(["", str(rng.randint(1, 999))])
    return f"{local}@{rng.choice(DOMAINS)}"


def ipv4(rng: random.Random) -> str:
    first = rng.choice([10, 172, 192, 8, 23, 45, 66, 93, 104, 151, 185, 203, 212])
    return f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def ipv6(rng: random.Random) -> str:
    groups = [f"{rng.randint(0, 0xFFFF):x}" for _ in range(8)]
    groups[0] = rng.choice(["2001", "2400", "2a00", "fe80", "fd12", "2606"])
    form = rng.randrange(4)
    if form == 0:
        return ":".join(groups)
    if form == 1:
        return ":".join(groups[:3]) + "::" + ":".join(groups[6:])
    if form == 2:
        return f"{groups[0]}::{groups[7]}"
    return f"::ffff:{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def _valid_number(rng: random.Random, region: str, digits: Callable[[], str]) -> phonenumbers.PhoneNumber:
    while True:
        n = phonenumbers.parse(digits(), region)
        if phonenumbers.is_valid_number(n):
            return n


def phone(rng: random.Random) -> str:
    form = rng.randrange(7)
    if form <= 1:  # Chinese mobile
        number = rng.choice(["138", "139", "150", "186", "177", "199", "135"]) + "".join(
            rng.choice(string.digits) for _ in range(8)
        )
        return [
            number,
            f"{number[:3]}-{number[3:7]}-{number[7:]}",
            f"+86 {number[:3]} {number[3:7]} {number[7:]}",
        ][rng.randrange(3)]
    if form == 2:  # Chinese landline
        area = rng.choice(["010", "021", "020", "0755", "0571", "028"])
        local = str(rng.randint(2, 8)) + "".join(rng.choice(string.digits) for _ in range(7))
        return rng.choice([f"{area}-{local}", f"({area}) {local}"])
    if form in (3, 4):  # North American
        n = _valid_number(
            rng, "US", lambda: f"{rng.randint(201, 989)}{rng.randint(200, 999)}{rng.randint(0, 9999):04d}"
        )
        nat = phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.NATIONAL)  # (415) 555-0132
        return rng.choice(
            [nat, nat.replace("(", "").replace(") ", "-"), "+1 " + nat.replace("(", "").replace(") ", " ")]
        )
    region = rng.choice(["GB", "DE", "FR", "JP", "AU", "IN", "BR", "SG", "NL", "ES"])
    n = _valid_number(
        rng,
        region,
        lambda: "+" + str(phonenumbers.country_code_for_region(region)) + str(rng.randint(10**8, 10**10)),
    )
    return phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.INTERNATIONAL)


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


def bank_card(rng: random.Random) -> str:
    prefix, length = rng.choice(
        [
            ("4", 16),
            ("51", 16),
            ("55", 16),
            ("2221", 16),
            ("34", 15),
            ("37", 15),
            ("6222", 19),
            ("6228", 16),
            ("6011", 16),
            ("3530", 16),
            ("4", 13),
        ]
    )
    n = _luhn_complete(prefix, length, rng)
    if length == 15:
        return rng.choice([n, f"{n[:4]} {n[4:10]} {n[10:]}"])
    if length == 16:
        sep = rng.choice([" ", "-", ""])
        return sep.join(n[i : i + 4] for i in range(0, 16, 4))
    if length == 19:
        return rng.choice([n, " ".join(n[i : i + 4] for i in range(0, 19, 4))])
    return n


def id_card(rng: random.Random) -> str:
    region = rng.choice(["110105", "310104", "440305", "330106", "510107", "420102", "610113"])
    body = (
        region
        + f"{rng.randint(1950, 2010)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(0, 999):03d}"
    )
    total = sum(int(d) * w for d, w in zip(body, _ID_WEIGHTS, strict=True))
    return body + _ID_CHECK[total % 11]


def _token(rng: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def secret(rng: random.Random) -> str:
    """The secret itself; its template (below) puts it in a config line or code."""
    kind = rng.randrange(10)
    if kind == 0:
        return "AKIA" + _token(rng, 16, string.ascii_uppercase + string.digits)
    if kind == 1:
        return "ghp_" + _token(rng, 36)
    if kind == 2:
        return "xoxb-" + "-".join(str(rng.randint(10**10, 10**11)) for _ in range(2)) + "-" + _token(rng, 24)
    if kind == 3:
        return "sk_live_" + _token(rng, 24)
    if kind == 4:
        return "hf_" + _token(rng, 34, string.ascii_letters)
    if kind == 5:
        return "AIza" + _token(rng, 35, string.ascii_letters + string.digits + "_-")
    if kind == 6:
        head = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').decode().rstrip("=")
        body = base64.urlsafe_b64encode(f'{{"sub":"{rng.randint(1, 10**6)}"}}'.encode()).decode().rstrip("=")
        return f"{head}.{body}.{_token(rng, 43, string.ascii_letters + string.digits + '_-')}"
    if kind == 7:
        lines = [_token(rng, 64, string.ascii_letters + string.digits + "+/") for _ in range(4)]
        return "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END RSA PRIVATE KEY-----"
    if kind == 8:
        return "sk-proj-" + _token(rng, 40) + "T3BlbkFJ" + _token(rng, 40)
    return "pw:" + _token(rng, rng.randint(10, 20), string.ascii_letters + string.digits + "!#%^*")


SECRET_TEMPLATES = [
    'API_KEY = "{x}"',
    "export SERVICE_TOKEN={x}",
    "  api_key: {x}",
    '{{"client_secret": "{x}"}}',
]
PASSWORD_TEMPLATES = ['password = "{x}"', "DB_PASSWORD={x}", '{{"password": "{x}"}}', "  passwd: {x}"]

EN = {
    "email": ["Contact {x} for access.", "Reported-by: {x}", 'AUTHOR_EMAIL = "{x}"', "mailto:{x}"],
    "ip": [
        "The server {x} was unreachable.",
        "ssh deploy@{x}",
        'HOST = "{x}"',
        "Connect to http://{x}/admin",
    ],
    "phone": ["Call us at {x} for support.", "Phone: {x}", "Tel. {x} (office)", "contact: {x}"],
    "bank_card": ["Card number {x} was charged.", "card: {x}", "Paid with {x}, exp 12/27."],
    "id_card": ["ID {x} on file.", "citizen_id={x}"],
    "secret": SECRET_TEMPLATES,
}
ZH = {
    "email": ["请发邮件到{x}联系我们。", "邮箱：{x}"],
    "ip": ["服务器{x}无法访问。", "请连接到 {x} 端口。"],
    "phone": ["如有问题请致电{x}。", "联系电话：{x}", "手机{x}请回电"],
    "bank_card": ["卡号{x}到期。", "请向银行卡{x}转账。"],
    "id_card": ["身份证号码{x}已登记。", "公民身份号码：{x}"],
    "secret": ["配置文件中写着 " + t for t in SECRET_TEMPLATES],
}
MAKERS: dict[str, Callable[[random.Random], str]] = {
    "email": email,
    "ip": lambda rng: ipv6(rng) if rng.random() < 0.35 else ipv4(rng),
    "phone": phone,
    "bank_card": bank_card,
    "id_card": id_card,
    "secret": secret,
}


def positive(rng: random.Random, kind: str, chinese: bool) -> tuple[str, int, int]:
    """A sentence holding one planted item: (text, start, end) of the item."""
    value = MAKERS[kind](rng)
    if kind == "secret" and value.startswith("-----BEGIN"):
        template = "{x}"
    elif kind == "secret" and value.startswith("pw:"):
        value = value[3:]
        template = ("密码配置 " if chinese else "") + rng.choice(PASSWORD_TEMPLATES)
    else:
        template = rng.choice((ZH if chinese else EN)[kind])
    start = template.index("{x}")
    text = template.replace("{x}", value).replace("{{", "{").replace("}}", "}")
    start -= template[:start].count("{{")
    return text, start, start + len(value)


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def _luhn_bad(rng: random.Random) -> str:
    n = _luhn_complete("4", 16, rng)
    return n[:-1] + str((int(n[-1]) + rng.randint(1, 9)) % 10)


LOOKALIKES: dict[str, list[Callable[[random.Random], str]]] = {
    "float": [
        lambda r: f"loss = {r.random():.17f}",
        lambda r: f"5:0.{_digits(r, 16)}",
        lambda r: f"{r.uniform(1, 9):.14f}e+{r.randint(0, 30):02d}",
        lambda r: f"-{r.random():.12f}e-{r.randint(1, 9):02d}",
        lambda r: f"weights: [{r.random():.16f}, {r.random():.16f}]",
    ],
    "version": [
        lambda r: f"version {r.randint(1, 9)}.{r.randint(0, 20)}.{r.randint(0, 20)}.{r.randint(0, 99)}",
        lambda r: f"torch=={r.randint(1, 2)}.{r.randint(0, 9)}.{r.randint(0, 9)}",
        lambda r: f"v{r.randint(1, 9)}.{r.randint(0, 9)}.{r.randint(0, 9)}.{r.randint(0, 9)}",
        lambda r: f"Windows 10.0.{r.randint(10000, 22631)}.{r.randint(1, 3000)}",
        lambda r: f"pkg-{r.randint(1, 9)}.{r.randint(0, 9)}.{r.randint(0, 9)}.{r.randint(0, 9)}.tar.gz",
    ],
    "hash": [
        lambda r: hashlib.sha256(r.randbytes(8)).hexdigest(),
        lambda r: "sha1:" + hashlib.sha1(r.randbytes(8)).hexdigest(),
        lambda r: "commit " + hashlib.sha1(r.randbytes(8)).hexdigest()[:12],
        lambda r: f'checksum = "{hashlib.md5(r.randbytes(8)).hexdigest()}"',
        lambda r: f"0x{r.randint(10**15, 10**18):x}",
    ],
    "uuid": [
        lambda r: str(uuid.UUID(int=r.getrandbits(128), version=4)),
        lambda r: f"{_digits(r, 8)}-{_digits(r, 4)}-{_digits(r, 4)}-{_digits(r, 4)}-{_digits(r, 12)}",
    ],
    "timestamp": [
        lambda r: (
            f"2024-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}T{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}.{_digits(r, 6)}Z"
        ),
        lambda r: f"created_at={r.randint(1_500_000_000, 1_800_000_000)}",
        lambda r: f"ts {r.randint(1_500_000_000_000, 1_800_000_000_000)}",
        lambda r: f"{r.randint(1_500_000_000_000_000_000, 1_800_000_000_000_000_000)} ns",
        lambda r: f"2024{r.randint(1, 12):02d}{r.randint(1, 28):02d}{_digits(r, 9)}",
        lambda r: f"at {r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}",
    ],
    "code_path": [
        lambda r: "std::vector<int> v;",
        lambda r: "std::fs::read(path)?",
        lambda r: (
            f"{r.choice(['Foo', 'Bar', 'Self', 'Vec', 'dec', 'abc'])}::{r.choice(['bar', 'add', 'new', 'cafe', 'def'])}()"
        ),
        lambda r: "Programming Language :: Python :: 3",
        lambda r: f"x[{r.randint(1, 9)}::{r.randint(2, 9)}]",
        lambda r: f"a[{r.randint(10, 99)}::{r.randint(10, 99)}]",
        lambda r: "MAC " + ":".join(f"{r.randint(0, 255):02x}" for _ in range(6)),
        lambda r: "ab:cd:ef:12",
    ],
    "legal_citation": [
        lambda r: f"48 C.F.R. § {r.randint(200, 299)}.{r.randint(100, 299)}-{r.randint(1000, 7999)}(a)(1)",
        lambda r: f"15 U.S.C. § {r.randint(70, 99)}j(b)",
        lambda r: f"42 U.S.C. {r.randint(1000, 9999)}e-{r.randint(1, 9)}(a)",
        lambda r: f"Cal. Civ. Code § {r.randint(1000, 1999)}.{r.randint(100, 199)}",
        lambda r: f"{r.randint(100, 600)} U.S. {r.randint(100, 999)} ({r.randint(1950, 2024)})",
        lambda r: f"see section {r.randint(1, 9)}.{r.randint(1, 9)}.{r.randint(1, 9)}.{r.randint(1, 9)}",
        lambda r: f"No. {r.randint(10, 24)}-{r.randint(1000, 9999)}",
    ],
    "zh_date_amount": [
        lambda r: f"{r.randint(1990, 2030)}年{r.randint(1, 12)}月{r.randint(1, 28)}日",
        lambda r: f"人民币{r.choice(['13', '15', '18'])}{_digits(r, 9)}元",
        lambda r: f"¥{r.randint(1, 999)},{r.randint(100, 999)},{r.randint(100, 999)}.{r.randint(10, 99)}",
        lambda r: f"共计{r.randint(10**10, 10**11)}元",
        lambda r: f"订单号{r.randint(2020, 2025)}{_digits(r, 14)}",
        lambda r: f"{r.randint(1, 99)}.{r.randint(1, 99)}亿元",
        lambda r: f"营收{r.randint(1, 9)}{_digits(r, 10)}万元",
    ],
    "other_number": [
        lambda r: f"order {_luhn_bad(r)}",
        lambda r: f"id={_digits(r, 1).replace('0', '1')}{_digits(r, 15)}",
        lambda r: (
            f"ISBN 978-{r.randint(0, 9)}-{r.randint(10, 99)}-{r.randint(100000, 999999)}-{r.randint(0, 9)}"
        ),
        lambda r: f"tracking 1Z{_digits(r, 16)}",
        lambda r: f"read_bytes={r.choice(['13', '15', '18'])}{_digits(r, 9)}",
        lambda r: f"{r.randint(100, 999)} {r.randint(100, 999)} {r.randint(1000, 9999)} items",
    ],
    "placeholder_secret": [
        lambda r: 'password = "changeme"',
        lambda r: 'api_key = "YOUR_API_KEY"',
        lambda r: 'token = os.environ["HF_TOKEN"]',
        lambda r: 'pad_token = "</s>"',
        lambda r: "secret_key: ${SECRET_KEY}",
        lambda r: 'password: "********"',
        lambda r: "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
        lambda r: 'key = "input_ids"',
        lambda r: "tokenizer_name_or_path: meta-llama/Llama-3.1-8B",
    ],
}


def lookalike(rng: random.Random, kind: str) -> str:
    return rng.choice(LOOKALIKES[kind])(rng)
