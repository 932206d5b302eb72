"""KV caches of finished (and cancelled) sequences, served to later prompts that share a prefix."""

from __future__ import annotations

from typing import Any

from mlx_lm.models.cache import LRUPromptCache, can_trim_prompt_cache, trim_prompt_cache


class PromptCache:
    """mlx_lm's ``LRUPromptCache`` for one model, always leaving a token to feed."""

    def __init__(self, model_name: str, size: int) -> None:
        self._model_name = model_name
        self._lru = LRUPromptCache(max_size=size)

    def nearest(self, prompt: list[int]) -> tuple[list[Any] | None, list[int]]:
        """A copy of the cache of the longest known prefix, and the part of ``prompt`` after it.

        What is left is never empty: an exact hit is trimmed by one token, because
        generation starts by feeding one (``BatchGenerator`` rejects an empty prompt).
        """
        cache, rest = self._lru.fetch_nearest_cache(self._model_name, prompt)
        if cache is not None and not rest:
            if not can_trim_prompt_cache(cache):
                return None, prompt
            trim_prompt_cache(cache, 1)
            rest = prompt[-1:]
        return cache, rest

    def keep(self, tokens: list[int] | None, cache: list[Any] | None) -> None:
        """Remember ``cache``, holding exactly ``tokens``; the caller must not touch it again."""
        if tokens and cache:
            self._lru.insert_cache(self._model_name, list(tokens), cache)

    def clear(self) -> None:
        """Drop every cache (their arrays go with them)."""
        self._lru = LRUPromptCache(max_size=0)
