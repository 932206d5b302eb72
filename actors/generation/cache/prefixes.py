"""The engine's prefix cache: where each sequence starts, what prefill stores, what goes.

Between the engine (which runs sequences) and ``cache.prompt_cache`` (which holds KV
caches under a policy): a sequence starts from the longest stored prefix of its prompt
and carries the checkpoints still ahead of it (``cache.checkpoints``); the caches the
batch and the Solo copied on their way are kept once per step, and the cache is trimmed
to its bounds then. In a group, rank 0 alone trims, and its evictions travel with its
next plan (``StepPlan.evict``), so every rank's cache holds the same prefixes.

Engine thread only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from actors.generation.cache.checkpoints import due
from actors.generation.cache.prompt_cache import PromptCache, default_budget
from actors.generation.requests.admission import Sequence

Stored = tuple[list[int], list[Any], str]  # tokens, their KV cache, kind


class Prefixes:
    """A ``PromptCache`` as the engine uses it."""

    def __init__(
        self,
        model: Any,
        model_name: str,
        *,
        max_bytes: int | None,  # None: default_budget(model)
        max_entries: int,
        active_bytes: Callable[[], int],
        leads: bool,  # this rank decides evictions (single rank, or rank 0)
        shares: bool,  # other ranks follow this one's evictions
    ) -> None:
        budget = default_budget(model) if max_bytes is None else max_bytes
        self._cache = PromptCache(
            model_name,
            max_bytes=budget,
            max_entries=max_entries,
            active_bytes=active_bytes,
            decides=leads,
        )
        self._shares = shares
        self._evicted: list[int] = []  # rank 0: entries evicted, for the next plan
        # Admitted, waiting for a running prefill's checkpoint: (sequence, its request, offset)
        self.waiting: dict[str, tuple[Sequence, str, int]] = {}

    @property
    def budget(self) -> int:
        return self._cache.max_bytes

    def start(self, seq: Sequence) -> tuple[list[Any] | None, list[int], list[tuple[int, str]]]:
        """(cache, prompt left to feed, checkpoints ahead) for ``seq``; sets its cached_tokens."""
        cache, rest = self._cache.nearest(seq.prompt)
        seq.cached_tokens = len(seq.prompt) - len(rest)
        return cache, rest, due(seq.checkpoints, seq.cached_tokens, len(seq.prompt))

    def keep(self, tokens: list[int] | None, cache: list[Any] | None, kind: str = "assistant"):
        """A finished (or cancelled) sequence's cache, or a checkpoint; never touched again."""
        self._cache.keep(tokens, cache, kind)

    def store(self, stored: list[Stored]) -> None:
        """Keep the checkpoints a step's prefill took."""
        for tokens, cache, kind in stored:
            self._cache.keep(tokens, cache, kind)

    def trim(self) -> None:
        """Bring the cache within its bounds: once per step, after every lookup of the step."""
        evicted = self._cache.trim()
        if self._shares:
            self._evicted += evicted

    def wait(self, seq: Sequence, prefilling: Iterable[tuple[Sequence, list[int]]]) -> bool:
        """Whether ``seq`` waits for a running prefill that will store a prefix it needs.

        ``prefilling``: running sequences and the checkpoint offsets still ahead of them.
        Requests that arrive together with one new system prompt then prefill it once:
        the first, while the others wait for its checkpoint and start from it.
        """
        for offset, _ in sorted(seq.checkpoints, reverse=True):
            for other, ahead in prefilling:
                if offset in ahead and other.prompt[:offset] == seq.prompt[:offset]:
                    self.waiting[seq.request_id] = (seq, other.request_id, offset)
                    return True
        return False

    def released(
        self, prefilling: Callable[[], Iterable[tuple[Sequence, list[int]]]]
    ) -> list[Sequence]:
        """The waiting sequences whose checkpoint is stored (or never will be), to start now.

        Called after ``store`` and before ``trim``, on every rank at the same point.
        """
        if not self.waiting:
            return []
        ahead = {seq.request_id: offsets for seq, offsets in prefilling()}
        ready = [
            s for s, other, offset in self.waiting.values() if offset not in ahead.get(other, ())
        ]
        for seq in ready:
            del self.waiting[seq.request_id]
        return ready

    def take_evicted(self) -> list[int]:
        """Rank 0: what it evicted since its last plan."""
        evicted, self._evicted = self._evicted, []
        return evicted

    def follow(self, evicted: list[int]) -> None:
        """Another rank: drop what rank 0 evicted, before the plan's admissions."""
        self._cache.evict(evicted)

    def stats(self) -> dict[str, int]:
        return self._cache.stats()

    def clear(self) -> None:
        self._cache.clear()
