"""Seeded, exact-size train/validation split by document."""

from __future__ import annotations

from tuneloop.data.split import choose_val, split_key, val_count


def test_val_count_rounds_but_keeps_both_sides_non_empty() -> None:
    assert [val_count(n, 0.05) for n in (0, 1, 2, 10, 100)] == [0, 0, 1, 1, 5]
    assert val_count(3, 0.9) == 2 and val_count(100, 0.0) == 0


def test_choice_is_seeded_and_independent_of_input_order() -> None:
    items = [(split_key(42, f"doc{i}"), (0, i)) for i in range(200)]
    a, b = choose_val(items, 0.1), choose_val(list(reversed(items)), 0.1)
    assert a == b and len(a) == 20
    other = choose_val([(split_key(7, f"doc{i}"), (0, i)) for i in range(200)], 0.1)
    assert other != a
