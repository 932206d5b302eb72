"""Per-request samplers, logits processors and logprobs, built from mlx_lm's own pieces.

Everything here runs on the engine thread. A request's parameters are validated
before anything reaches ``BatchGenerator``: a bad value raised inside a batch step
would fail every request in the batch, not just the one that sent it.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
from mlx_lm.sample_utils import (
    LogitsProcessor,
    Sampler,
    apply_min_p,
    apply_top_k,
    apply_top_p,
    greedy_sampler,
    make_logits_processors,
    make_sampler,
)

from actors.protocol.messages import SamplingParams, TokenLogprob, TopLogprob

MAX_TOP_LOGPROBS = 20
IMPOSSIBLE_LOGPROB = -9999.0


def validate_sampling(params: SamplingParams, vocab_size: int) -> None:
    """Raise ``ValueError`` naming the first parameter a sampler could not use."""
    if params.temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {params.temperature}")
    if not 0.0 <= params.top_p <= 1.0:
        raise ValueError(f"top_p must be in [0, 1], got {params.top_p}")
    if params.top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 disables it), got {params.top_k}")
    if not 0.0 <= params.min_p <= 1.0:
        raise ValueError(f"min_p must be in [0, 1], got {params.min_p}")
    if params.repetition_penalty is not None and params.repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {params.repetition_penalty}")
    for token_id in params.logit_bias or {}:
        if not 0 <= token_id < vocab_size:
            raise ValueError(
                f"logit_bias names token {token_id}; the vocabulary is 0..{vocab_size - 1}"
            )


def make_request_sampler(params: SamplingParams, vocab_size: int) -> Sampler:
    """The sampler for one request: greedy at temperature 0, keyed by ``seed`` if one is set."""
    if params.temperature == 0:
        # The shared object lets BatchGenerator sample an all-greedy batch in one call.
        return greedy_sampler
    # apply_top_k rejects k >= vocab; such a k keeps every token anyway.
    top_k = params.top_k if params.top_k < vocab_size else 0
    if params.seed is None:
        return make_sampler(params.temperature, top_p=params.top_p, min_p=params.min_p, top_k=top_k)
    return make_seeded_sampler(
        params.temperature, params.seed, top_p=params.top_p, min_p=params.min_p, top_k=top_k
    )


def make_seeded_sampler(
    temperature: float, seed: int, *, top_p: float = 1.0, min_p: float = 0.0, top_k: int = 0
) -> Sampler:
    """A sampler drawing from its own ``mx.random`` key, split once per token.

    ``mx.random.seed`` is global: under batching, neighbours draw from the same
    stream and a request's output would depend on who it shares the batch with.
    Filters are mlx_lm's, applied in ``make_sampler``'s order.
    """
    filters: list[Callable[[mx.array], mx.array]] = []
    if 0 < top_p < 1.0:
        filters.append(lambda x: apply_top_p(x, top_p))
    if min_p != 0.0:
        filters.append(lambda x: apply_min_p(x, min_p))
    if top_k > 0:
        filters.append(lambda x: apply_top_k(x, top_k))
    key = mx.random.key(seed % (1 << 64))
    inverse_temperature = 1.0 / temperature

    def sampler(logprobs: mx.array) -> mx.array:
        nonlocal key
        key, subkey = mx.random.split(key)
        for apply in filters:
            logprobs = apply(logprobs)
        return mx.random.categorical(logprobs * inverse_temperature, key=subkey)

    return sampler


def make_request_processors(params: SamplingParams) -> list[LogitsProcessor]:
    """logit_bias, repetition, presence and frequency penalties, as mlx_lm builds them."""
    return make_logits_processors(
        logit_bias=params.logit_bias or None,
        repetition_penalty=params.repetition_penalty,
        presence_penalty=params.presence_penalty or None,
        frequency_penalty=params.frequency_penalty or None,
    )


def token_logprob(
    logprobs: mx.array, token: int, top_n: int, decode: Callable[[int], str]
) -> TokenLogprob:
    """The sampled token's logprob and the ``top_n`` most likely tokens, best first.

    Costs a device sync, so callers only ask when the request wants logprobs.
    """
    top: list[TopLogprob] = []
    if top_n > 0:
        top_n = min(top_n, MAX_TOP_LOGPROBS, logprobs.shape[-1])
        ids = mx.argpartition(-logprobs, kth=top_n - 1)[:top_n]
        values = logprobs[ids]
        pairs = sorted(zip(ids.tolist(), values.tolist(), strict=True), key=lambda p: -p[1])
        top = [TopLogprob(token_id=i, token=decode(i), logprob=finite(v)) for i, v in pairs]
    return TokenLogprob(
        token_id=token, token=decode(token), logprob=finite(logprobs[token].item()), top=top
    )


def finite(logprob: float) -> float:
    """A token a grammar masked has logprob -inf, which JSON cannot carry (it becomes null);
    OpenAI writes -9999.0 for "as good as impossible"."""
    return max(logprob, IMPOSSIBLE_LOGPROB)
