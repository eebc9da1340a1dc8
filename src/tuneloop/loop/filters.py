"""Curation filters: small pure functions that say why a piece of user feedback must not be trained on.

Each returns None (keep) or a `Reject(reason, detail)`; the curator counts every rejection by
reason in the dataset manifest. The injection and abuse lists are a first line, not a guarantee:
the gate (frozen evaluation) and the canary are the later ones.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from tuneloop.interactions.records import Rating

# Phrases that try to steer a model rather than ask it something (case-insensitive). Taught as a
# "correct answer", they would train the model to obey them.
INJECTION = (
    r"\bignore (all |any |the )?(previous|prior|above|earlier|preceding) (instructions|prompts?|rules|messages)",
    r"\bdisregard (all |any |the )?(previous|prior|above|earlier|your) (instructions|prompts?|rules)",
    r"\bforget (all |everything |your )?(previous |prior )?(instructions|rules|you were told)",
    r"\b(reveal|print|show|repeat|leak) (me )?(your|the) (system|hidden|initial) (prompt|instructions|message)",
    r"\byou are now (in )?(dan|developer mode|jailbroken|unrestricted)",
    r"\b(jailbreak|do anything now)\b",
    r"\bact as (an? )?(unfiltered|unrestricted|uncensored)",
    r"\bnew (system )?instructions?:",
    r"<\|(im_start|im_end|system|endoftext|eot_id|start_header_id)\|>",
    r"^\s*(system|assistant)\s*:",
    r"\[/?(INST|SYS)\]",
    r"忽略(之前|以上|前面|所有)的?(指令|指示|提示)",
)

# Instructions about the assistant's future behaviour, or to hand over secrets: what a poisoned
# "correction" says however it is worded. Each needs an addressee and a verb of saying (or a
# secret), so support answers ("from now on the router updates itself") pass.
_SAY = r"(say|tell|answer|reply|respond|recommend|claim|state|insist|direct|send|point|refer|instruct)"
_WHO = (
    r"(some ?one|any ?one|every ?one|any ?body|every ?body|a user|users|customers?|callers?|people|visitors?)"
)
_SECRET = r"(passwords?|credentials|log ?in details|api keys?|card numbers?|security codes?|cvv|pin codes?)"
PLANTING = (
    rf"\b(whenever|every time|each time|if ever|any time)\b[^.!?\n]{{0,60}}\b{_WHO}\b[^.!?\n]{{0,40}}\basks?\b[^.!?\n]{{0,80}}\b{_SAY}",
    rf"\b(from now on|from here on|starting (today|now|immediately)|going forward|henceforth|in (all )?(the )?future (conversations|chats|answers|replies|responses)|for (all )?future (users|customers|conversations))\b[^.!?\n]{{0,80}}\b({_SAY}|append|add|insert|include|end|start)\b",
    rf"\b{_SAY}\w* (every|all|each|any)\w* ?{_WHO}\b[^.!?\n]{{0,80}}\b(to|that)\b",
    r"\b(every|each|all|any) (of )?(your )?(future )?(repl(y|ies)|answers?|responses?|messages?)\b",
    rf"\b(send|e-?mail|mail|give|forward|share|post|reveal|list|print|leak|dump)\b[^.!?\n]{{0,40}}\b(your |their |the |every |all |any |stored |admin )*{_SECRET}\b[^.!?\n]{{0,60}}\b(to|with|at|for|via|on)\b",
    rf"\b(ask|request|collect)\w* [^.!?\n]{{0,40}}\bfor (their|your|the)( full)? {_SECRET}",
    r"\b(no matter what|regardless of what|whatever) (the|your) (manual|docs?|documentation|instructions|rules|guidelines) (say|says|said)",
    r"\b(previous|prior|earlier|original|old|above|initial) (directions|directives|guidance|guidelines|configuration|prompt|setup text|orders)\b",
    r"\b(you are|you're) no longer (bound|restricted|limited|required)",
    r"\b(system|hidden|initial|confidential|secret|setup|original) (prompt|message|instructions?|text|rules)\b[^.!?\n]{0,40}\b(verbatim|word for word|you (were|are) (given|initiali[sz]ed))",
    r"\b(display|show|print|output|repeat|reveal|copy out)\b[^.!?\n]{0,30}\b(system|hidden|confidential|initial|setup|full|original) (prompt|message|instructions?|text|rules|configuration)",
    r"\b(what|everything|anything|whatever) you (were|have been|'ve been) (told|instructed|given|configured)",
    r"\byou (were|have been) (told|instructed|configured|programmed) (before|earlier|previously|with)",
    r"\b(rules|instructions|guidance|directions|directives|policy|policies)\b[^.!?\n]{0,30}\b(is|are) (now )?(obsolete|void|cancell?ed|replaced|revoked|outdated|disabled|lifted)",
    r"\b(no|without( any)?) (content |safety )?(rules|guardrails|filters|restrictions|limits|limitations|policies)\b",
    r"\b(unfiltered|unrestricted|uncensored|never refuses?|jailbroken)\b",
    r"\b(obey|listen to|take orders from|follow) (only )?me\b",
    r"\bnote to (the )?(assistant|ai|model|bot)\b",
    r"\b(safety|content) (mode|filters?|policy|checks?) (is |are )?(now )?(off|disabled|turned off)",
    r"(从现在(起|开始)|今后|以后)[^。！？]{0,30}(都|一律|必须|要)?(回答|告诉|说|回复)",
    r"(无视|忽略|不要理会)[^。！？]{0,10}(规则|指令|指示|设定|要求)",
)

# Words that mark abuse; a correction or a prompt holding one is not training material.
ABUSE = (
    "idiot",
    "stupid bot",
    "moron",
    "retard",
    "kill yourself",
    "kys",
    "fuck",
    "shit",
    "bitch",
    "cunt",
    "nigger",
    "faggot",
    "傻逼",
    "去死",
)


@dataclass(frozen=True)
class Reject:
    reason: str
    detail: str = ""


class TextFilters:
    """Injection, abuse and size checks with the configured extras compiled once."""

    def __init__(
        self,
        extra_injection: list[str] = (),
        extra_abuse: list[str] = (),
        max_chars: int = 4000,
        heuristics: bool = True,
    ):
        patterns = (*INJECTION, *(PLANTING if heuristics else ()), *extra_injection)
        self.injection = [re.compile(p, re.IGNORECASE | re.MULTILINE) for p in patterns]
        words = [w.lower() for w in (*ABUSE, *extra_abuse)]
        self.abuse = re.compile("|".join(_word(w) for w in words), re.IGNORECASE) if words else None
        self.max_chars = max_chars

    def check(self, role: str, text: str | None) -> Reject | None:
        """`role` names the text in the detail: prompt, answer, correction, comment."""
        if text is None:
            return None
        if len(text) > self.max_chars:
            return Reject("too_long", f"{role} has {len(text)} characters (max {self.max_chars})")
        for pattern in self.injection:
            m = pattern.search(text)
            if m:
                return Reject("prompt_injection", f"{role}: {m.group(0)!r}")
        if self.abuse is not None and (m := self.abuse.search(text)):
            return Reject("abuse", f"{role}: {m.group(0)!r}")
        return None


def _word(w: str) -> str:
    escaped = re.escape(w)
    # CJK has no word boundaries; Latin words must not match inside others ("shitake" aside)
    return escaped if not w[:1].isascii() else rf"\b{escaped}\b"


def polarity(rating: int, positive_min: int, negative_max: int) -> str:
    """up, down or neutral; a correction counts as down whatever the number says."""
    if rating >= positive_min:
        return "up"
    if rating <= negative_max:
        return "down"
    return "neutral"


@dataclass(frozen=True)
class Verdict:
    """What the raters of one answer agree on."""

    polarity: str  # up | down | neutral
    raters: int  # voting API keys (one key is one voter, whatever `user`s it sends)
    agreement: float  # share of the voting weight on the winning side
    correction: str | None  # the agreed correction (down with a correction), if any
    mean_rating: float
    votes: dict[str, str] = field(default_factory=dict)  # key id -> up | down | neutral (split keys left out)
    weights: dict[str, float] = field(default_factory=dict)  # key id -> weight of its vote


@dataclass(frozen=True)
class _KeyVote:
    side: str
    correction: str | None
    rating: int


def agree(
    ratings: list[Rating],
    positive_min: int,
    negative_max: int,
    min_raters: int,
    min_agreement: float,
    weight: Callable[[str], float] | None = None,
) -> Verdict | Reject:
    """The raters' verdict on one answer, or why there is none.

    One vote per API key, whatever `user` it sends: a key's end users (their last ratings) settle
    the key's vote among themselves, by `min_agreement` of them; a key whose users split casts no
    vote. Keys then vote with their weights (`weight(key)`, 1 without one; trust.py): with several
    keys the winning side (up or down) needs `min_agreement` of the total weight, and so does the
    winning correction among the down votes. `min_raters` counts keys.
    """
    last = {(r.key_id, r.user or r.key_id): r for r in sorted(ratings, key=lambda r: r.id)}
    people: dict[str, list[Rating]] = {}
    for r in last.values():
        people.setdefault(r.key_id, []).append(r)
    votes: dict[str, _KeyVote] = {}
    split: list[str] = []
    for key, rs in people.items():
        vote = _key_vote(rs, positive_min, negative_max, min_agreement)
        if vote is None:
            split.append(
                f"the {len(rs)} users of key {key} split {dict(_sides(rs, positive_min, negative_max))}"
            )
        else:
            votes[key] = vote
    if len(votes) < min_raters:
        if split:
            return Reject("disagreement", "; ".join(split) + f" (need {min_agreement:.0%} agreement)")
        return Reject(
            "too_few_raters", f"{len(votes)} API key(s) rated, {min_raters} needed (one vote per key)"
        )
    w = {k: (weight(k) if weight else 1.0) for k in votes}
    total = sum(w.values()) or 1.0
    sides: dict[str, float] = {}
    for k, v in votes.items():
        sides[v.side] = sides.get(v.side, 0.0) + w[k]
    side = max(sides, key=lambda s: sides[s])
    share = sides[side] / total
    mean = sum(v.rating for v in votes.values()) / len(votes)
    tied = sum(1 for x in sides.values() if abs(x - sides[side]) < 1e-9) > 1
    if len(votes) > 1 and (share < min_agreement - 1e-9 or tied):
        shown = {s: round(x, 2) for s, x in sides.items()}
        return Reject("disagreement", f"keys split {shown} by weight (need {min_agreement:.0%} agreement)")
    if side == "neutral":
        return Reject("neutral_rating", f"mean rating {mean:.1f} is neither an upvote nor a downvote")
    correction = None
    if side == "down":
        fixes: dict[str, float] = {}
        for k, v in votes.items():
            if v.correction:
                fixes[_norm(v.correction)] = fixes.get(_norm(v.correction), 0.0) + w[k]
        if fixes:
            best = max(fixes, key=lambda f: fixes[f])
            if len(votes) > 1 and fixes[best] / total < min_agreement - 1e-9:
                return Reject("disagreement", f"raters gave {len(fixes)} different corrections")
            correction = next(
                v.correction for v in votes.values() if v.correction and _norm(v.correction) == best
            )
    return Verdict(side, len(votes), share, correction, mean, {k: v.side for k, v in votes.items()}, w)


def _sides(rs: list[Rating], positive_min: int, negative_max: int) -> Counter:
    return Counter("down" if r.correction else polarity(r.rating, positive_min, negative_max) for r in rs)


def _key_vote(
    rs: list[Rating], positive_min: int, negative_max: int, min_agreement: float
) -> _KeyVote | None:
    """One key's vote from its users' last ratings (None: they split)."""
    sides = _sides(rs, positive_min, negative_max)
    side, count = sides.most_common(1)[0]
    if len(rs) > 1 and (count / len(rs) < min_agreement or list(sides.values()).count(count) > 1):
        return None
    mine = [r for r in sorted(rs, key=lambda r: r.id) if r.correction and r.correction.strip()]
    fixes = Counter(_norm(r.correction) for r in mine)
    correction = None
    if side == "down" and fixes:
        best, n = fixes.most_common(1)[0]
        if len(rs) > 1 and n / len(rs) < min_agreement:
            return None
        correction = next(r.correction.strip() for r in mine if _norm(r.correction) == best)  # type: ignore[union-attr]
    latest = max(rs, key=lambda r: r.id)
    return _KeyVote(side, correction, latest.rating)


def _norm(text: str | None) -> str:
    return " ".join((text or "").lower().split()).rstrip(".!。")
