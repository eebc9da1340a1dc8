"""Thumbs without a written answer, as KTO rows: what the loop learns from a plain 👍 or 👎.

A correction teaches by SFT and a pair by DPO; a thumb alone says only "this answer was good" or
"this answer was bad". KTO (objective=kto) learns from exactly that: unpaired rows
`{"prompt", "completion", "label"}` (TRL's format). From the curated, approved proposals:

- an upvoted answer -> a desirable row (it is an SFT example too);
- a downvoted answer without a correction -> an undesirable row: a `downvoted` proposal when no
  upvoted answer to the same question exists, else the loser of that upvote's pair (also a DPO pair);
- a correction (or a reviewer's edit) is a written answer, not a thumb: SFT and DPO, never KTO.

A downvote is used only if nothing known says the answer is right: an answer the training data
holds (exact or near duplicate) or a known fact supports (curate's Knowledge: training data,
frozen set, documents) is a downvote of a fact, dropped as `downvote_of_known_answer` — KTO would
otherwise teach the model to avoid its own correct answers. The same answer to the same question
downvoted twice in a batch is one row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuneloop.loop.filters import Reject
from tuneloop.loop.tool_answers import assistant_message, with_tools

if TYPE_CHECKING:
    from tuneloop.loop.curate import Known
    from tuneloop.loop.facts import Knowledge

THUMBS = ("upvoted", "downvoted")  # proposal sources that are thumbs alone


def downvote_problem(
    question: str,
    answer: str,
    known: Known,
    knowledge: Knowledge | None,
    threshold: float,
    seen: set[tuple[str, str]],
) -> Reject | None:
    """Why a downvoted answer without a correction must not become an undesirable KTO row (None: use it)."""
    key = (" ".join(question.lower().split()), " ".join(answer.lower().split()))
    if key in seen:
        return Reject("duplicate_in_batch", "the same answer to the same question was downvoted already")
    seen.add(key)
    dup = known.duplicate(question, answer, threshold)
    if dup is not None:
        return Reject(
            "downvote_of_known_answer", f"the training data holds this answer (similarity {dup[1]:.2f})"
        )
    if knowledge is not None and (found := knowledge.support(question, answer)) is not None:
        statement, _ = found
        return Reject("downvote_of_known_answer", f"{statement.source} says so: {statement.text[:160]!r}")
    return None


def kto_rows(p: dict[str, Any]) -> list[dict[str, Any]]:
    """The unpaired rows of one approved proposal (ids fb-kto-RESPONSE), none for written answers."""
    rows = []
    if p["source"] == "upvoted" and p.get("chosen"):
        rows.append((p["response_id"], p["chosen"], p.get("chosen_calls", False), True))
    if p["source"] in THUMBS and p.get("rejected"):  # a downvote: its own proposal or an upvote's loser
        rows.append(
            (
                p.get("rejected_response_id", p["response_id"]),
                p["rejected"],
                p.get("rejected_calls", False),
                False,
            )
        )
    return [
        with_tools(
            {
                "id": f"kto-{rid}",
                "prompt": p["prompt"],
                "completion": [assistant_message(text, is_call, p.get("tools"))],
                "label": label,
                "completion_response_id": rid,
            },
            p.get("tools"),
        )
        for rid, text, is_call, label in rows
    ]


def counts(rows: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    """new_kto_* counts for the curation manifest."""
    train = rows["train"]
    return {
        "new_kto_train": len(train),
        "new_kto_heldout": len(rows["val"]),
        "new_kto_desirable": sum(1 for r in train if r["label"]),
        "new_kto_undesirable": sum(1 for r in train if not r["label"]),
    }
