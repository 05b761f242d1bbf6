"""Moderation: fast offline classifiers for input, retrieved context and streamed output; an optional
guard model served on-prem. `build_moderator(settings)` is the one place that chooses.
"""

from __future__ import annotations

from enclave.core.protocols import GenerationBackend, Moderator
from enclave.core.settings import ModerationSettings
from enclave.moderation.embedding import Embed
from enclave.moderation.moderator import CompositeModerator, FastModerator, GuardModelModerator

__all__ = ["CompositeModerator", "FastModerator", "GuardModelModerator", "build_moderator"]


def build_moderator(
    settings: ModerationSettings, backend: GenerationBackend | None = None, embed: Embed | None = None
) -> Moderator:
    """`embed`: the service's sentence embedder (the knowledge base's), for the embedding classifier."""
    fast = FastModerator(settings, embed=embed)
    if settings.guard_model and backend is not None:
        return CompositeModerator(fast, GuardModelModerator(backend, settings.guard_model), settings.guard_min_harm)
    return fast
