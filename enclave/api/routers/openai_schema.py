"""The OpenAI chat-completions request as Enclave reads it: every field declared, anything else refused.

A field that is here is honoured; one that is not gets a 400 naming it (extra="forbid"), so that nothing a
client sends is silently dropped.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from enclave.chat import structured
from enclave.chat.schema import ChatRequest
from enclave.core.errors import InvalidRequest, NotFound
from enclave.core.protocols import Message, OutputSpec, ToolSpec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FunctionCall(_Strict):
    name: str
    arguments: str = ""


class ToolCallIn(_Strict):
    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class OAIMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[ToolCallIn] | None = None  # an assistant turn that called tools
    tool_call_id: str | None = None  # a tool turn: the call it answers

    def text(self) -> str:
        if isinstance(self.content, list):
            kinds = {p.get("type") for p in self.content} - {"text"}
            if kinds:
                raise InvalidRequest(f"message content of type {sorted(map(str, kinds))} is not supported; send text")
            return "".join(str(p.get("text", "")) for p in self.content)
        return self.content or ""

    def as_turn(self, last: bool = False) -> Message | None:
        """This message as a turn the model reads (system messages are joined separately)."""
        if self.role == "tool":
            return Message(role="user", content=structured.tool_result_text(self.text(), last))
        if self.role == "assistant":
            calls = [structured.tool_call_text(c.function.name, c.function.arguments) for c in self.tool_calls or []]
            return Message(role="assistant", content="\n".join([t for t in [self.text(), *calls] if t]))
        if self.role == "user":
            return Message(role="user", content=self.text())
        return None


class StreamOptions(_Strict):
    include_usage: bool = False


class JsonSchemaFormat(_Strict):
    name: str = "answer"
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None  # the schema is always enforced strictly


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs a json_schema")
        return self


class FunctionDef(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None  # always enforced strictly


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Strict):
    name: str


class ToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class _Sampled(_Strict):
    """The fields both completion endpoints share: the model, streaming and how to sample."""

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[int, float] | None = None
    n: int = Field(1, ge=1)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)  # Enclave's extra, as vLLM names it

    @model_validator(mode="after")
    def _bias_in_range(self) -> _Sampled:
        for token, bias in (self.logit_bias or {}).items():
            if not -100 <= bias <= 100:
                raise ValueError(f"logit_bias for token {token} is {bias}; it must be between -100 and 100")
        return self

    def adapter(self, base_model: str, adapters: list[str]) -> str | None:
        """The adapter `model` names (None: the base model); NotFound for any other name."""
        if self.model == base_model:
            return None
        if self.model not in adapters:
            raise NotFound(f"the model '{self.model}' does not exist; see GET /v1/models")
        return self.model

    def sampling(self) -> dict[str, Any]:
        """The ChatRequest fields these set."""
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": [self.stop] if isinstance(self.stop, str) else self.stop,
            "seed": self.seed,
            "repetition_penalty": self.repetition_penalty,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
            "logit_bias": self.logit_bias,
        }


class CompletionRequest(_Sampled):
    messages: list[OAIMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # Enclave extras
    conversation_id: str | None = None
    route: Literal["auto", "rag", "adapter", "base"] = "auto"
    collection: str | None = None

    @model_validator(mode="after")
    def _checks(self) -> CompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.tool_choice not in (None, "none") and not self.tools:
            raise ValueError("tool_choice needs tools")
        if self.tools and self.response_format is not None and self.response_format.type != "text":
            raise ValueError("tools and a JSON response_format cannot be combined")
        return self

    def output(self) -> OutputSpec | None:
        """What the answer must look like: a JSON schema, any JSON object, tool calls, or free text (None)."""
        fmt = self.response_format
        if fmt is not None and fmt.type == "json_object":
            return OutputSpec(kind="json")
        if fmt is not None and fmt.json_schema is not None:
            return OutputSpec(kind="json", json_schema=fmt.json_schema.schema_ or None)
        if not self.tools or self.tool_choice == "none":
            return None
        choice = self.tool_choice or "auto"
        return OutputSpec(
            kind="tools",
            tools=[ToolSpec(**t.function.model_dump(exclude={"strict"})) for t in self.tools],
            tool_choice=choice if isinstance(choice, str) else choice.function.name,
            parallel_tool_calls=self.parallel_tool_calls is not False,
        )


def to_chat_request(body: CompletionRequest, base_model: str, adapters: list[str]) -> ChatRequest:
    msgs = body.messages
    if msgs[-1].role not in ("user", "tool"):
        raise InvalidRequest("the last message must have role 'user' (or 'tool', giving back a tool's result)")
    adapter = body.adapter(base_model, adapters)
    system = "\n".join(m.text() for m in msgs[:-1] if m.role in ("system", "developer")) or None
    history = [t for t in (m.as_turn() for m in msgs[:-1]) if t is not None]
    last = msgs[-1].as_turn(last=True)
    assert last is not None
    return ChatRequest(
        message=last.content,
        conversation_id=body.conversation_id,
        route="adapter" if adapter else body.route,
        adapter=adapter,
        collection=body.collection,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        **body.sampling(),
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        history=history,
        system=system,
        output=body.output(),
    )


class TextCompletionRequest(_Sampled):
    """The legacy /v1/completions request: a plain prompt, no chat template."""

    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for this endpoint
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False

    @model_validator(mode="after")
    def _checks(self) -> TextCompletionRequest:
        if self.echo and self.logprobs is not None:
            raise ValueError("echo with logprobs would need the prompt's log-probabilities, which are not computed")
        return self

    def prompts(self) -> list[str]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if not prompts:
            raise InvalidRequest("prompt is empty")
        return prompts


def to_completion_requests(body: TextCompletionRequest, base_model: str, adapters: list[str]) -> list[ChatRequest]:
    """One pipeline request per prompt: raw text for the model (or adapter) `model` names."""
    adapter = body.adapter(base_model, adapters)
    return [
        ChatRequest(
            message=prompt,
            route="adapter" if adapter else "base",
            adapter=adapter,
            max_tokens=body.max_tokens,
            **body.sampling(),
            logprobs=body.logprobs,
            history=[],
            raw=True,
        )
        for prompt in body.prompts()
    ]
