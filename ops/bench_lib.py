"""What ``ops/bench`` measures, and its in-process contenders (mlx_lm alone, our Engine alone).

Each contender answers the same two questions on the same prompts: one stream of
exactly ``tokens`` tokens, and ``concurrency`` such streams at once. Every one of
them bans the EOS ids with the same logit bias, so all decode the same number of
tokens through the same logits processor. The contenders over HTTP live in
``bench_servers.py``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

EOS_BIAS = -100.0  # OpenAI's floor; random-weight logits are a few units wide
REQUEST_TIMEOUT = 600.0


@dataclass(frozen=True)
class Stream:
    """One completed stream as the client saw it."""

    tokens: int  # counted by the contender (usage / yielded tokens), never chunks
    ttft: float  # seconds from sending to the first token's text
    decode_seconds: float  # first token to last token
    cached: int = 0  # usage.prompt_tokens_details.cached_tokens, where the server reports it
    prompt: int = 0  # usage.prompt_tokens

    @property
    def decode_tps(self) -> float:
        return (self.tokens - 1) / self.decode_seconds if self.decode_seconds > 0 else 0.0


@dataclass(frozen=True)
class Batch:
    """``concurrency`` streams started together."""

    streams: list[Stream]
    seconds: float  # first request sent to last stream ended

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.streams)

    @property
    def aggregate_tps(self) -> float:
        return self.tokens / self.seconds


def chat_messages(tag: str) -> list[dict[str, str]]:
    """The benchmark's prompt; ``tag`` keeps prompts apart so no cache serves a whole one."""
    return [{"role": "user", "content": f"Request {tag}: tell me about a cluster of Macs."}]


def blas_of(pid: int) -> str:
    """Which BLAS process ``pid`` has mapped: OpenBLAS if preloaded, else MLX's own."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return "unknown (no /proc)" if sys.platform != "linux" else "unknown"
    for line in maps.splitlines():
        if "libopenblas" in line or "openblas-pthread/libblas" in line:
            return "openblas " + line.split()[-1]
    return "builtin (mlx's vendored reference BLAS)"


def process_cpu(process: psutil.Process) -> float:
    """User + system seconds of one process; 0 once it is gone."""
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


# --------------------------------------------------------------------------- in-process


class InProcess:
    """mlx_lm in this very process: ``stream_generate`` and a bare ``BatchGenerator``."""

    name = "mlx_lm in-process"

    def __init__(self, model_path: Path):
        import mlx_lm
        from mlx_lm.sample_utils import make_logits_processors, make_sampler

        self.model, self.tokenizer = mlx_lm.load(str(model_path))
        self.eos_ids = sorted(self.tokenizer.eos_token_ids)
        self.eos_bias = {t: EOS_BIAS for t in self.eos_ids}
        self._processors = lambda: make_logits_processors(logit_bias=self.eos_bias)
        self._sampler = make_sampler(0.0)
        self.blas = blas_of(os.getpid())

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time this process has used (it is both client and server here)."""
        return {"process": process_cpu(psutil.Process())}

    def prompt(self, tag: str) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            chat_messages(tag), add_generation_prompt=True, tokenize=False
        )
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def single(self, tag: str, tokens: int) -> Stream:
        from mlx_lm import stream_generate

        start = time.perf_counter()  # servers render the template inside TTFT too
        prompt = self.prompt(tag)
        count, first, last = 0, 0.0, 0.0
        for _ in stream_generate(
            self.model,
            self.tokenizer,
            prompt,
            max_tokens=tokens,
            sampler=self._sampler,
            logits_processors=self._processors(),
        ):
            now = time.perf_counter()
            count += 1
            first = first or now
            last = now
        return Stream(count, first - start, last - first)

    def concurrent(self, tags: Sequence[str], tokens: int) -> Batch:
        from mlx_lm.generate import BatchGenerator

        # mlx_lm.server's defaults: decode 32 at once, prefill 8 at once.
        generator = BatchGenerator(
            self.model,
            stop_tokens=[[t] for t in self.eos_ids],
            completion_batch_size=32,
            prefill_batch_size=8,
        )
        try:
            start = time.perf_counter()
            prompts = [self.prompt(t) for t in tags]
            detokenizers = [self.tokenizer.detokenizer for _ in tags]
            uids = generator.insert(
                prompts,
                max_tokens=[tokens] * len(prompts),
                samplers=[self._sampler] * len(prompts),
                logits_processors=[self._processors() for _ in prompts],
            )
            index = {uid: i for i, uid in enumerate(uids)}
            counts, firsts, lasts = [0] * len(uids), [0.0] * len(uids), [0.0] * len(uids)
            running = len(uids)
            while running:
                _, responses = generator.next()
                now = time.perf_counter()
                for r in responses:
                    i = index[r.uid]
                    detokenizers[i].add_token(r.token)
                    _ = detokenizers[i].last_segment
                    counts[i] += 1
                    firsts[i] = firsts[i] or now
                    lasts[i] = now
                    running -= r.finish_reason is not None
            end = time.perf_counter()
        finally:
            generator.close()
        streams = [
            Stream(c, f - start, la - f) for c, f, la in zip(counts, firsts, lasts, strict=True)
        ]
        return Batch(streams, end - start)

    def close(self) -> None:
        import gc

        import mlx.core as mx

        self.model = self.tokenizer = None
        gc.collect()
        mx.clear_cache()


