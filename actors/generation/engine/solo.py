"""A sequence alone in the engine, decoded the way mlx_lm's ``generate_step`` does.

``BatchGenerator`` keeps a batched KV cache with per-row offsets and an attention mask
and splits logits and logprobs per row; for a batch of one that costs 10-20 % per token
on a small model against ``generate_step``'s plain cache. So the engine runs a lone
sequence here, and hands it to the batch the moment a second one arrives: the KV cache,
the tokens it holds and the token sampled but not yet fed travel with it, and the
sequence goes on token for token (the same sampler object, so a seeded request draws
the same numbers either way).

Engine thread only. Steps are pipelined as in ``generate_step``: the forward pass for
token k+1 is queued before token k is read back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import TokenBuffer, make_prompt_cache

from actors.generation.cache.checkpoints import snapshot
from actors.generation.requests.admission import Sequence

CLEAR_CACHE_EVERY = 256  # tokens, as generate_step does


@dataclass(frozen=True)
class SoloToken:
    """One token read back: what ``BatchGenerator``'s responses say about a token."""

    token: int
    logprobs: mx.array  # log-probabilities over the vocabulary
    eos: bool  # one of the stop ids
    at_length: bool  # the sequence's last allowed token


class Solo:
    """Prefill and decode of one ``Sequence`` with a plain (unbatched) KV cache."""

    def __init__(
        self,
        model: Any,
        seq: Sequence,
        cache: list[Any] | None,
        rest: list[int],
        *,
        stream: Any,
        prefill_step_size: int,
        stop_ids: frozenset[int],
        ends: list[tuple[int, str]] = (),
    ) -> None:
        """``cache`` holds ``seq.prompt`` but ``rest`` (None: empty); ``rest`` is never empty.

        ``ends``: ``(offset, kind)`` ahead in the prompt where prefill chunks stop and a
        copy of the cache goes to ``stored`` (``actors.generation.cache.checkpoints``).
        """
        if not rest:
            raise ValueError("a sequence needs at least one prompt token to feed")
        self.seq = seq
        self.cache = cache if cache is not None else make_prompt_cache(model)
        self.tokens = list(seq.prompt[: len(seq.prompt) - len(rest)])  # what the cache holds
        self._model = model
        self._stream = stream
        self._prefill_step_size = prefill_step_size
        self._stop_ids = stop_ids
        self._rest = list(rest)  # prompt not yet fed
        self._context = TokenBuffer(self.tokens) if seq.processors else None
        self._next: tuple[mx.array, mx.array] | None = None  # sampled, not yet read back
        self.ends = list(ends)  # still ahead
        self.stored: list[tuple[list[int], list[Any], str]] = []  # checkpoints taken, to keep

    def step(self) -> SoloToken | None:
        """Feed one chunk of prompt (None), or decode one token."""
        with mx.stream(self._stream):
            if len(self._rest) > 1:
                size = min(self._prefill_step_size, len(self._rest) - 1)
                if self.ends:  # stop at the next end, to copy the cache there
                    size = min(size, self.ends[0][0] - len(self.tokens))
                chunk = self._rest[:size]
                self._rest = self._rest[len(chunk) :]
                inputs = mx.array(chunk)
                self._model(inputs[None], cache=self.cache)
                if self._context is not None:
                    self._context.update_and_fetch(inputs)
                mx.eval([c.state for c in self.cache])
                self.tokens.extend(chunk)
                if self.ends and self.ends[0][0] == len(self.tokens):
                    copy = snapshot(self.cache)
                    kind = self.ends.pop(0)[1]
                    if copy is not None:
                        self.stored.append((list(self.tokens), copy, kind))
                mx.clear_cache()
                return None
            if self._next is None:  # the last prompt token: sample the first new one
                last, self._rest = self._rest, []
                self._next = self._forward(mx.array(last))
                self.tokens.extend(last)
            return self._decode()

    def hand_over(self) -> tuple[SoloToken | None, list[int]]:
        """Stop here for the batch: (the sampled token not yet read back, what is left to feed).

        After a token the batch must feed ``[token]``; during prefill, the prompt left.
        ``self.cache`` then holds exactly ``self.tokens``.
        """
        if self._next is None:
            return None, self._rest
        y, logprobs = self._next
        self._next = None
        token = self._read(y, logprobs, fed=False)
        return token, [token.token]

    def _decode(self) -> SoloToken:
        y, logprobs = self._next
        self._next = None
        last = self._last_allowed
        if not last:
            self._next = self._forward(y)  # queued before this token is read back
        token = self._read(y, logprobs, fed=not last)
        if self.seq.generated % CLEAR_CACHE_EVERY == 0:
            mx.clear_cache()
        return token

    @property
    def _last_allowed(self) -> bool:
        """Whether the token read back next is the sequence's last allowed one."""
        return self.seq.generated + 1 >= self.seq.max_new_tokens

    def _read(self, y: mx.array, logprobs: mx.array, *, fed: bool) -> SoloToken:
        """``fed``: a forward pass that feeds this token is already queued."""
        token = y.item()
        if fed:
            self.tokens.append(token)
        return SoloToken(token, logprobs, token in self._stop_ids, self._last_allowed)

    def _forward(self, inputs: mx.array) -> tuple[mx.array, mx.array]:
        """Feed ``inputs`` (1-D), sample the next token; both queued, not evaluated."""
        logits = self._model(inputs[None], cache=self.cache)[:, -1, :]
        if self._context is not None:
            context = self._context.update_and_fetch(inputs)
            for processor in self.seq.processors:
                logits = processor(context, logits)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        sampled = self.seq.sampler(logprobs)
        mx.async_eval(sampled, logprobs)
        return sampled, logprobs.squeeze(0)
