"""KV caches of prompt prefixes, served to later prompts that share them; bounded by bytes.

Entries are mlx_lm cache objects in mlx_lm's ``PromptTrie`` (the nearest-prefix search
``LRUPromptCache`` uses), under our own eviction policy: mlx_lm's LRU by cache type lets
a burst of one-off conversations push out a system prompt that every conversation shares
(issue 10), so an entry here is evicted by what it is worth, not by age alone.

Kinds of entry, by what the prefix ends with:
- "system": the end of the system prompt, stored during prefill (``checkpoints``);
- "user": the end of an earlier turn of a conversation, stored likewise;
- "assistant": a finished (or cancelled) sequence, prompt and output.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlx_lm.models.cache import PromptTrie, can_trim_prompt_cache, trim_prompt_cache

# What a reuse of an entry of each kind is worth, relative to a finished one-off: a
# system prompt is shared by every conversation that uses it, an earlier turn by the
# conversation's next turn only.
KIND_WEIGHT = {"system": 8.0, "user": 2.0, "assistant": 1.0}
# An entry unused for this many later insertions has lost half its value: a system
# prompt nobody sends any more makes room in the end.
HALF_LIFE = 256


@dataclass
class Entry:
    """One stored prefix: its mlx_lm cache and what the policy weighs."""

    cache: list[Any]
    tokens: list[int]
    kind: str
    nbytes: int
    hits: int = 0  # requests that started from it
    used: int = 0  # insertion count at its last store or hit
    id: int = 0  # insertion count when stored: the same on every rank of a group


def worth(entry: Entry, now: int) -> float:
    """What keeping ``entry`` is worth: kind × (1 + hits) × log(length), halved per HALF_LIFE."""
    age = max(0, now - entry.used)
    base = KIND_WEIGHT.get(entry.kind, 1.0) * (1 + entry.hits) * math.log2(2 + len(entry.tokens))
    return base * 0.5 ** (age / HALF_LIFE)


def victim(entries: list[Entry], now: int) -> Entry:
    """The entry to evict: the least worth, the least recently used among equals."""
    return min(entries, key=lambda e: (worth(e, now), e.used))


class PromptCache:
    """Prefix caches for one model, at most ``max_entries`` and ``max_bytes`` with the batch's.

    ``active_bytes`` reports the KV bytes the running sequences hold: they count against
    ``max_bytes`` too, as in ``mlx_lm.server`` (``prompt_cache_bytes``), so the cache
    shrinks while the batch is large. Engine thread only.

    Entries are evicted only by ``trim``, which the engine calls once per step: the ranks
    of a group store the same entries in the same order (they apply the same plans), and
    only rank 0 trims (``decides``); the others drop what it evicted (``evict``) before
    the next plan's admissions, so every rank finds the same prefix for every prompt.
    """

    def __init__(
        self,
        model_name: str,
        *,
        max_bytes: int,
        max_entries: int,
        active_bytes: Callable[[], int] = lambda: 0,
        decides: bool = True,
    ) -> None:
        self._model = model_name
        self._decides = decides
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._active_bytes = active_bytes
        self._trie = PromptTrie()
        self._entries: dict[tuple[int, ...], Entry] = {}
        self.nbytes = 0
        self._clock = 0  # insertions so far: the policy's notion of time

    def __len__(self) -> int:
        return len(self._entries)

    def nearest(self, prompt: list[int]) -> tuple[list[Any] | None, list[int]]:
        """A copy of the cache of the longest known prefix, and the part of ``prompt`` after it.

        What is left is never empty: generation starts by feeding one token
        (``BatchGenerator`` rejects an empty prompt), so an exact hit gives one token back.
        """
        found = self._trie.search(self._model, prompt)
        shorter = len(found.shorter) if found.shorter is not None else 0
        credited: list[Entry] = []
        cache, held = None, 0
        if found.exact is not None:
            entry = self._entry(found.exact)
            if can_trim_prompt_cache(entry.cache):
                cache, held = self._copy(entry, len(prompt) - 1), len(prompt) - 1
                credited.append(entry)
        elif found.longer is not None and found.common_prefix > shorter:
            entry = self._entry(found.longer)
            if can_trim_prompt_cache(entry.cache):
                held = min(len(prompt) - 1, found.common_prefix)
                cache = self._copy(entry, held)
                credited.append(entry)
        if cache is None and shorter > 0:
            entry = self._entry(found.shorter)
            cache, held = copy.deepcopy(entry.cache), shorter
        if found.shorter is not None:
            credited.append(self._entry(found.shorter))  # the shared part that made the hit
        for entry in credited:
            entry.hits += 1
            entry.used = self._clock
        if cache is None:
            return None, prompt
        return cache, prompt[held:]

    def keep(self, tokens: list[int] | None, cache: list[Any] | None, kind: str = "assistant"):
        """Remember ``cache``, holding exactly ``tokens``; the caller must not touch it again."""
        if not tokens or not cache:
            return
        tokens = list(tokens)
        key = tuple(tokens)
        self._clock += 1
        nbytes = sum(c.nbytes for c in cache)
        entry = Entry(cache, tokens, kind, nbytes, used=self._clock, id=self._clock)
        old = self._entries.get(key)
        if old is not None:  # the same prefix again: keep what it has earned
            self._drop(old)
            entry.hits = old.hits
            entry.kind = min(kind, old.kind, key=lambda k: -KIND_WEIGHT.get(k, 1.0))
        if can_trim_prompt_cache(cache):
            # A trimmable cache serves all its prefixes: finished ones inside it only take
            # room. Checkpoints stay: they outrank it, and a burst may evict it first.
            for prefix in self._prefixes(tokens):
                if prefix.kind == "assistant":
                    entry.hits = max(entry.hits, prefix.hits)
                    self._drop(prefix)
        self._trie.add(self._model, tokens, entry)
        self._entries[key] = entry
        self.nbytes += entry.nbytes

    def trim(self) -> list[int]:
        """Evict until within ``max_entries`` and ``max_bytes`` less the batch's KV bytes.

        The ids evicted, for the other ranks of a group; a rank that does not decide
        evicts nothing by itself.
        """
        evicted: list[int] = []
        if not self._decides or not self._entries:
            return evicted
        room = self.max_bytes - self._active_bytes()
        while self._entries and (len(self._entries) > self.max_entries or self.nbytes > room):
            entry = victim(list(self._entries.values()), self._clock)
            evicted.append(entry.id)
            self._drop(entry)
        return evicted

    def evict(self, ids: list[int]) -> None:
        """Drop the entries rank 0 evicted (by ``trim``)."""
        gone = set(ids)
        for entry in [e for e in self._entries.values() if e.id in gone]:
            self._drop(entry)

    def stats(self) -> dict[str, int]:
        return {"prompt_cache_bytes": self.nbytes, "prompt_cache_entries": len(self._entries)}

    def clear(self) -> None:
        """Drop every cache (their arrays go with them)."""
        self._trie = PromptTrie()
        self._entries.clear()
        self.nbytes = 0

    def _entry(self, tokens: list[int]) -> Entry:
        return self._trie.get(self._model, tokens)

    def _copy(self, entry: Entry, keep: int) -> list[Any]:
        cache = copy.deepcopy(entry.cache)
        trim_prompt_cache(cache, len(entry.tokens) - keep)
        return cache

    def _prefixes(self, tokens: list[int]) -> list[Entry]:
        return [
            e
            for e in self._entries.values()
            if len(e.tokens) < len(tokens) and tokens[: len(e.tokens)] == e.tokens
        ]

    def _drop(self, entry: Entry) -> None:
        self._trie.pop(self._model, entry.tokens)
        del self._entries[tuple(entry.tokens)]
        self.nbytes -= entry.nbytes


def default_budget(model: Any) -> int:
    """A quarter of the memory left after the weights: the default ``prompt_cache_bytes``.

    A Mac says its recommended working set (GPU memory); elsewhere the memory available
    now, once the weights are loaded, is what is left. A quarter leaves room for the
    running batch (which counts against the same bound), replicas and other processes.
    """
    import mlx.core as mx
    import psutil
    from mlx.utils import tree_flatten

    info = mx.device_info() if hasattr(mx, "device_info") else {}
    working_set = int(info.get("max_recommended_working_set_size", 0) or 0)
    if working_set:
        weights = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
        left = working_set - weights
    else:
        left = psutil.virtual_memory().available
    return max(0, left // 4)