class EngineInProcess:
    """Our ``Engine`` in this process: no actor, supervisor or HTTP, so what it alone costs."""

    name = "ours: engine in-process"

    def __init__(self, local: InProcess, spec: str):
        from actors.generation.engine.engine import Engine

        self._local, self._spec = local, spec
        self.blas = local.blas
        self._ended: dict[str, object] = {}
        self._first: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._changed = threading.Condition()
        args = getattr(local.model, "args", None)
        context = int(getattr(args, "max_position_embeddings", 0) or 4096)
        self._engine = Engine(
            local.model, local.tokenizer, model_name=spec, emit=self._emit, context_length=context
        )
        self._engine.start()

    def _emit(self, event) -> None:
        from actors.protocol.messages import TokenDelta

        now = time.perf_counter()
        with self._changed:
            if isinstance(event, TokenDelta):
                self._first.setdefault(event.request_id, now)
                self._last[event.request_id] = now
            else:
                self._ended[event.request_id] = event
                self._changed.notify_all()

    def cpu_seconds(self) -> dict[str, float]:
        return self._local.cpu_seconds()  # the same process

    def single(self, tag: str, tokens: int) -> Stream:
        return self.concurrent([tag], tokens).streams[0]

    def concurrent(self, tags: Sequence[str], tokens: int) -> Batch:
        from actors.protocol.messages import (
            ChatMessage,
            Finished,
            GenerationRequest,
            SamplingParams,
        )

        sampling = SamplingParams(temperature=0.0, logit_bias=self._local.eos_bias)
        ids = [f"{tag}-{time.monotonic_ns()}" for tag in tags]
        start = time.perf_counter()
        for rid, tag in zip(ids, tags, strict=True):
            request = GenerationRequest(
                request_id=rid,
                model=self._spec,
                messages=[ChatMessage(**m) for m in chat_messages(tag)],
                max_tokens=tokens,
                sampling=sampling,
                ignore_eos=True,
            )
            self._engine.submit(request)
        with self._changed:
            self._changed.wait_for(lambda: all(r in self._ended for r in ids), REQUEST_TIMEOUT)
        end = time.perf_counter()
        streams = []
        for rid in ids:
            event = self._ended.pop(rid, None)
            if not isinstance(event, Finished):
                outcome = "no end within the timeout" if event is None else repr(event)
                raise RuntimeError(f"{self.name}: request {rid}: {outcome}")
            first, last = self._first.pop(rid), self._last.pop(rid)
            streams.append(Stream(event.usage.completion_tokens, first - start, last - first))
        return Batch(streams, end - start)

    def close(self) -> None:
        self._engine.stop()
