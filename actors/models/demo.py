"""The built-in demo model: a random-weight qwen2 built offline, byte-identical on every build.

No model hub is reachable in CI and a first-time user should see the cluster serve
something before downloading gigabytes, so the project builds its own model: a
byte-level BPE tokenizer trained on a generated corpus, a Qwen2.5-style chat template
with tool calling, and random weights saved the way ``mlx_lm`` saves real checkpoints.
The text it writes is gibberish; the structure (tokens, templates, sharding) is real.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from actors.models.demo_corpus import demo_corpus
from actors.protocol.model_spec import DEMO_SIZES, default_cache_dir

# Bump whenever the corpus, tokenizer, template, sizes or init change: it names the cache dir.
BUILD_VERSION = 3  # v1 only ever existed as a development build; v3 closes JSON strings
SEED = 20240611
COMPLETE_MARKER = ".complete"
MAX_POSITION_EMBEDDINGS = 4096
TRAINED_VOCAB = 1993  # + 7 added tokens = 2000 tokenizer entries; config pads to 2048
STALE_BUILD_SECONDS = 3600
BIAS_CHANNEL_VALUE = 1.0
SUPPRESSED_LOGIT = -40.0  # per unit of the normed bias channel
# A trained model closes the strings it opens; random weights almost never pick one of the
# few closing tokens among ~2000, so JSON mode (any object, no schema to bound it) would
# run to max_tokens. This mild taste for closing quotes makes the demo finish its JSON:
# measured over 200 seeds at temperature 1, every json_object reply ended within 111 tokens.
PREFERRED_LOGIT = 6.0  # per unit of the normed bias channel

Progress = Callable[[str, float], None]

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Not "special", as in Qwen2.5: decoding with skip_special_tokens must keep them visible.
TOOL_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
# Random weights would emit these now and then, and a stray <tool_call> makes servers parse
# gibberish as a tool call; constrained decoding can still force them.
SUPPRESSED_TOKENS = ["<|endoftext|>", "<|im_start|>", *TOOL_TOKENS]

# Qwen2's pre-tokenizer: single digits, words with their leading space, punctuation runs.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


CHAT_TEMPLATE = """\
{%- set default_system = 'You are a helpful assistant.' -%}
{%- if tools -%}
{{- '<|im_start|>system\\n' -}}
{{- messages[0].content if messages and messages[0].role == 'system' else default_system -}}
{{- '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n'
    'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' -}}
{%- for tool in tools -%}{{- '\\n' -}}{{- tool | tojson -}}{%- endfor -%}
{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and '
    'arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n'
    '{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n' -}}
{%- else -%}
{{- '<|im_start|>system\\n' -}}
{{- messages[0].content if messages and messages[0].role == 'system' else default_system -}}
{{- '<|im_end|>\\n' -}}
{%- endif -%}
{%- for message in messages -%}
{%- if message.role == 'system' and loop.first -%}
{%- elif message.role == 'assistant' and message.tool_calls -%}
{{- '<|im_start|>assistant' -}}
{%- if message.content -%}{{- '\\n' + message.content -}}{%- endif -%}
{%- for tool_call in message.tool_calls -%}
{%- if tool_call.function is defined -%}{%- set tool_call = tool_call.function -%}{%- endif -%}
{{- '\\n<tool_call>\\n{"name": "' + tool_call.name + '", "arguments": ' -}}
{%- if tool_call.arguments is string -%}{{- tool_call.arguments -}}
{%- else -%}{{- tool_call.arguments | tojson -}}{%- endif -%}
{{- '}\\n</tool_call>' -}}
{%- endfor -%}
{{- '<|im_end|>\\n' -}}
{%- elif message.role == 'tool' -%}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}
{{- '<|im_start|>user' -}}
{%- endif -%}
{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' -}}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}
{%- else -%}
{{- '<|im_start|>' + message.role + '\\n' + (message.content or '') + '<|im_end|>\\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}
"""


def build_tokenizer(corpus: list[str]):
    """Train the byte-level BPE and wrap it as a ``PreTrainedTokenizerFast``."""
    import tokenizers as tk
    from tokenizers import pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(tk.Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = tk.decoders.ByteLevel()
    tok.post_processor = tk.processors.ByteLevel(trim_offsets=False)
    trainer = tk.trainers.BpeTrainer(
        vocab_size=TRAINED_VOCAB,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.add_special_tokens(
        [tk.AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    )
    tok.add_tokens([tk.AddedToken(t, special=False, normalized=False) for t in TOOL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=SPECIAL_TOKENS[1:],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=MAX_POSITION_EMBEDDINGS,
    )


def model_config(size: str, tokenizer) -> dict:
    """The HF-style qwen2 config.json for a demo size."""
    ids = tokenizer.convert_tokens_to_ids
    return {
        "architectures": ["Qwen2ForCausalLM"],
        **DEMO_SIZES[size].config(),
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        # Real checkpoints pad the embedding past the tokenizer; code must cope with both sizes.
        "vocab_size": -(-len(tokenizer) // 128) * 128,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "bos_token_id": ids(PAD_TOKEN),
        "eos_token_id": [ids(EOS_TOKEN), ids(PAD_TOKEN)],
        "pad_token_id": ids(PAD_TOKEN),
    }


def count_parameters(config: dict) -> int:
    """Parameters of a qwen2 config, computed from its shape alone."""
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = h // config["num_attention_heads"] * config["num_key_value_heads"]
    attention = (h * h + h) + 2 * (h * kv + kv) + h * h
    layer = attention + 3 * h * i + 2 * h
    head = 0 if config["tie_word_embeddings"] else v * h
    return config["num_hidden_layers"] * layer + v * h + h + head


def _random_parameter(name: str, shape: tuple[int, ...]):
    """A seeded parameter: ones for norms, zero biases, fan-in scaled normals for matrices."""
    import mlx.core as mx
    import numpy as np

    if name.endswith("norm.weight"):
        return mx.ones(shape)
    if name.endswith(".bias"):
        return mx.zeros(shape)
    std = 1.0 if "embed_tokens" in name else 1.0 / shape[-1] ** 0.5
    if name.endswith(("o_proj.weight", "down_proj.weight")):
        std /= 2.0  # keep the residual stream led by the embedding, as in a trained model
    if name == "lm_head.weight":
        std = 2.5 / shape[-1] ** 0.5  # logits of std ~2.5: peaked enough to differ, not one-hot
    # numpy, not mx.random: the same bytes on Metal and CPU hosts of one tensor-parallel group.
    # Seeded by name, not by order, so mlx-lm reordering its modules changes nothing.
    rng = np.random.default_rng([SEED, zlib.crc32(name.encode())])
    return mx.array(rng.standard_normal(shape, dtype=np.float32) * np.float32(std))


def _reserve_bias_channel(params: dict, suppressed: list[int], preferred: list[int]) -> None:
    """Bias suppressed ids down and preferred ids up through a constant hidden channel.

    Channel 0 of every embedding is a constant that no layer writes to, so after the final
    norm it stays positive; the rows of suppressed ids read only that channel, negatively;
    preferred rows keep their random weights and read it positively.
    """
    import mlx.core as mx

    params["model.embed_tokens.weight"][:, 0] = BIAS_CHANNEL_VALUE
    for name, value in params.items():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            value[0, :] = 0.0
    head = params["lm_head.weight"]
    rows = mx.array(suppressed)
    head[:, 0] = 0.0
    head[rows] = 0.0
    head[rows, 0] = SUPPRESSED_LOGIT
    if preferred:
        head[mx.array(preferred), 0] = PREFERRED_LOGIT


def build_weights(config: dict, suppressed: list[int], preferred: list[int] = ()):
    """Instantiate mlx-lm's qwen2 with seeded random weights."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm.models import qwen2

    model = qwen2.Model(qwen2.ModelArgs.from_dict(config))
    params = {k: _random_parameter(k, v.shape) for k, v in tree_flatten(model.parameters())}
    _reserve_bias_channel(params, suppressed, list(preferred))
    model.update(tree_unflatten(list(params.items())))
    mx.eval(model.parameters())
    return model


def _suppressed_ids(tokenizer, vocab_size: int) -> list[int]:
    """Ids the untrained model must not emit: padding rows and structural tokens."""
    return [*tokenizer.convert_tokens_to_ids(SUPPRESSED_TOKENS), *range(len(tokenizer), vocab_size)]


def _string_closing_ids(tokenizer) -> list[int]:
    """Trained tokens that close a JSON string, and maybe its containers: '"', '"}', '"]}'."""
    vocab = tokenizer.get_vocab()
    return sorted(i for s, i in vocab.items() if s.startswith('"') and set(s) <= set('"}]'))


def _make_tokenizer_config_portable(path: Path) -> None:
    """Name a tokenizer class and special-token key that transformers 4.x also knows."""
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # v5 writes "TokenizersBackend"
    config["additional_special_tokens"] = config["extra_special_tokens"]
    _write_json(path, config)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_demo_model(size: str, dest: Path, progress: Progress | None = None) -> Path:
    """Build the demo model of ``size`` into ``dest`` and mark it complete."""
    from mlx_lm.utils import save_config, save_model

    if size not in DEMO_SIZES:
        raise ValueError(f"unknown demo size {size!r}; known sizes: {', '.join(DEMO_SIZES)}")
    report = progress or (lambda stage, fraction: None)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    report("tokenizer", 0.0)
    tokenizer = build_tokenizer(demo_corpus(SEED))
    # Jinja inside tokenizer_config.json, not chat_template.jinja, so transformers 4.x reads it.
    tokenizer.save_pretrained(dest, save_jinja_files=False)
    _make_tokenizer_config_portable(dest / "tokenizer_config.json")
    config = model_config(size, tokenizer)
    report("weights", 0.3)
    suppressed = _suppressed_ids(tokenizer, config["vocab_size"])
    model = build_weights(config, suppressed, _string_closing_ids(tokenizer))
    report("saving", 0.7)
    save_model(dest, model, donate_model=True)
    save_config(dict(config), dest / "config.json")
    generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    _write_json(dest / "generation_config.json", generation)
    _write_json(dest / COMPLETE_MARKER, {"size": size, "build_version": BUILD_VERSION})
    report("done", 1.0)
    return dest


def demo_model_dir(size: str, cache_dir: Path | None = None) -> Path:
    """Where the demo model of ``size`` lives in the cache."""
    return (cache_dir or default_cache_dir()) / "models" / f"demo-{size}-v{BUILD_VERSION}"


def is_complete(path: Path) -> bool:
    """True if ``path`` is a demo model whose build finished."""
    return (path / COMPLETE_MARKER).is_file()


def ensure_demo_model(
    size: str, cache_dir: Path | None = None, progress: Progress | None = None
) -> Path:
    """Return the cached demo model of ``size``, building it if needed; safe across processes."""
    target = demo_model_dir(size, cache_dir)
    if is_complete(target):
        if progress:
            progress("cached", 1.0)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(target.parent)
    # Build beside the target so the final rename is atomic; a half-built dir is never visible.
    scratch = Path(tempfile.mkdtemp(prefix=f".building-{target.name}-", dir=target.parent))
    try:
        build_demo_model(size, scratch, progress)
        scratch.chmod(0o755)  # mkdtemp made it private; the cache is read like any model dir
        _publish(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _publish(scratch: Path, target: Path) -> None:
    """Rename ``scratch`` to ``target`` unless another process already published one."""
    for _ in range(3):
        try:
            os.rename(scratch, target)
            return
        except OSError:
            if is_complete(target):
                return  # another builder won; ours is identical, the caller discards it
            _discard_incomplete(target)
    raise OSError(f"{target}: could not replace an incomplete demo model; delete it and retry")


def _discard_incomplete(target: Path) -> None:
    """Move an unmarked leftover out of the way, tolerating a racing process doing the same."""
    trash = target.with_name(f".discard-{target.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(target, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _remove_stale_builds(parent: Path) -> None:
    """Delete scratch dirs that crashed builders left behind over an hour ago."""
    cutoff = time.time() - STALE_BUILD_SECONDS
    for path in parent.glob(".building-*"):
        try:
            if path.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)
        except FileNotFoundError:
            pass
