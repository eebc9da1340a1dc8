"""Tool calls in a model's output: one parser per format, whole or incremental (streaming).

Formats (`PARSERS`; a model's is chosen by `detect_tool_parser`, or set per model in serve.yaml as
`tool_parser:`):

- `hermes`: Hermes 2 Pro, Qwen2.5/3 and the default model (through `models.chat`'s fallback):
  `<tool_call>{"name": "f", "arguments": {...}}</tool_call>`, any number, text around them is content.
- `llama3_json`: Llama 3.1+ JSON calls: the output is `{"name": "f", "parameters": {...}}` (optionally
  after `<|python_tag|>`, several separated by `;`); output that does not start with `{` is content.
- `json_array`: what `tool_choice: "required"` constrains the output to (as vLLM):
  `[{"name": "f", "parameters": {...}}, ...]`.
- `NamedCallParser`: a named `tool_choice`: the whole output is the arguments of that function.

`arguments` may also be called `parameters` in every format. The incremental parser is the only
implementation: `parse` feeds the whole text through it, so a stream and a whole answer agree. Its
deltas are OpenAI's `delta.tool_calls` pieces: the first of a call carries index, id, type and name;
the next ones carry fragments of `arguments` that concatenate to the call's arguments (JSON text).
A call is announced only once its name is complete, so a stream never names a call it retracts.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from tuneloop.models.chat import renders_tools

ARGUMENT_KEYS = ("arguments", "parameters")


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolCall:
    """A complete call: `arguments` is JSON text (OpenAI's `function.arguments`)."""

    name: str
    arguments: str
    id: str = field(default_factory=new_call_id)

    def openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass
class ToolCallDelta:
    """One piece of `delta.tool_calls`: the first of a call has id and name, later ones arguments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    def openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index}
        if self.id is not None:
            out["id"], out["type"] = self.id, "function"
        function: dict[str, Any] = {}
        if self.name is not None:
            function["name"] = self.name
        if self.arguments or self.name is not None:
            function["arguments"] = self.arguments
        out["function"] = function
        return out


@dataclass
class ParsedDelta:
    content: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.tool_calls)

    def extend(self, other: ParsedDelta) -> ParsedDelta:
        self.content += other.content
        self.tool_calls.extend(other.tool_calls)
        return self


@dataclass
class ParsedOutput:
    """A whole output: its content (None when there is none) and its calls."""

    content: str | None
    tool_calls: list[ToolCall]


class _ObjectScanner:
    """One JSON object as its text arrives: where each top-level member's value starts and ends.

    Tracks nesting and strings character by character (never re-reading), so an argument value's
    exact text is known while it is still being written, whatever it contains.
    """

    def __init__(self) -> None:
        self.text = ""
        self.pos = 0
        self.depth = 0
        self.in_string = self.escape = False
        self.expect = "open"  # open | key | colon | value | after
        self.key_start = -1
        self.key: str | None = None
        self.values: dict[str, list[int]] = {}  # key -> [start, end (-1 while open)]
        self.current: list[int] | None = None
        self.closed = False
        self.error = False

    def feed(self, text: str) -> int:
        """Scan `text`; returns how many of its characters belong to the object (all, unless it closed)."""
        start = len(self.text)
        self.text += text
        while self.pos < len(self.text) and not self.closed and not self.error:
            self._step(self.text[self.pos])
            self.pos += 1
        if self.closed:
            used = self.pos - start
            self.text = self.text[: self.pos]
            return used
        return len(text)

    def _step(self, c: str) -> None:
        if self.in_string:
            if self.escape:
                self.escape = False
            elif c == "\\":
                self.escape = True
            elif c == '"':
                self.in_string = False
                if self.depth == 1 and self.expect == "key":
                    self.key = json.loads(self.text[self.key_start : self.pos + 1])
                    self.expect = "colon"
            return
        if c.isspace():
            return
        if self.expect == "open":
            if c != "{":
                self.error = True
            self.depth, self.expect = 1, "key"
            return
        if self.depth == 1:
            self._top(c)
        elif c in "{[":
            self.depth += 1
        elif c in "}]":
            self.depth -= 1
        elif c == '"':
            self.in_string = True

    def _top(self, c: str) -> None:
        """A character at the object's own level (outside any nested value)."""
        if self.expect == "key":
            if c == '"':
                self.in_string, self.key_start = True, self.pos
            elif c == "}":
                self.closed = True
            else:
                self.error = True
        elif self.expect == "colon":
            self.error = c != ":"
            self.expect = "value"
        elif self.expect == "value":
            self.current = self.values[self.key or ""] = [self.pos, -1]
            self.expect = "after"
            if c in "{[":
                self.depth += 1
            elif c == '"':
                self.in_string = True
        elif c in ",}":  # after a value: its end
            if self.current is not None:
                self.current[1] = self.pos
            self.expect = "key"
            self.closed = c == "}"
        elif c in "{[":  # (a primitive value goes on until , or })
            self.depth += 1
        elif c == '"':
            self.in_string = True

    def value(self, key: str) -> tuple[str, bool] | None:
        """(text of `key`'s value so far, complete?), or None when the key has not begun."""
        span = self.values.get(key)
        if span is None:
            return None
        end = span[1] if span[1] >= 0 else self.pos
        done = span[1] >= 0 or (span is self.current and self._nested_value_closed())
        return self.text[span[0] : end].rstrip(), done

    def _nested_value_closed(self) -> bool:
        # an object/array/string value is complete once the scan is back at depth 1 outside a string
        return self.expect == "after" and self.depth == 1 and not self.in_string and self.pos > 0


class _CallState:
    """One call being parsed: its scanner, and what of it was sent."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.scanner = _ObjectScanner()
        self.id = new_call_id()
        self.name: str | None = None
        self.sent = 0  # characters of the arguments text sent
        self.announced = False

    def arguments_key(self) -> str | None:
        return next((k for k in ARGUMENT_KEYS if k in self.scanner.values), None)

    def progress(self, final: bool = False) -> list[ToolCallDelta]:
        """The deltas this call can send now: its head once the name is complete, then new argument text."""
        s, out = self.scanner, []
        if self.name is None:
            got = s.value("name")
            if got is None or not got[1]:
                return []
            try:
                name = json.loads(got[0])
            except ValueError:
                return []
            if not isinstance(name, str) or not name:
                return []
            self.name = name
        if not self.announced:
            out.append(ToolCallDelta(self.index, id=self.id, name=self.name))
            self.announced = True
        key = self.arguments_key()
        if key is not None:
            text, done = s.value(key)
            if text.startswith('"'):  # arguments given as a JSON string: sent whole, decoded
                if done and self.sent == 0:
                    decoded = _loads(text)
                    piece = decoded if isinstance(decoded, str) else text
                    self.sent = len(text)
                    out.append(ToolCallDelta(self.index, arguments=piece))
            elif len(text) > self.sent:
                out.append(ToolCallDelta(self.index, arguments=text[self.sent :]))
                self.sent = len(text)
        elif (
            final and s.closed and self.sent == 0
        ):  # a call without arguments: {} (OpenAI always sends a JSON object)
            out.append(ToolCallDelta(self.index, arguments="{}"))
            self.sent = -1
        return _merge(out)

    def result(self) -> ToolCall | None:
        """The complete call, or None when it is not one (no name, arguments not JSON, not closed)."""
        s = self.scanner
        if not s.closed or s.error or self.name is None:
            return None
        key = self.arguments_key()
        if key is None:
            return ToolCall(self.name, "{}", self.id)
        text, _ = s.value(key)
        value = _loads(text)
        if value is _BAD:
            return None
        if isinstance(value, str):
            if _loads(value) is _BAD:
                return None
            return ToolCall(self.name, value, self.id)
        return ToolCall(self.name, text, self.id)


_BAD = object()


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return _BAD


def _merge(deltas: list[ToolCallDelta]) -> list[ToolCallDelta]:
    """A head followed by arguments of the same call: one delta (fewer, fuller chunks)."""
    if len(deltas) == 2 and deltas[0].index == deltas[1].index and deltas[0].id and not deltas[1].id:
        deltas[0].arguments += deltas[1].arguments
        return deltas[:1]
    return deltas


class StreamingToolParser:
    """Base of the incremental parsers: `feed(text)` -> ParsedDelta, `finish()` -> ParsedDelta.

    Content that may be the start of a call marker is held back until it is known not to be.
    """

    def __init__(self) -> None:
        self.calls: list[_CallState] = []
        self.content = ""  # all content sent
        self.text = ""  # all text fed

    @property
    def called(self) -> bool:
        """Whether any call was announced (the choice then finishes with "tool_calls")."""
        return any(c.announced for c in self.calls)

    def feed(self, text: str) -> ParsedDelta:
        self.text += text
        out = self._feed(text)
        self.content += out.content
        return out

    def finish(self) -> ParsedDelta:
        out = self._finish()
        if not self.called:  # no call after all: everything not sent yet is content
            out.content = self.text[len(self.content) :]
        self.content += out.content
        return out

    def _feed(self, text: str) -> ParsedDelta:
        raise NotImplementedError

    def _finish(self) -> ParsedDelta:
        raise NotImplementedError


class HermesParser(StreamingToolParser):
    START, END = "<tool_call>", "</tool_call>"

    def __init__(self) -> None:
        super().__init__()
        self.pending = ""  # text not yet classified: outside a call, or a call's body
        self.inside: _CallState | None = None
        self.after_object = False  # the call's object closed; waiting for END

    def _feed(self, text: str) -> ParsedDelta:
        self.pending += text
        out = ParsedDelta()
        while self.pending:
            if self.inside is None:
                at = self.pending.find(self.START)
                if at < 0:  # hold back a possible beginning of START, and white space before one
                    head = self.pending[: len(self.pending) - _partial_suffix(self.pending, self.START)]
                    keep = len(self.pending) - len(head.rstrip())
                    out.content += self.pending[: len(self.pending) - keep]
                    self.pending = self.pending[len(self.pending) - keep :]
                    break
                out.content += self.pending[:at].rstrip()
                self.pending = self.pending[at + len(self.START) :]
                self.inside = self._start_call()
                self.after_object = False
                continue
            if self.after_object:
                at = self.pending.find(self.END)
                if at < 0:
                    keep = _partial_suffix(self.pending, self.END)
                    self.pending = self.pending[len(self.pending) - keep :]
                    break
                self.pending = self.pending[at + len(self.END) :]
                self.inside = None
                continue
            call = self.inside
            end = self.pending.find(self.END)
            chunk = self.pending if end < 0 else self.pending[:end]
            used = call.scanner.feed(chunk)
            out.tool_calls.extend(call.progress())
            if call.scanner.closed:
                self.pending = self.pending[used:]
                self.after_object = True
                continue
            if end >= 0:  # END before the object closed: a broken call
                self.pending = self.pending[end + len(self.END) :]
                self.inside = None
                continue
            self.pending = ""
        return out

    def _start_call(self) -> _CallState:
        call = _CallState(sum(c.announced for c in self.calls))  # a broken call gives up its index
        self.calls.append(call)
        return call

    def _finish(self) -> ParsedDelta:
        out = ParsedDelta()
        if self.inside is None:
            # held back (a beginning of START that never completed, white space): content, unless
            # it is the white space after the last call
            out.content += self.pending.rstrip() if self.called else self.pending
        for c in self.calls:
            out.tool_calls.extend(c.progress(final=True))
        self.pending = ""
        return out


class JsonCallsParser(StreamingToolParser):
    """Calls written as bare JSON objects: Llama 3.1+ (`;`-separated, maybe after `<|python_tag|>`)
    or a JSON array (`tool_choice: required`)."""

    PREFIXES = ("<|python_tag|>",)

    def __init__(self, array: bool = False) -> None:
        super().__init__()
        self.array = array
        self.mode = "start"  # start | content | between | call | done
        self.buffer = ""
        self.inside: _CallState | None = None

    def _feed(self, text: str) -> ParsedDelta:
        out = ParsedDelta()
        self.buffer += text
        while self.buffer:
            if self.mode == "content":
                out.content += self.buffer
                self.buffer = ""
            elif self.mode == "start":
                stripped = self.buffer.lstrip()
                for p in self.PREFIXES:
                    if stripped.startswith(p):
                        stripped = stripped[len(p) :].lstrip()
                if not stripped or any(p.startswith(stripped) for p in self.PREFIXES):
                    break  # not known yet
                opener = "[" if self.array else "{"
                if stripped[0] != opener:
                    self.mode = "content"
                    continue
                self.buffer = stripped[1:] if self.array else stripped
                self.mode = "between"
            elif self.mode == "between":
                stripped = self.buffer.lstrip().lstrip(";,").lstrip()
                if not stripped:
                    self.buffer = ""
                    break
                if stripped[0] == "{":
                    self.inside = _CallState(sum(c.announced for c in self.calls))
                    self.calls.append(self.inside)
                    self.mode, self.buffer = "call", stripped
                else:
                    self.mode, self.buffer = "done", ""  # `]`, or trailing text: ignored after calls
            elif self.mode == "call":
                call = self.inside
                used = call.scanner.feed(self.buffer)
                out.tool_calls.extend(call.progress())
                self.buffer = self.buffer[used:] if call.scanner.closed else ""
                if call.scanner.closed or call.scanner.error:
                    self.mode = "between" if call.scanner.closed else "done"
            else:
                self.buffer = ""
        return out

    def _finish(self) -> ParsedDelta:
        out = ParsedDelta()
        if self.mode == "start" and self.buffer:
            out.content = self.buffer
        for c in self.calls:
            out.tool_calls.extend(c.progress(final=True))
        self.buffer = ""
        return out


class NamedCallParser(StreamingToolParser):
    """A named `tool_choice`: the whole output is the arguments (a JSON object) of `name`."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.call = _CallState(0)
        self.call.name = name
        self.calls.append(self.call)
        self.arguments = ""

    def _feed(self, text: str) -> ParsedDelta:
        deltas = []
        if not self.call.announced:
            self.call.announced = True
            deltas.append(ToolCallDelta(0, id=self.call.id, name=self.call.name))
        piece = text if self.arguments else text.lstrip()  # the first piece starts at the JSON
        self.arguments += piece
        if piece:
            deltas.append(ToolCallDelta(0, arguments=piece))
        return ParsedDelta(tool_calls=_merge(deltas))

    def _finish(self) -> ParsedDelta:
        out = self._feed("")
        if not self.arguments.strip():  # nothing generated: an object, as OpenAI always sends one
            self.arguments = "{}"
            out.tool_calls.append(ToolCallDelta(0, arguments="{}"))
        return ParsedDelta(tool_calls=_merge(out.tool_calls))

    def result(self) -> ToolCall:
        return ToolCall(self.call.name or "", self.arguments.strip() or "{}", self.call.id)


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of `text` that is a beginning of `marker` (held back)."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


PARSERS: dict[str, type[StreamingToolParser]] = {
    "hermes": HermesParser,
    "llama3_json": JsonCallsParser,
}


def streaming_parser(name: str) -> StreamingToolParser:
    """A fresh incremental parser of format `name` (`PARSERS`, or `json_array`)."""
    if name == "json_array":
        return JsonCallsParser(array=True)
    if name not in PARSERS:
        raise ValueError(f"unknown tool parser '{name}'; choose one of {', '.join(sorted(PARSERS))}")
    return PARSERS[name]()


def parse(text: str, name: str) -> ParsedOutput:
    """The content and calls of a whole output in format `name`. A call that does not parse (no name,
    arguments that are not JSON, cut off) makes the whole text content with no calls, as vLLM."""
    parser = streaming_parser(name)
    parser.feed(text)
    parser.finish()
    return finish_parse(parser, text)


def finish_parse(parser: StreamingToolParser, text: str) -> ParsedOutput:
    """The `ParsedOutput` of a parser that was fed `text` and finished."""
    if isinstance(parser, NamedCallParser):
        return ParsedOutput(None, [parser.result()])
    calls = [c.result() for c in parser.calls]
    if not calls or any(c is None for c in calls):
        return ParsedOutput(text or None, [])
    content = parser.content.strip()
    return ParsedOutput(content or None, [c for c in calls if c is not None])


def assemble(deltas: list[ToolCallDelta]) -> list[dict[str, Any]]:
    """Deltas assembled as the `openai` client does (by index: id, name set once, arguments appended)."""
    calls: dict[int, dict[str, Any]] = {}
    for d in deltas:
        c = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
        c["id"] = d.id or c["id"]
        c["name"] = d.name or c["name"]
        c["arguments"] += d.arguments
    return [calls[i] for i in sorted(calls)]


def detect_tool_parser(tokenizer: Any, model_type: str | None = None) -> str | None:
    """The format a model writes calls in, from its chat template: `hermes` for a template with
    `<tool_call>` or one that does not render tools (tuneloop's fallback renders Hermes),
    `llama3_json` for Llama 3.1+ (`<|python_tag|>`, `"parameters"`); None when the template renders
    tools in a format none of the parsers reads (serve.yaml's `tool_parser` must then say)."""
    template = tokenizer.chat_template or ""
    if isinstance(template, dict):
        template = " ".join(str(v) for v in template.values())
    if not renders_tools(tokenizer):
        return "hermes"
    if "<tool_call>" in template:
        return "hermes"
    if "<|python_tag|>" in template or ("parameters" in template and model_type in (None, "llama")):
        return "llama3_json"
    return None
