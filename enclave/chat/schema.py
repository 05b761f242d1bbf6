"""What a transport hands the pipeline, whatever protocol it spoke."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from enclave.core.protocols import Message, OutputSpec


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    message: str = Field(description="The user's message.")
    conversation_id: str | None = Field(None, description="Continue this conversation; omit to start one.")
    route: Literal["auto", "rag", "adapter", "base"] = Field("auto", description="Force a route, or decide.")
    adapter: str | None = Field(None, description="LoRA adapter to answer with.")
    collection: str | None = Field(None, description="Knowledge-base collection to search.")
    max_tokens: int | None = Field(None, ge=1, description="Answer length limit in tokens.")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: list[str] | None = Field(None, max_length=4)
    seed: int | None = None
    repetition_penalty: float | None = Field(
        None, gt=0.0, le=2.0, description="Divides the positive logits of recent tokens (1.0 is off)."
    )
    frequency_penalty: float | None = Field(
        None, ge=-2.0, le=2.0, description="Lowers a token's logit by this per earlier use in the answer (0 is off)."
    )
    presence_penalty: float | None = Field(
        None, ge=-2.0, le=2.0, description="Lowers a token's logit by this once it was used in the answer (0 is off)."
    )
    output_schema: dict[str, Any] | None = Field(
        None,
        alias="schema",
        description="A JSON schema the answer must match ({} for any JSON object); enforced while sampling.",
    )
    logit_bias: dict[int, float] | None = Field(
        None, description="Token id → bias added to its logit (-100 bans it, 100 forces it)."
    )
    logprobs: int | None = Field(
        None,
        ge=0,
        le=20,
        description="Report each answer token's log-probability in `done`, with this many likeliest alternatives "
        "(0: the token's own only); omit for none.",
    )
    # Given by the OpenAI transport: the earlier turns the client sent, used instead of stored history.
    history: list[Message] | None = Field(None, exclude=True)
    system: str | None = Field(None, exclude=True)
    output: OutputSpec | None = Field(None, exclude=True)  # response_format or tools; `schema` becomes one
    raw: bool = Field(False, exclude=True)  # /v1/completions: `message` is a plain prompt, sent as it is

    def output_spec(self) -> OutputSpec | None:
        """The answer's required shape: the OpenAI transport's, or the `schema` field's."""
        if self.output is not None:
            return self.output
        if self.output_schema is None:
            return None
        return OutputSpec(kind="json", json_schema=self.output_schema or None)
