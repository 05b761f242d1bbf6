"""Structured answers: what the model is told about a JSON schema or tools, and reading tool calls back.

The backend enforces the shape while sampling (protocols.OutputSpec); the prompt tells the model what the
shape means, so that the values inside it are right too. Tool calls are written as
`<tool_call>{"name": …, "arguments": {…}}</tool_call>` blocks (the format Qwen2.5 is trained on).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from enclave.core.protocols import TOOL_CLOSE, TOOL_OPEN, Message, OutputSpec

_CALL = re.compile(re.escape(TOOL_OPEN) + r"\s*(.*?)\s*" + re.escape(TOOL_CLOSE), re.S)


def instructions(spec: OutputSpec) -> str:
    """The system prompt's paragraph on the answer's shape."""
    if spec.kind == "json":
        if spec.json_schema is None:
            return "Answer with one JSON object and nothing else."
        return "Answer with one JSON value and nothing else. It must match this JSON schema:\n" + json.dumps(
            spec.json_schema, ensure_ascii=False
        )
    tools = "\n".join(
        json.dumps({"name": t.name, "description": t.description, "parameters": t.parameters}, ensure_ascii=False)
        for t in spec.tools
    )
    if spec.tool_choice == "auto":
        when = (
            "When one of these functions can answer the question or do what the user asks, call it instead of "
            "answering from memory; otherwise answer in plain text."
        )
    elif spec.tool_choice == "required":
        when = "Answer by calling one of the functions."
    else:
        when = f"Answer by calling the function {spec.tool_choice}."
    return (
        "# Tools\n\nThese functions are available, one JSON signature per line:\n<tools>\n"
        f"{tools}\n</tools>\n\n{when} To call one, write its name and arguments as JSON inside "
        f'{TOOL_OPEN}{TOOL_CLOSE} tags:\n{TOOL_OPEN}\n{{"name": "<function name>", "arguments": '
        f"{{<arguments as a JSON object>}}}}\n{TOOL_CLOSE}"
    )


def with_instructions(messages: list[Message], spec: OutputSpec | None) -> list[Message]:
    """`messages` with the shape's instructions at the end of the first system message (one made if none)."""
    if spec is None:
        return messages
    text = instructions(spec)
    for i, m in enumerate(messages):
        if m.role == "system":
            return [*messages[:i], Message(role="system", content=f"{m.content}\n\n{text}"), *messages[i + 1 :]]
    return [Message(role="system", content=text), *messages]


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI's clients expect it

    def openai(self, index: int | None = None) -> dict[str, Any]:
        call: dict[str, Any] = {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }
        return call if index is None else {"index": index, **call}


def tool_calls_of(text: str) -> list[ToolCall]:
    """The calls in an answer (none if it is plain text). A block that is not a call's JSON is skipped."""
    calls = []
    for block in _CALL.findall(text):
        try:
            data = json.loads(block)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            args = data.get("arguments", {})
            calls.append(ToolCall("call_" + uuid.uuid4().hex[:24], data["name"], json.dumps(args, ensure_ascii=False)))
    return calls


def tool_call_text(name: str, arguments: str) -> str:
    """An earlier assistant turn's call as the model wrote it (for the history a client sends back)."""
    try:
        args: Any = json.loads(arguments) if arguments else {}
    except json.JSONDecodeError:
        args = arguments
    return f"{TOOL_OPEN}\n{json.dumps({'name': name, 'arguments': args}, ensure_ascii=False)}\n{TOOL_CLOSE}"


def tool_result_text(content: str, last: bool = False) -> str:
    """A tool's result, as the user turn that gives it back to the model. The last one asks for the answer:
    without that, Qwen2.5-Coder-0.5B wrote the same call again (it began a call with P 0.76; under 0.03 with it)."""
    ask = "\nAnswer from this result." if last else ""
    return f"<tool_response>\n{content}\n</tool_response>{ask}"
