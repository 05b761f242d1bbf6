"""Copy one sequence's KV cache from one llama.cpp context to another of the same architecture.

The engine decodes a lone answer on the shipped quantized weights and batches on a re-encoded copy; the
KV cache does not depend on the weights' format, so a sequence moves between the two contexts with
`llama_state_seq_get_data` / `llama_state_seq_set_data` (a few MB, a few ms) instead of a new prefill.

A sequence's state is `magic, seq id, n_stream` and then one cell count per stream of the source's cache,
of which only the sequence's own stream is non-empty (its cells and their K and V rows follow that count).
llama.cpp refuses data written by a cache with another number of streams (a context of 8 sequences with a
cache per sequence, one of 1), although the one stream's block is the same: `restream` rewrites the header
and the empty counts for the destination. The engine checks the round trip when it starts (`copy_seq` on a
real prompt, logits compared) and decodes without the second context if it fails.
"""

from __future__ import annotations

import ctypes
import struct
from typing import Any

_HEAD = struct.Struct("<IiI")  # magic, the source's seq id, n_stream
_COUNT = struct.Struct("<I")


def restream(data: bytes, n_streams: int) -> bytes:
    """`data` (one sequence's state) as a cache with `n_streams` streams would have written it."""
    magic, seq, n_src = _HEAD.unpack_from(data)
    at = _HEAD.size
    skipped = 0
    while skipped < n_src and _COUNT.unpack_from(data, at)[0] == 0:  # empty streams before the sequence's own
        at += _COUNT.size
        skipped += 1
    if skipped == n_src:  # the sequence holds no cells
        return _HEAD.pack(magic, seq, n_streams) + bytes(_COUNT.size * n_streams)
    after = n_src - 1 - skipped  # empty streams after it: the data's last counts
    end = len(data) - _COUNT.size * after
    if data[end:] != bytes(_COUNT.size * after):
        raise ValueError("unexpected sequence state: more than one stream holds cells")
    return _HEAD.pack(magic, seq, n_streams) + data[at:end] + bytes(_COUNT.size * (n_streams - 1))


def copy_seq(lib: Any, src: Any, src_seq: int, dst: Any, dst_seq: int, dst_streams: int) -> int:
    """Replace `dst_seq` of context `dst` with `src_seq` of `src`; returns the bytes copied. Raises on failure."""
    size = lib.llama_state_seq_get_size(src, src_seq)
    buf = (ctypes.c_uint8 * size)()
    got = lib.llama_state_seq_get_data(src, buf, size, src_seq)
    if got == 0:
        raise RuntimeError("llama.cpp could not save the sequence's state")
    data = restream(bytes(memoryview(buf)[:got]), dst_streams)
    out = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
    if lib.llama_state_seq_set_data(dst, out, len(data), dst_seq) != len(data):
        raise RuntimeError("llama.cpp could not restore the sequence's state in the other context")
    return len(data)
