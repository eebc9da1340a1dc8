"""What the teacher is asked, in one place: per question kind and per language (a Chinese chunk gets
Chinese instructions, so its questions and answers come back in Chinese), and the JSON schema of
the reply, which an engine teacher is held to by guided decoding.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tuneloop.data.ngrams import CJK

Messages = list[dict[str, str]]
_CJK = re.compile(f"[{CJK}]")
_LETTER = re.compile(r"[^\W\d_]")

KIND_TEXT = {
    "en": {
        "fact": "a fact the passage states (what, which, who, where)",
        "number": "a number, price, date, size or limit the passage gives",
        "procedure": "how to do something the passage describes (the steps)",
        "comparison": "a comparison of two things the passage mentions",
    },
    "zh": {
        "fact": "段落中陈述的事实（是什么、哪个、谁、在哪里）",
        "number": "段落中给出的数字、价格、日期、尺寸或上限",
        "procedure": "如何完成段落中描述的操作（步骤）",
        "comparison": "段落中提到的两样东西的比较",
    },
}

SYSTEM = {
    "en": "You write training data for a support assistant: question-answer pairs that a passage "
    "answers. Answers use only what the passage says. Reply with JSON only.",
    "zh": "你为客服助手编写训练数据：根据段落内容编写问答对。答案只能使用段落中的信息。只用 JSON 回复。",
}

USER = {
    "en": (
        'Passage from "{doc}":\n"""\n{chunk}\n"""\n\n'
        "Write {n} questions a customer could ask that this passage answers. Kinds, in order:\n{kinds}\n"
        "For each: the question as a customer would ask it, standalone (name the product or topic, "
        'never "the passage"); the answer in one or two sentences, using the passage\'s exact names '
        'and numbers; {p} rewording(s) of the question in "paraphrases".\n'
        'Reply as JSON: an object with "items", a list with one object per question, each with '
        '"kind" ({kind_names}), "question", "answer" and "paraphrases" (a list of strings).'
    ),
    "zh": (
        '段落（来自「{doc}」）：\n"""\n{chunk}\n"""\n\n'
        "用中文写 {n} 个客户可能会问、且这个段落能回答的问题。按顺序的类型：\n{kinds}\n"
        "每个问题：像客户那样提问，独立成句（写出产品或主题名称，不要说“段落”）；答案一到两句话，"
        '使用段落中的原样名称和数字；在 "paraphrases" 中给出 {p} 个问题的改写。\n'
        '用 JSON 回复：一个含 "items" 的对象，"items" 是列表，每个问题一个对象，包含 "kind"（{kind_names}）、'
        '"question"、"answer" 和 "paraphrases"（字符串列表）。'
    ),
}


def language(text: str) -> str:
    """'zh' when Chinese characters are at least a fifth of the letters, else 'en'."""
    letters = len(_LETTER.findall(text))
    return "zh" if letters and len(_CJK.findall(text)) / letters >= 0.2 else "en"


def kinds_for(n: int, kinds: list[str], start: int = 0) -> list[str]:
    """The kind of each of the n questions: the configured kinds in turn, from `start` (chunks start
    at different kinds, so 3 questions a chunk still cover all 4 kinds across chunks)."""
    return [kinds[(start + i) % len(kinds)] for i in range(n)]


def messages(chunk: str, doc: str, lang: str, asked: list[str], paraphrases: int) -> Messages:
    n = len(asked)
    listed = "\n".join(f"{i + 1}. {k}: {KIND_TEXT[lang][k]}" for i, k in enumerate(asked))
    # the format in words, not as a JSON example: small models copy an example's "..." placeholders
    names = ", ".join(dict.fromkeys(asked))
    user = USER[lang].format(doc=doc, chunk=chunk.strip(), n=n, kinds=listed, p=paraphrases, kind_names=names)
    return [{"role": "system", "content": SYSTEM[lang]}, {"role": "user", "content": user}]


def reply_schema(n: int, kinds: list[str], paraphrases: int, max_chars: int = 400) -> dict[str, Any]:
    """The reply's JSON schema. Lengths are bounded so that a small teacher held to it by guided
    decoding closes its strings and the object well before max_tokens."""
    text = {"type": "string", "minLength": 1, "maxLength": max_chars}
    item = {
        "type": "object",
        "properties": {
            "kind": {"type": "string", "enum": list(dict.fromkeys(kinds))},
            "question": {"type": "string", "minLength": 1, "maxLength": max_chars // 2},
            "answer": text,
            "paraphrases": {
                "type": "array",
                "items": {"type": "string", "minLength": 1, "maxLength": max_chars // 2},
                "maxItems": paraphrases,
            },
        },
        "required": ["kind", "question", "answer", "paraphrases"],
        "additionalProperties": False,
    }
    if not paraphrases:  # no rewordings asked: no tokens spent on an empty list
        del item["properties"]["paraphrases"]  # type: ignore[attr-defined]
        item["required"] = ["kind", "question", "answer"]
    return {
        "type": "object",
        "properties": {"items": {"type": "array", "items": item, "minItems": 1, "maxItems": n}},
        "required": ["items"],
        "additionalProperties": False,
    }


def schema_text(n: int, kinds: list[str], paraphrases: int, max_chars: int = 400) -> str:
    # key order kept: the teacher writes the question before the answer, the answer before rewordings
    return json.dumps(reply_schema(n, kinds, paraphrases, max_chars))
