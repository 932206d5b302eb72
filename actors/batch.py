"""The sequences decoding together: mlx_lm's ``BatchGenerator`` and which sequence is which uid.

Engine thread only (``open`` included: MLX streams belong to the thread that made them).
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
from mlx_lm.generate import BatchGenerator, StopSequences, make_stop_sequences

from actors.admission import Sequence


class Batch:
    """Continuous batching of ``Sequence``s, each known by the uid ``BatchGenerator`` gave it."""

    def __init__(self, model: Any, tokenizer: Any, *, max_batch: int, prefill_step_size: int):
        self._model = model
        self._max_batch = max_batch
        self._prefill_step_size = prefill_step_size
        self._eos_stop = make_stop_sequences(tokenizer)
        self._no_stop = StopSequences()  # ignore_eos
        self._generator: BatchGenerator | None = None
        self.seqs: dict[int, Sequence] = {}

    def open(self) -> None:
        # The default stream, as mlx_lm.server does: collectives of a distributed group
        # must never race a step queued on another stream.
        self._generator = BatchGenerator(
            self._model,
            completion_batch_size=self._max_batch,
            prefill_step_size=self._prefill_step_size,
            stream=mx.default_stream(mx.default_device()),
        )

    @property
    def stream(self) -> Any:
        return self._generator.stream

    def __len__(self) -> int:
        return len(self.seqs)

    def insert(
        self, seq: Sequence, rest: list[int], cache: list[Any] | None, held: list[int]
    ) -> None:
        """Add a sequence: ``cache`` (None: empty) holds ``held``; ``rest`` is still to feed."""
        (seq.uid,) = self._generator.insert(
            [rest],
            max_tokens=[seq.max_new_tokens - seq.generated],
            caches=[cache],
            all_tokens=[held],
            samplers=[seq.sampler],
            logits_processors=[seq.processors],
            stop_sequences=[self._no_stop if seq.ignores_eos else self._eos_stop],
        )
        self.seqs[seq.uid] = seq

    def remove(self, uids: list[int]) -> list[tuple[list[Any], list[int]]]:
        """Take sequences out; their KV caches with the tokens each holds."""
        if not uids:
            return []
        return list(self._generator.remove(uids, return_prompt_caches=True).values())

    def step(self) -> tuple[int, list[tuple[Sequence, Any]]]:
        """Advance one step: (prompt chunks and tokens it made, each token's sequence and response).

        A response is ``BatchGenerator``'s: ``token``, ``logprobs``, ``finish_reason``
        ("stop": an EOS id, "length", None) and, when finished, ``prompt_cache`` and
        ``all_tokens``. Raises what the step raised; the batch's state is then suspect.
        """
        prompt_responses, responses = self._generator.next()
        mine = [(self.seqs[r.uid], r) for r in responses if r.uid in self.seqs]
        return len(prompt_responses) + len(responses), mine

    def forget(self, seq: Sequence) -> None:
        self.seqs.pop(seq.uid, None)

    def reset(self) -> None:
        """Start over empty, with a fresh ``BatchGenerator``."""
        self.close()
        self.seqs.clear()
        self.open()

    def close(self) -> None:
        if self._generator is not None:
            self._generator.close()
        self._generator = None
