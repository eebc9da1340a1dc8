"""OpenAI wire schemas (the subset tuneloop serves), validated by pydantic.

Requests are strict: a JSON value of the wrong type is a 400 naming the field, never coerced
(`"stream": "yes"`, `"max_tokens": "5"`, `true` as a token id), while an integer is still a number
(`"temperature": 1`), as in OpenAI, and a number without a fraction is still an integer (`"n": 2.0`),
as JSON Schema counts it. Every number is bounded: OpenAI's bounds where it has them; the
server's own lower limits (`limits.max_n`, `limits.max_completion_tokens`) are checked in the routes
and shown in the OpenAPI document (`serve.openapi`). Responses are built from these models, so their
shape is what the official `openai` client parses.

No field is silently ignored. Every request field of OpenAI's chat-completions and completions APIs
is either implemented, or declared here as `rejected` (a 400 naming the field and saying it is not
supported), or in the short list of `IGNORED` fields that change nothing a client relies on. A field
that is in neither API (a typo, another server's extension such as `top_k`) is a 400 naming it: a
client must not believe an option took effect when it did not.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)

METADATA_MAX_KEYS, METADATA_KEY_MAX, METADATA_VALUE_MAX = 16, 64, 512
USER_MAX = 256  # OpenAI documents no limit for `user` (its successor, `safety_identifier`, has 64)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # seeds: what the engine's generator takes, as vLLM
MAX_N = 128  # OpenAI's bound; the server accepts its `limits.max_n` (default 8)
MAX_TOKENS = 2**31 - 1  # a sanity bound; the server accepts its `limits.max_completion_tokens`
MAX_STOPS, STOP_MAX = 4, 1000  # stop strings: OpenAI's count, and a length no stop string needs
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")  # as serve.guard
# serve.guard's rule for user text, stated in the OpenAPI document as "contains no control character"
# (the guard's message is clearer than a schema error, so this is documentation only; a `not` of a
# search also generates far faster in schemathesis than an anchored pattern with a long maxLength)
NO_CONTROL = {"not": {"pattern": r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"}}
Text = Annotated[str, Field(json_schema_extra=NO_CONTROL)]
NON_BLANK = {**NO_CONTROL, "pattern": r"\S"}  # the same, and something other than white space in it


def _whole(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def integer(**bounds: int) -> Any:
    """An integer as JSON Schema has it (2.0 is one; strings and booleans stay errors), within `bounds`
    (ge, le). The bounds come first: after the validator, pydantic would document them as ge/le."""
    return Annotated[int, Field(**bounds), BeforeValidator(_whole)]


TokenCount = integer(ge=1, le=MAX_TOKENS)
Seed = integer(ge=INT64_MIN, le=INT64_MAX)
TokenId = integer(ge=0)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class _Request(BaseModel):
    # strict: no coercion between JSON types (strict mode still takes an integer for a float);
    # forbid: a field we do not know is a 400 naming it, never dropped (module docstring)
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


def rejected(why: str) -> Any:
    """A field of OpenAI's API that tuneloop does not support: present (even null), it is a 400 naming it.
    The OpenAPI document says so (`not: {}`: no value is valid)."""

    def refuse(value: Any) -> Any:
        raise ValueError(f"not supported by tuneloop serve: {why}; remove the field")

    return Annotated[
        Any, BeforeValidator(refuse), WithJsonSchema({"not": {}, "description": f"Not supported: {why}."})
    ]


# accepted and ignored, as vLLM documents its own: none changes what a client gets back
IGNORED = {
    "store": "OpenAI's stored completions; tuneloop's request log records every request anyway",
    "service_tier": "one tier here",
    "prompt_cache_key": "prefix caching is automatic",
    "prompt_cache_retention": "prefix caching is automatic",
    "stream_options.include_obfuscation": "no obfuscation padding is sent",
}


class StreamOptions(_Request):
    include_usage: bool = False
    include_obfuscation: bool | None = Field(default=None, description="Accepted and ignored.")


Stop = Annotated[str, Field(min_length=1, max_length=STOP_MAX)]
Metadata = Annotated[
    dict[str, str],
    WithJsonSchema(  # what check_metadata enforces
        {
            "type": "object",
            "maxProperties": METADATA_MAX_KEYS,
            "propertyNames": {"minLength": 1, "maxLength": METADATA_KEY_MAX, **NO_CONTROL},
            "additionalProperties": {
                "type": "string",
                "maxLength": METADATA_VALUE_MAX,
                **NO_CONTROL,
            },
        }
    ),
]


def _token_ids(bias: dict[str, float]) -> dict[str, float]:
    for key in bias:
        if not key.isdigit() or len(key) > 12:
            raise ValueError(f'keys are token ids written as strings (e.g. "50256"), not {key[:40]!r}')
    return bias


LogitBias = Annotated[
    dict[str, Annotated[float, Field(ge=-100, le=100)]],
    Field(max_length=1024, json_schema_extra={"propertyNames": {"pattern": r"^[0-9]{1,12}$"}}),
    AfterValidator(_token_ids),
]
NAME = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function and schema names
JsonSchemaObject = Annotated[
    dict[str, Any], Field(description="A JSON Schema (checked against its metaschema)")
]


class JsonSchemaFormat(_Request):
    name: str = Field(pattern=NAME)
    description: str | None = None
    schema_: JsonSchemaObject | None = Field(
        default=None, validation_alias=AliasChoices("schema", "schema_"), serialization_alias="schema"
    )
    strict: bool | None = None


class ResponseFormatText(_Request):
    type: Literal["text"]


class ResponseFormatJsonObject(_Request):
    type: Literal["json_object"]


class ResponseFormatJsonSchema(_Request):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema, Field(discriminator="type")
]


class FunctionDefinition(_Request):
    name: str = Field(pattern=NAME)
    description: str | None = None
    parameters: JsonSchemaObject | None = None
    strict: bool | None = None


class Tool(_Request):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Request):
    name: str = Field(min_length=1, max_length=64)


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class _Sampling(_Request):
    model: str
    max_tokens: TokenCount | None = Field(
        default=None,
        description="Tokens to generate at most, per choice. Default: what the model's context has left "
        "after the prompt (as vLLM), at most the server's limits.max_completion_tokens. A prompt + "
        "max_tokens longer than the context is a 400 (context_length_exceeded).",
    )
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: integer(ge=1, le=MAX_N) = Field(
        default=1, description="Choices to generate (at most the server's limits.max_n)."
    )
    seed: Seed | None = None
    stop: Stop | Annotated[list[Stop], Field(max_length=MAX_STOPS)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    user: str | None = Field(default=None, max_length=USER_MAX)
    # OpenAI's successor of `user` (an end-user id): recorded in the request log as `user` is
    safety_identifier: str | None = Field(default=None, max_length=USER_MAX)
    # OpenAI's request tags (str -> str); `workload` selects requests for a feedback loop
    metadata: Metadata | None = None
    logit_bias: LogitBias | None = Field(
        default=None,
        description="Token id (as a string) -> bias added to its logit, -100 to 100 (-100 bans it). "
        "Each id must be one of the model's (a 400 names the one that is not).",
    )
    response_format: ResponseFormat | None = Field(
        default=None,
        description="`json_object` or `json_schema`: the output is constrained to parse (and match the "
        "schema) by guided decoding. On /v1/completions this is tuneloop's extension, as vLLM's.",
    )
    store: bool | None = Field(default=None, description="Accepted and ignored (IGNORED).")
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = Field(
        default=None, description="Accepted and ignored (one tier)."
    )
    prompt_cache_key: str | None = Field(default=None, max_length=1024, description="Accepted and ignored.")
    prompt_cache_retention: Literal["in-memory", "24h"] | None = Field(
        default=None, description="Accepted and ignored."
    )

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        return check_metadata(v)

    @property
    def end_user(self) -> str | None:
        return self.user or self.safety_identifier

    @property
    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class TextPart(_Request):
    """A content part: text only (this server serves text models; image, audio and file parts are 400s)."""

    type: Annotated[str, WithJsonSchema({"const": "text", "type": "string"})]
    text: Text

    @model_validator(mode="before")
    @classmethod
    def _only_the_type(cls, value: Any) -> Any:
        # another kind of part: only its type is checked, so the error names `type`, not its keys
        if isinstance(value, dict) and value.get("type") != "text" and isinstance(value.get("type"), str):
            return {"type": value["type"], "text": ""}
        return value

    @field_validator("type")
    @classmethod
    def _text_only(cls, kind: str) -> str:
        if kind != "text":
            raise ValueError(
                f"content part type '{kind[:40]}' is not supported: tuneloop serves text models; "
                "send parts of type 'text'"
            )
        return kind


class FunctionCall(_Request):
    name: str = Field(min_length=1, max_length=64)
    arguments: str = Field(description="The call's arguments as JSON text, as the model wrote them")


class ToolCallIn(_Request):
    id: str = Field(min_length=1, max_length=200)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Request):
    # what `_roles` checks, in the OpenAPI document too
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                {
                    "if": {"properties": {"role": {"const": "tool"}}, "required": ["role"]},
                    "then": {
                        "required": ["tool_call_id"],
                        "properties": {"tool_call_id": {"type": "string", "minLength": 1}},
                    },
                },
                {
                    "if": {
                        "properties": {"tool_calls": {"type": "array", "minItems": 1}},
                        "required": ["tool_calls"],
                    },
                    "then": {"properties": {"role": {"const": "assistant"}}},
                },
            ]
        }
    )
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Text | list[TextPart] | None = None
    name: str | None = Field(
        default=None, max_length=64, description="A participant's name (to the template)"
    )
    tool_calls: list[ToolCallIn] | None = Field(default=None, description="An assistant's calls")
    tool_call_id: str | None = Field(
        default=None, max_length=200, description="The call a tool message answers"
    )
    refusal: str | None = Field(
        default=None, description="Accepted and ignored (an assistant's replayed refusal)"
    )
    function_call: rejected("the deprecated function_call; send tool_calls") = None
    audio: rejected("audio output (this server serves text models)") = None

    @model_validator(mode="after")
    def _roles(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("tool_calls are an assistant message's")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""

    def template(self) -> dict[str, Any]:
        """The message as the chat template gets it (models.chat renders calls and tool results)."""
        out: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.name:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        return out


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: integer(ge=0, le=20) | None = None
    max_completion_tokens: TokenCount | None = Field(
        default=None, description="OpenAI's newer name for max_tokens (wins over it)."
    )
    tools: list[Tool] | None = Field(default=None, max_length=128)
    tool_choice: ToolChoice | None = Field(
        default=None,
        description="none | auto (the default with tools) | required | a named function. required and "
        "a named function are enforced by guided decoding, so the call parses and matches its schema.",
    )
    parallel_tool_calls: bool | None = Field(
        default=None, description="With tool_choice required: false allows one call only. Default true."
    )
    modalities: list[Literal["text"]] | None = Field(default=None, description="Text only.")
    audio: rejected("audio output (this server serves text models)") = None
    prediction: rejected("predicted outputs") = None
    reasoning_effort: rejected("reasoning effort (no reasoning models are served)") = None
    verbosity: rejected("verbosity") = None
    web_search_options: rejected("web search") = None
    functions: rejected("the deprecated functions; send tools") = None
    function_call: rejected("the deprecated function_call; send tool_choice") = None


def _one(prompts: list) -> list:
    if len(prompts) > 1:
        raise ValueError(f"send one prompt per request, not a batch of {len(prompts)}")
    return prompts


def _prompt_form(value: Any) -> str | None:
    """Which form of prompt a value is meant to be, so that its error names the exact item."""
    if isinstance(value, str):
        return "str"
    if not isinstance(value, list):
        return None
    first = value[0] if value else None
    return (
        "list[str]"
        if isinstance(first, str)
        else "list[list[int]]"
        if isinstance(first, list)
        else "list[int]"
    )


TokenIds = Annotated[list[TokenId], Field(min_length=1)]
ONE = {"maxItems": 1}  # documents `_one`
Prompt = Annotated[
    Annotated[Text, Tag("str")]
    | Annotated[
        list[Text], Field(min_length=1, json_schema_extra=ONE), AfterValidator(_one), Tag("list[str]")
    ]
    | Annotated[TokenIds, Tag("list[int]")]
    | Annotated[
        list[TokenIds],
        Field(min_length=1, json_schema_extra=ONE),
        AfterValidator(_one),
        Tag("list[list[int]]"),
    ],
    Discriminator(
        _prompt_form,
        custom_error_type="invalid_prompt",
        custom_error_message="prompt must be a string or a list of token ids (integers >= 0)",
    ),
]


class CompletionRequest(_Sampling):
    prompt: Prompt = Field(
        description="One prompt: text, or token ids (evaluation harnesses), each id below the model's "
        "vocabulary size; a list holding one of either works too (a batch of prompts does not)."
    )
    logprobs: integer(ge=0, le=5) | None = None
    echo: bool = False
    best_of: integer(ge=1, le=1) | None = Field(
        default=None, description="1 only: server-side best-of-n is not supported (use n)."
    )
    suffix: rejected("suffix (insertion)") = None

    @property
    def one_prompt(self) -> str | list[int]:
        p = self.prompt
        return p[0] if isinstance(p, list) and isinstance(p[0], (str, list)) else p


def check_metadata(v: dict[str, str] | None) -> dict[str, str] | None:
    """OpenAI's limits: up to 16 pairs, keys up to 64 characters, values up to 512; no control characters."""
    if v is None:
        return v
    if len(v) > METADATA_MAX_KEYS:
        raise ValueError(f"metadata takes at most {METADATA_MAX_KEYS} keys, not {len(v)}")
    for key, value in v.items():
        if not key or len(key) > METADATA_KEY_MAX:
            raise ValueError(f"metadata keys are 1 to {METADATA_KEY_MAX} characters; {key[:80]!r} is not")
        if len(value) > METADATA_VALUE_MAX:
            raise ValueError(f"metadata value of {key!r} is longer than {METADATA_VALUE_MAX} characters")
        if _CONTROL.search(key) or _CONTROL.search(value):
            raise ValueError(f"metadata {key!r} contains a control character")
    return v


class FeedbackRequest(_Request):
    response_id: Text = Field(min_length=1, max_length=200)
    rating: integer(ge=1, le=5) | Literal["up", "down"] = Field(
        description="'up', 'down' or an integer from 1 to 5"
    )
    correction: Text | None = Field(default=None, max_length=100_000)
    comment: Text | None = Field(default=None, max_length=10_000)
    # the end user who rated (OpenAI's `user`); default: the rated request's `user`, else the key id
    user: Text | None = Field(default=None, min_length=1, max_length=USER_MAX)


# ---------------------------------------------------------------- responses


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None


class FunctionCallOut(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCallOut] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta | None = None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "tuneloop"
    root: str | None = None  # as vLLM: what answers (a registry "NAME/VERSION" or the folder's name)
    parent: str | None = None  # as vLLM: a LoRA adapter's base model (its served name); null otherwise


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
