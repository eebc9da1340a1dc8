"""Curation filters: small pure functions that say why a piece of user feedback must not be trained on.

Each returns None (keep) or a `Reject(reason, detail)`; the curator counts every rejection by
reason in the dataset manifest. The injection and abuse lists are a first line, not a guarantee:
the gate (frozen evaluation) and the canary are the later ones.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from tuneloop.loop.collect import Rating

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

# Words that mark abuse; a correction or a prompt holding one is not training material.
ABUSE = ("idiot", "stupid bot", "moron", "retard", "kill yourself", "kys", "fuck", "shit", "bitch", "cunt",
         "nigger", "faggot", "傻逼", "去死")  # fmt: skip


@dataclass(frozen=True)
class Reject:
    reason: str
    detail: str = ""


class TextFilters:
    """Injection, abuse and size checks with the configured extras compiled once."""

    def __init__(self, extra_injection: list[str] = (), extra_abuse: list[str] = (), max_chars: int = 4000):
        self.injection = [re.compile(p, re.IGNORECASE | re.MULTILINE) for p in (*INJECTION, *extra_injection)]
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
    raters: int
    agreement: float  # share of raters on the winning side
    correction: str | None  # the agreed correction (down with a correction), if any
    mean_rating: float


def agree(ratings: list[Rating], positive_min: int, negative_max: int, min_raters: int,
          min_agreement: float) -> Verdict | Reject:  # fmt: skip
    """The raters' verdict on one answer, or why there is none.

    One vote per rater (their last rating counts). A rater is an API key and an end user, so two users
    behind one key are two raters (no user: the key alone, as the gateway stores it). With several
    raters the winning side (up or down) needs `min_agreement` of all votes, and so does the winning
    correction among the corrections.
    """
    last = {(r.key_id, r.user or r.key_id): r for r in sorted(ratings, key=lambda r: r.id)}
    votes = list(last.values())
    if len(votes) < min_raters:
        return Reject("too_few_raters", f"{len(votes)} rater(s), {min_raters} needed")
    sides = Counter("down" if r.correction else polarity(r.rating, positive_min, negative_max) for r in votes)
    side, count = sides.most_common(1)[0]
    share = count / len(votes)
    mean = sum(r.rating for r in votes) / len(votes)
    if len(votes) > 1 and (share < min_agreement or list(sides.values()).count(count) > 1):
        return Reject("disagreement", f"raters split {dict(sides)} (need {min_agreement:.0%} agreement)")
    if side == "neutral":
        return Reject("neutral_rating", f"mean rating {mean:.1f} is neither an upvote nor a downvote")
    correction = None
    if side == "down":
        fixes = Counter(_norm(r.correction) for r in votes if r.correction and r.correction.strip())
        if fixes:
            best, n = fixes.most_common(1)[0]
            if len(votes) > 1 and n / len(votes) < min_agreement:
                return Reject("disagreement", f"raters gave {len(fixes)} different corrections")
            correction = next(
                r.correction.strip() for r in votes if r.correction and _norm(r.correction) == best
            )
    return Verdict(side, len(votes), share, correction, mean)


def _norm(text: str | None) -> str:
    return " ".join((text or "").lower().split()).rstrip(".!。")
