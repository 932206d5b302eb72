"""The sequences decoding together: mlx_lm's ``BatchGenerator`` and which sequence is which uid.

A token budget bounds the prompt tokens one step prefills across the batch. Left to
itself, one ``BatchGenerator.next()`` takes up to ``prefill_batch_size`` (8) waiting
prompts and feeds each ``prefill_step_size`` tokens in one padded forward pass: ten
2k-token prompts made one step of ~16k tokens (30 s on a small model), during which no
stream decoded and the watchdog saw no progress (issue 10). Here each step shares
``prefill_step_size`` tokens among the prompts being prefilled (at least ``MIN_CHUNK``
each, so at most budget / ``MIN_CHUNK`` prompts at once), and decoding goes on between.

Engine thread only (``open`` included: MLX streams belong to the thread that made them).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import mlx.core as mx
from mlx_lm.generate import BatchGenerator, StopSequences, make_stop_sequences

from actors.generation.requests.admission import Sequence

MIN_CHUNK = 32  # prompt tokens per sequence and step: smaller chunks waste the forward pass
MAX_PREFILL_BATCH = 8  # prompts prefilled together, as BatchGenerator's default


class Batch:
    """Continuous batching of ``Sequence``s, each known by the uid ``BatchGenerator`` gave it."""

    def __init__(self, model: Any, tokenizer: Any, *, max_batch: int, prefill_step_size: int):
        """``prefill_step_size``: the prompt tokens one step may prefill, all sequences together."""
        self._model = model
        self._max_batch = max_batch
        self._budget = prefill_step_size
        self._prefill_batch = max(1, min(MAX_PREFILL_BATCH, prefill_step_size // MIN_CHUNK))
        self._prefilling: set[int] = set()  # uids whose prompt is not all fed yet
        self._eos_stop = make_stop_sequences(tokenizer)
        self._no_stop = StopSequences()  # ignore_eos
        self._generator: BatchGenerator | None = None
        self.seqs: dict[int, Sequence] = {}
        self._ends: dict[int, deque[tuple[int, str]]] = {}  # uid: checkpoints still ahead
        self.stored: list[tuple[list[int], list[Any], str]] = []  # checkpoints taken, to keep

    def open(self) -> None:
        # The default stream, as mlx_lm.server does: collectives of a distributed group
        # must never race a step queued on another stream.
        self._generator = BatchGenerator(
            self._model,
            completion_batch_size=self._max_batch,
            prefill_batch_size=min(self._prefill_batch, self._max_batch),
            prefill_step_size=self._budget,
            stream=mx.default_stream(mx.default_device()),
        )

    @property
    def stream(self) -> Any:
        return self._generator.stream

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def kv_bytes(self) -> int:
        """Bytes of the KV caches the batch holds."""
        return self._generator.prompt_cache_nbytes if self._generator is not None else 0

    def insert(
        self,
        seq: Sequence,
        rest: list[int],
        cache: list[Any] | None,
        held: list[int],
        ends: list[tuple[int, str]] = (),
    ) -> None:
        """Add a sequence: ``cache`` (None: empty) holds ``held``; ``rest`` is still to feed.

        ``ends``: ``(offset, kind)`` ahead in the prompt where the KV cache is copied to
        ``stored`` as prefill passes (``BatchGenerator``'s segments end there).
        """
        cuts = [0, *(offset - len(held) for offset, _ in ends), len(rest)]
        (seq.uid,) = self._generator.insert_segments(
            [[rest[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]],
            max_tokens=[seq.max_new_tokens - seq.generated],
            caches=[cache],
            all_tokens=[held],
            samplers=[seq.sampler],
            logits_processors=[seq.processors],
            stop_sequences=[self._no_stop if seq.ignores_eos else self._eos_stop],
        )
        self.seqs[seq.uid] = seq
        self._prefilling.add(seq.uid)
        if ends:
            self._ends[seq.uid] = deque(ends)

    def remove(self, uids: list[int]) -> list[tuple[list[Any], list[int]]]:
        """Take sequences out; their KV caches with the tokens each holds."""
        if not uids:
            return []
        self._prefilling.difference_update(uids)
        return list(self._generator.remove(uids, return_prompt_caches=True).values())

    def step(self) -> tuple[int, list[tuple[Sequence, Any]]]:
        """Advance one step: (prompt chunks and tokens it made, each token's sequence and response).

        A response is ``BatchGenerator``'s: ``token``, ``logprobs``, ``finish_reason``
        ("stop": an EOS id, "length", None) and, when finished, ``prompt_cache`` and
        ``all_tokens``. Raises what the step raised; the batch's state is then suspect.
        """
        # BatchGenerator reads prefill_step_size at every step: each prompt fed this
        # step gets its share of the budget (those beyond prefill_batch_size wait).
        feeding = min(len(self._prefilling), self._generator.prefill_batch_size)
        share = self._budget // max(1, feeding)
        self._generator.prefill_step_size = max(min(MIN_CHUNK, self._budget), share)
        prompt_responses, responses = self._generator.next()
        self._prefilling.difference_update(r.uid for r in prompt_responses if r.end_of_prompt)
        ended = [r.uid for r in prompt_responses if r.end_of_segment and r.uid in self._ends]
        if ended:
            self._checkpoint(ended)
        mine = [(self.seqs[r.uid], r) for r in responses if r.uid in self.seqs]
        return len(prompt_responses) + len(responses), mine

    def ahead(self, seq: Sequence) -> list[int]:
        """Offsets of the checkpoints ``seq``'s prefill has still to store."""
        return [offset for offset, _ in self._ends.get(seq.uid, ())]

    def _checkpoint(self, uids: list[int]) -> None:
        """Copy the caches of sequences whose prefill just reached one of their ends."""
        for uid, (cache, tokens) in self._generator.extract_cache(uids).items():
            ends = self._ends[uid]
            while ends and ends[0][0] < len(tokens):
                ends.popleft()  # passed already (cannot happen with segments; be safe)
            if ends and ends[0][0] == len(tokens):
                self.stored.append((list(tokens), cache, ends.popleft()[1]))
            if not ends:
                del self._ends[uid]

    def forget(self, seq: Sequence) -> None:
        self.seqs.pop(seq.uid, None)
        self._ends.pop(seq.uid, None)
        self._prefilling.discard(seq.uid)

    def reset(self) -> None:
        """Start over empty, with a fresh ``BatchGenerator``."""
        self.close()
        self.seqs.clear()
        self._ends.clear()
        self._prefilling.clear()
        self.stored.clear()
        self.open()

    def close(self) -> None:
        if self._generator is not None:
            self._generator.close()
        self._generator = None
