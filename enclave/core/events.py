"""The one event schema every transport encodes: route, sources, token, moderation, done, error."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Source(BaseModel):
    id: str
    title: str
    uri: str
    snippet: str
    score: float


class RouteEvent(BaseModel):
    type: Literal["route"] = "route"
    route: Literal["rag", "adapter", "base"]
    adapter: str | None = None
    reason: str
    scores: dict[str, float] = Field(default_factory=dict)


class SourcesEvent(BaseModel):
    type: Literal["sources"] = "sources"
    sources: list[Source]


class TokenEvent(BaseModel):
    type: Literal["token"] = "token"
    text: str


class SentenceCitation(BaseModel):
    text: str
    start: int = Field(description="Where the sentence starts in the answer's text (characters).")
    end: int
    cited: list[int] = Field(description="The passage numbers the answer wrote in the sentence.")
    source: int | None = Field(description="The passage (1-based, as in `sources`) that supports it, or None.")
    support: float = Field(description="How well that passage supports it, 0-1 (embedding cosine and word overlap).")
    unsupported: bool = Field(description="No passage supports the sentence.")
    corrected: bool = Field(description="`source` is not a passage the sentence cited: added or corrected.")
    verified: bool = Field(
        True,
        description="Its passage states what the sentence claims in answer to the question: not merely a restated "
        "question or title, nor a passage about something else copied, and any command, module or setting it names "
        "is what that passage is about or defines.",
    )
    note: str | None = Field(None, description="Why the sentence is not verified, in words a reader can follow.")


class CitationsEvent(BaseModel):
    """After a document answer: per sentence, the passage that supports it, checked against the passages."""

    type: Literal["citations"] = "citations"
    sentences: list[SentenceCitation]
    unverified: bool = Field(
        False,
        description="Most sentences are supported by no passage (or the answer looped): the passages were "
        "quoted after it instead.",
    )


Documents = Literal["answered", "caveat", "declined"]


class ModerationEvent(BaseModel):
    type: Literal["moderation"] = "moderation"
    stage: Literal["input", "output", "context"]  # context: sentences cut out of retrieved passages
    action: Literal["allow", "redact", "block"]
    categories: list[str] = Field(default_factory=list)


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class TokenAlternative(BaseModel):
    token: str
    bytes: list[int]
    logprob: float


class TokenLogprobs(BaseModel):
    """One token of the answer, as OpenAI's `logprobs.content` entries are."""

    token: str
    bytes: list[int]
    logprob: float
    top_logprobs: list[TokenAlternative] = Field(default_factory=list)


class TaughtRef(BaseModel):
    """A pair an adapter was trained on: what an adapter answer rests on, or the closest one when it was declined."""

    question: str
    answer: str
    kind: str = Field(description="document, correction (a person's, accepted by a reviewer) or rated answer.")
    reviewed_by: str | None = None
    source: str | None = None


class DoneEvent(BaseModel):
    type: Literal["done"] = "done"
    conversation_id: str
    message_id: str
    finish_reason: Literal["stop", "length", "repetition", "cancelled"]  # repetition: the loop guard ended it
    usage: Usage
    logprobs: list[TokenLogprobs] | None = Field(
        None,
        description="When the request asked for them: each token of the answer with its log-probability and the "
        "likeliest alternatives. Withheld (None) when output moderation redacted or appended to the answer, since "
        "the tokens would no longer be the text shown.",
    )
    documents: Documents | None = Field(
        None,
        description="What the documents did for this answer: `answered` (checked against its passages), `caveat` "
        "(shown with a visible caveat: the passages answer only in part), `declined` (the documents do not hold the "
        "answer: the text says so and quotes the closest passages; no answer was made up). None when no documents "
        "were consulted.",
    )
    general_knowledge: bool = Field(
        False,
        description="After a decline, the text holds the model's own answer to a general question, labelled in the "
        "text as general knowledge that no document supports.",
    )
    taught: Literal["answered", "declined"] | None = Field(
        None,
        description="For an adapter's answer: `answered` when a pair the adapter was trained on states what it says "
        "(`taught_from`), `declined` when none is about the question or none backs the answer (the text says so; "
        "`taught_from` then holds the closest pair, if any). None when the adapter recorded no pairs or no adapter "
        "answered.",
    )
    taught_from: list[TaughtRef] = Field(default_factory=list)


ErrorCode = Literal[
    "invalid_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "overloaded",
    "moderation_blocked",
    "backend_unavailable",
    "timeout",
    "internal",
]


class ErrorEvent(BaseModel):
    type: Literal["error"] = "error"
    code: ErrorCode
    message: str
    conversation_id: str | None = None
    message_id: str | None = None
