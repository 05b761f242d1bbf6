"""Constrained output on llama.cpp: an OutputSpec as a GBNF grammar, and a mask that keeps sampling inside it.

The grammar comes from llama.cpp's own JSON-schema converter (shipped in llama-cpp-python) and runs in
llama.cpp's grammar sampler; the engine samples in NumPy, so the mask asks the grammar only about the
most likely tokens and falls back to the whole vocabulary when none of them fits.
"""

from __future__ import annotations

import ctypes
import json
import re
from typing import Any

import numpy as np

from enclave.core.errors import InvalidRequest
from enclave.core.protocols import TOOL_CLOSE, TOOL_OPEN, OutputSpec

# The first tokens the grammar is asked about; only when none of them fits is the whole vocabulary checked.
FIRST_LOOK = 64
_ROOT = re.compile(r"(?<![\w-])root(?![\w-])")


def _schema_gbnf(schema: dict[str, Any], start: str = "root") -> str:
    """GBNF for `schema` whose start rule is named `start` (the converter's other rules keep their names)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        gbnf = json_schema_to_gbnf(json.dumps(schema), prop_order=["name", "arguments"])
    except Exception as exc:  # the converter raises plain errors on schema features it lacks
        raise InvalidRequest(f"the JSON schema cannot be enforced: {exc}") from exc
    return _ROOT.sub(start, gbnf)


def tool_call_schema(spec: OutputSpec) -> dict[str, Any]:
    """The JSON of one call to one of the tools tool_choice allows."""
    tools = spec.tools
    if spec.tool_choice not in ("auto", "required"):
        tools = [t for t in tools if t.name == spec.tool_choice]
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": t.parameters or {"type": "object"}},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    return calls[0] if len(calls) == 1 else {"anyOf": calls}


# Any JSON object nests at most this deep: small models asked for "JSON" otherwise nest objects in objects
# until the length limit (SmolLM2-135M did, greedy, on "three facts about Paris").
MAX_DEPTH = 4


def json_object_gbnf(depth: int = MAX_DEPTH) -> str:
    """Any JSON object, nested at most `depth` levels; whitespace bounded so it cannot run on."""
    rules = [
        "root ::= obj1",
        r'str ::= "\"" ( [^"\\\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} ) )* "\"" ws',
        'num ::= "-"? ( "0" | [1-9] [0-9]{0,15} ) ( "." [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,3} )? ws',
        'lit ::= ( "true" | "false" | "null" ) ws',
        r'ws ::= "" | " " | "\n" [ \t]{0,16}',
    ]
    for d in range(1, depth + 1):
        deeper = f" | obj{d + 1} | arr{d + 1}" if d < depth else ""
        rules += [
            f'obj{d} ::= "{{" ws ( str ":" ws val{d} ( "," ws str ":" ws val{d} )* )? "}}" ws',
            f'arr{d} ::= "[" ws ( val{d} ( "," ws val{d} )* )? "]" ws',
            f"val{d} ::= str | num | lit{deeper}",
        ]
    return "\n".join(rules)


def gbnf_of(spec: OutputSpec) -> str:
    """The grammar every answer to `spec` must match."""
    if spec.kind == "json":
        return json_object_gbnf() if spec.json_schema is None else _schema_gbnf(spec.json_schema, "root")
    # Enclave's own rules carry a prefix no converter rule has (those are named after schema properties).
    call = _schema_gbnf(tool_call_schema(spec), "enclave-call")
    tc = f'enclave-tc ::= "{TOOL_OPEN}\\n" enclave-call "\\n{TOOL_CLOSE}"'
    more = ' ("\\n" enclave-tc)*' if spec.parallel_tool_calls else ""
    calls = f"enclave-calls ::= enclave-tc{more}"
    if spec.tool_choice == "auto":
        # Plain text may not start with "<": an answer that does is a tool call.
        root = "root ::= enclave-calls | enclave-text\nenclave-text ::= [^<] [^\\x00]*"
    else:
        root = "root ::= enclave-calls"
    return "\n".join([root, calls, tc, call])


class GrammarMask:
    """llama.cpp's grammar sampler over the engine's logits: `mask` before sampling, `accept` each token taken."""

    def __init__(self, lib: Any, vocab: Any, gbnf: str, n_vocab: int) -> None:
        self.lib = lib
        self.ptr = lib.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
        if not self.ptr:
            raise ValueError("llama.cpp could not parse the output grammar")
        self.n_vocab = n_vocab
        self._data: Any = None  # a token-data buffer for the whole vocabulary, made when first needed

    def _apply(self, ids: Any, logits: Any) -> Any:
        """The logits of `ids` after the grammar: -inf where a token cannot come next."""
        n = len(ids)
        if self._data is None or len(self._data) < n:
            self._data = (self.lib.llama_token_data * max(n, FIRST_LOOK))()
        view = np.frombuffer(self._data, dtype=np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")]), count=n)
        view["id"] = ids
        view["logit"] = logits
        view["p"] = 0.0
        arr = self.lib.llama_token_data_array(
            ctypes.cast(self._data, ctypes.POINTER(self.lib.llama_token_data)), n, -1, False
        )
        self.lib.llama_sampler_apply(self.ptr, ctypes.byref(arr))
        # The grammar sampler only sets logits to -inf in place; it neither reorders nor resizes the array.
        return view["logit"].copy()

    def mask(self, logits: Any) -> Any:
        """`logits` with every token the grammar forbids next at -inf."""
        top = np.argpartition(-logits, FIRST_LOOK)[:FIRST_LOOK]
        kept = self._apply(top.astype(np.int32), logits[top])
        out = np.full_like(logits, -np.inf)
        if np.isfinite(kept).any():
            out[top] = kept
            return out
        every = np.arange(self.n_vocab, dtype=np.int32)
        out[:] = self._apply(every, logits[: self.n_vocab])
        if not np.isfinite(out).any():
            raise RuntimeError("no token fits the output grammar")
        return out

    def accept(self, tok: int) -> None:
        self.lib.llama_sampler_accept(self.ptr, tok)

    def close(self) -> None:
        if self.ptr:
            self.lib.llama_sampler_free(self.ptr)
            self.ptr = None
