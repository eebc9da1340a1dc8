"""Synthetic tool-call SFT rows for the tool-calling benchmark's fine-tune, from templates.

The rows use the suite's three tools (benchmarks/data/tool_calling_suite.json) but none of its
requests or values: other cities, products and ticket titles, other phrasings, so the benchmark
measures what the fine-tune learned about calling tools, not the suite itself (`check_disjoint`
fails the run if any request or argument value of the suite appears here). Each row is an OpenAI
SFT row with `tools`: a call row ends with the assistant's `tool_calls`, a chat row (about one in six)
with a plain answer and no call.

    python benchmarks/tool_calling_data.py OUT_DIR [--rows 240] [--seed 0]   # OUT_DIR/train.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

SUITE = Path(__file__).resolve().parent / "data" / "tool_calling_suite.json"

CITIES = ["London", "Rome", "Boston", "Toronto", "Prague", "Athens", "Warsaw", "Helsinki", "Seoul",
          "Bangkok", "Lima", "Santiago", "Miami", "Phoenix", "Zurich", "Istanbul", "Hanoi", "Manila",
          "Perth", "Auckland", "Kyoto", "Milan", "Munich", "Geneva", "Vancouver", "Atlanta"]  # fmt: skip
WEATHER = [
    ("What's the weather like in {city}?", False),
    ("Current weather in {city}, please.", False),
    ("How hot is it in {city} at the moment?", False),
    ("Should I bring a coat to {city} today?", False),
    ("Get me the {city} forecast.", False),
    ("What's the temperature in {city} in {unit}?", True),
    ("Weather in {city}, in {unit} please.", True),
    ("Tell me how warm {city} is, in {unit}.", True),
]
PRODUCTS = [("bluetooth speaker", "electronics"), ("hiking backpack", "sports"), ("graphic novel", "books"),
            ("leather wallet", "clothing"), ("air fryer", "home"), ("soccer ball", "sports"),
            ("laptop stand", "electronics"), ("wool scarf", "clothing"), ("board game", "home"),
            ("poetry collection", "books"), ("smart watch", "electronics"), ("bath towels", "home"),
            ("swim goggles", "sports"), ("denim jacket", "clothing"), ("e-reader", "electronics"),
            ("sci-fi paperback", "books"), ("bike helmet", "sports"), ("throw pillow", "home")]  # fmt: skip
SEARCH = [
    ("Can you find a {query}?", ()),
    ("I'm shopping for a {query}.", ()),
    ("Find a {query} for at most {price} dollars.", ("max_price",)),
    ("Show me a {query} below ${price}.", ("max_price",)),
    ("Search the {category} section for a {query}.", ("category",)),
    ("Any {query} in {category}?", ("category",)),
    ("Look in {category} for a {query} under {price} dollars.", ("max_price", "category")),
]
TITLES = ["Invoice PDF is blank", "Cannot upload avatars", "Slow dashboard loading", "Wrong timezone in reports",
          "Two-factor codes not arriving", "Webhook retries missing", "Broken link in welcome email",
          "Calendar sync duplicates events", "Printer driver download fails", "Add keyboard shortcuts",
          "Refund button does nothing", "Chat widget overlaps footer", "VPN drops every hour",
          "Add German translation", "Session expires too fast", "Audit log is empty"]  # fmt: skip
TAGS = ["billing", "ui", "mobile", "email", "security", "performance", "i18n", "network", "reports"]
TICKET = [
    ("Please open a {priority} priority ticket: '{title}'.", False),
    ("Raise a ticket titled '{title}', {priority} priority.", False),
    ("I need a support ticket '{title}' ({priority}).", False),
    ("Create ticket '{title}', priority {priority}, tags: {tags}.", True),
    ("Open a {priority} ticket called '{title}' and tag it {tags}.", True),
]
CHAT = [("Good evening!", "Good evening! How can I help you?"), ("What is 9 plus 6?", "15."),
        ("Name a primary colour.", "Red."), ("How many days are in a week?", "Seven."),
        ("Say thank you in Spanish.", "Gracias."), ("What is the opposite of hot?", "Cold."),
        ("Who painted the Mona Lisa?", "Leonardo da Vinci."), ("Spell the word 'cat' backwards.", "tac."),
        ("Is water wet?", "Yes, water makes things wet."), ("Give me a synonym for happy.", "Joyful."),
        ("What is 20 divided by 4?", "5."), ("That's great, thanks!", "You're welcome!")]  # fmt: skip


def tools() -> list[dict[str, Any]]:
    return json.loads(SUITE.read_text(encoding="utf-8"))["tools"]


def call_row(request: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }
    return {
        "tools": tools(),
        "messages": [
            {"role": "user", "content": request},
            {"role": "assistant", "content": None, "tool_calls": [call]},
        ],
    }


def weather(rng: random.Random) -> dict[str, Any]:
    template, with_unit = rng.choice(WEATHER)
    city, unit = rng.choice(CITIES), rng.choice(["celsius", "fahrenheit"])
    args = {"city": city, **({"unit": unit} if with_unit else {})}
    return call_row(template.format(city=city, unit=unit), "get_weather", args)


def search(rng: random.Random) -> dict[str, Any]:
    template, extra = rng.choice(SEARCH)
    (query, category), price = rng.choice(PRODUCTS), rng.choice([15, 35, 60, 90, 150, 250])
    args: dict[str, Any] = {"query": query}
    if "max_price" in extra:
        args["max_price"] = price
    if "category" in extra:
        args["category"] = category
    return call_row(template.format(query=query, price=price, category=category), "search_products", args)


def ticket(rng: random.Random) -> dict[str, Any]:
    template, with_tags = rng.choice(TICKET)
    title, priority = rng.choice(TITLES), rng.choice(["low", "medium", "high", "urgent"])
    tags = rng.sample(TAGS, rng.choice([1, 2]))
    args: dict[str, Any] = {"title": title, "priority": priority, **({"tags": tags} if with_tags else {})}
    request = template.format(title=title, priority=priority, tags=" and ".join(tags))
    return call_row(request, "create_ticket", args)


def chat(rng: random.Random) -> dict[str, Any]:
    question, answer = rng.choice(CHAT)
    return {
        "tools": tools(),
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
    }


def generate(rows: int, seed: int = 0) -> list[dict[str, Any]]:
    """`rows` rows: calls to the three tools in turn, with a chat row (no call) every sixth."""
    rng = random.Random(seed)
    makers = [weather, search, ticket, weather, search, ticket]
    out = [(chat if i % 6 == 5 else makers[i % 6])(rng) for i in range(rows)]
    check_disjoint(out)
    return out


def check_disjoint(rows: list[dict[str, Any]]) -> None:
    """No request and no string argument value of the suite occurs in the training rows."""
    suite = json.loads(SUITE.read_text(encoding="utf-8"))["cases"]
    requests = {c["request"].lower() for c in suite}
    values = {
        str(v).lower() for c in suite for v in (c["expected_arguments"] or {}).values() if isinstance(v, str)
    }
    values -= {"celsius", "fahrenheit", "low", "medium", "high", "urgent", "electronics", "books", "clothing",
               "home", "sports"}  # enum values are the schema's, shared by design  # fmt: skip
    for row in rows:
        text = row["messages"][0]["content"].lower()
        if text in requests or any(v in text for v in values):
            raise SystemExit(f"training row overlaps the benchmark suite: {text!r}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--rows", type=int, default=240)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    rows = generate(a.rows, a.seed)
    (a.out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} rows to {a.out / 'train.jsonl'}")


if __name__ == "__main__":
    main()
