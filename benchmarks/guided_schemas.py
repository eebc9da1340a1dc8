"""The five JSON schemas issue 20 measures guided decoding on (shared by the guided_* benchmarks).

One per kind of constraint a structured-output request leans on: nested objects, enums, arrays,
bounded numbers, required fields (with optional ones and no extra properties).
"""

from __future__ import annotations

SCHEMAS: dict[str, dict] = {
    "nested_objects": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 40},
            "address": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 30},
                    "geo": {
                        "type": "object",
                        "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                        "required": ["lat", "lon"],
                        "additionalProperties": False,
                    },
                },
                "required": ["city", "geo"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "address"],
        "additionalProperties": False,
    },
    "enums": {
        "type": "object",
        "properties": {
            "sentiment": {"enum": ["positive", "negative", "neutral"]},
            "priority": {"type": "string", "enum": ["low", "medium", "high"]},
            "code": {"enum": [200, 404, 500]},
        },
        "required": ["sentiment", "priority", "code"],
        "additionalProperties": False,
    },
    "arrays": {
        "type": "object",
        "properties": {
            "tags": {
                "type": "array",
                "items": {"type": "string", "maxLength": 12},
                "minItems": 1,
                "maxItems": 4,
            },
            "scores": {"type": "array", "items": {"type": "integer"}, "maxItems": 5},
        },
        "required": ["tags", "scores"],
        "additionalProperties": False,
    },
    "bounded_numbers": {
        "type": "object",
        "properties": {
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "count": {"type": "integer", "exclusiveMinimum": 0, "maximum": 1000},
        },
        "required": ["age", "score", "count"],
        "additionalProperties": False,
    },
    "required_fields": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "title": {"type": "string", "maxLength": 40},
            "done": {"type": "boolean"},
            "note": {"type": "string", "maxLength": 20},
        },
        "required": ["id", "title", "done"],
        "additionalProperties": False,
    },
}

# what each schema's prompt asks for (guided_decoding.py's adherence run)
ASKS = {
    "nested_objects": "a person's name and address (city, and geo with lat and lon)",
    "enums": "the sentiment (positive, negative or neutral), priority (low, medium, high) and HTTP code (200, 404, 500)",
    "arrays": "a list of 1 to 4 short tags and a list of integer scores",
    "bounded_numbers": "an age (0-120), a score between 0 and 1 and a count (1-1000)",
    "required_fields": "a task with an integer id, a title, done (true/false) and optionally a note",
}
