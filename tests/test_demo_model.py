"""The built-in demo model: deterministic, loadable by mlx-lm, tool-calling ready, cached safely."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm import load, stream_generate
from mlx_lm.sample_utils import make_sampler
from mlx_lm.tool_parsers import json_tools
from mlx_lm.utils import get_total_parameters, sharded_load

from actors.models.demo import (
    COMPLETE_MARKER,
    SUPPRESSED_TOKENS,
    build_demo_model,
    count_parameters,
    demo_model_dir,
    ensure_demo_model,
    model_config,
)
from actors.models.resolve import resolve_model
from actors.protocol.model_spec import (
    DEMO_SIZES,
    ModelUnavailable,
    is_demo_spec,
    model_display_name,
)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_demo_model("tiny", tmp_path_factory.mktemp("demo") / "tiny")


@pytest.fixture(scope="module")
def loaded(tiny):
    return load(str(tiny))


def test_build_writes_an_mlx_checkpoint(tiny):
    names = set(_files(tiny))
    assert {"config.json", "model.safetensors", "model.safetensors.index.json"} <= names
    assert {"tokenizer.json", "tokenizer_config.json", COMPLETE_MARKER} <= names


def test_build_is_byte_identical(tiny, tmp_path):
    again = build_demo_model("tiny", tmp_path / "again")
    assert _files(again) == _files(tiny)


def test_config_pads_vocab_and_allows_two_rank_tensor_parallel(tiny, loaded):
    model, tokenizer = loaded
    config = json.loads((tiny / "config.json").read_text())
    assert config["vocab_size"] % 128 == 0
    assert len(tokenizer) < config["vocab_size"] < len(tokenizer) + 128
    assert config["num_key_value_heads"] % 2 == 0
    assert config["hidden_size"] == 64 and config["num_hidden_layers"] == 2
    assert count_parameters(config) == get_total_parameters(model)


def test_small_size_is_a_benchmark_model(loaded):
    _, tokenizer = loaded
    config = model_config("small", tokenizer)
    assert 20e6 < count_parameters(config) < 40e6
    assert config["num_key_value_heads"] % 2 == 0
    assert set(DEMO_SIZES) == {"tiny", "small"}


def test_loads_and_generates_greedily(loaded):
    model, tokenizer = loaded
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello"}], add_generation_prompt=True
    )

    def greedy() -> list[int]:
        sampler = make_sampler(temp=0.0)
        steps = stream_generate(model, tokenizer, prompt, max_tokens=8, sampler=sampler)
        return [step.token for step in steps]

    tokens = greedy()
    assert len(tokens) == 8 and all(0 <= t < len(tokenizer) for t in tokens)
    assert greedy() == tokens


def test_sharded_load_finds_its_prerequisites(tiny, loaded):
    model, tokenizer = loaded
    sharded, _ = sharded_load(str(tiny), tensor_group=mx.distributed.init())
    ids = mx.array([tokenizer.encode("The quick cat reads.")])
    assert mx.allclose(sharded(ids), model(ids)).item()


def test_untrained_model_never_prefers_suppressed_tokens(loaded):
    model, tokenizer = loaded
    suppressed = tokenizer.convert_tokens_to_ids(SUPPRESSED_TOKENS)
    suppressed += list(range(len(tokenizer), model.args.vocab_size))
    ids = mx.array([list(range(0, len(tokenizer), 3))])
    logits = model(ids)[0]
    gap = logits[:, mx.array(suppressed)].max(axis=1) - logits.max(axis=1)
    assert gap.max().item() < -20


def test_chat_template_renders_tools_calls_and_responses(loaded):
    _, tokenizer = loaded
    messages = [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Oslo"}},
                },
            ],
        },
        {"role": "tool", "content": '{"temp": 21}'},
        {"role": "tool", "content": '{"temp": 3}'},
    ]
    text = tokenizer.apply_chat_template(
        messages, tools=TOOLS, add_generation_prompt=True, tokenize=False
    )
    assert "<tools>\n" + json.dumps(TOOLS[0]) + "\n</tools>" in text
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    )
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>' in text
    )
    # Consecutive tool results share one user turn, as in Qwen2.5.
    assert text.count("<|im_start|>user") == 2
    assert '<tool_response>\n{"temp": 21}\n</tool_response>\n<tool_response>' in text
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_chat_template_without_tools_or_generation_prompt(loaded):
    _, tokenizer = loaded
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"


def test_mlx_lm_picks_the_json_tools_parser(loaded):
    _, tokenizer = loaded
    assert tokenizer.has_tool_calling
    assert (tokenizer.tool_call_start, tokenizer.tool_call_end) == ("<tool_call>", "</tool_call>")
    assert tokenizer.tool_parser is json_tools.parse_tool_call
    assert len(tokenizer.tool_call_start_tokens) == len(tokenizer.tool_call_end_tokens) == 1


def test_special_tokens_stop_and_tool_markers_survive_decoding(loaded):
    _, tokenizer = loaded
    im_end, endoftext = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert tokenizer.eos_token_ids == {im_end, endoftext}
    ids = tokenizer.encode('<tool_call>\n{"a": [1, 2]}\n</tool_call><|im_end|>')
    assert (
        tokenizer.decode(ids, skip_special_tokens=True)
        == '<tool_call>\n{"a": [1, 2]}\n</tool_call>'
    )


def _ensure_in_child(cache: str, barrier, results) -> None:
    """Build tiny into ``cache``, meeting the other child before starting and before publishing."""
    import mlx_lm.utils  # noqa: F401 - import before the race so both builds overlap

    def meet_before_saving(stage: str, fraction: float) -> None:
        if stage == "saving":
            barrier.wait(timeout=60)

    barrier.wait(timeout=60)
    path = ensure_demo_model("tiny", Path(cache), progress=meet_before_saving)
    results.put((str(path), path.stat().st_ino))


@pytest.mark.e2e  # starts real processes without a fixture
def test_concurrent_ensure_yields_one_complete_model(tiny, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    children = [
        ctx.Process(target=_ensure_in_child, args=(str(tmp_path), barrier, results))
        for _ in range(2)
    ]
    for child in children:
        child.start()
    published = {results.get(timeout=120) for _ in children}
    for child in children:
        child.join(timeout=30)
    assert [child.exitcode for child in children] == [0, 0]
    target = demo_model_dir("tiny", tmp_path)
    # Both saw the same directory: the loser discarded its build rather than replacing the winner's.
    assert published == {(str(target), target.stat().st_ino)}
    assert [p.name for p in (tmp_path / "models").iterdir()] == [target.name]
    # Built in other processes with other hash seeds, still the same bytes.
    assert _files(target) == _files(tiny)


def test_ensure_replaces_a_half_built_dir_and_reports_progress(tmp_path):
    target = demo_model_dir("tiny", tmp_path)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    stages: list[tuple[str, float]] = []
    assert ensure_demo_model("tiny", tmp_path, progress=lambda *p: stages.append(p)) == target
    assert (target / COMPLETE_MARKER).is_file() and (target / "model.safetensors").is_file()
    assert stages[0] == ("tokenizer", 0.0) and stages[-1] == ("done", 1.0)
    stages.clear()
    ensure_demo_model("tiny", tmp_path, progress=lambda *p: stages.append(p))
    assert stages == [("cached", 1.0)]


def test_resolve_model_demo_and_local_dir(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_SUPERVISOR_CACHE", str(tmp_path))
    assert resolve_model("demo:tiny") == demo_model_dir("tiny", tmp_path)
    assert resolve_model(str(tiny)) == tiny
    assert is_demo_spec("demo:small") and not is_demo_spec("Qwen/Qwen2.5-0.5B")


def test_resolve_model_bad_demo_size_names_known_sizes():
    with pytest.raises(ModelUnavailable, match="known: demo:tiny, demo:small"):
        resolve_model("demo:huge")


def test_resolve_model_unknown_repo_fails_fast_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as caught:
        resolve_model("no-such-org/no-such-model")
    message = str(caught.value)
    assert time.monotonic() - started < 5
    assert "\n" not in message
    assert message.startswith('model "no-such-org/no-such-model" is not a local MLX model')
    assert message.endswith("; use a local path or demo:tiny")


def test_resolve_model_rejects_missing_paths_and_dirs_without_config(tmp_path):
    with pytest.raises(ModelUnavailable, match="no such directory"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(ModelUnavailable, match="without config.json"):
        resolve_model(str(tmp_path))


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("demo:tiny", "demo:tiny"),
        ("mlx-community/Qwen2.5-0.5B-4bit", "mlx-community/Qwen2.5-0.5B-4bit"),
    ],
)
def test_model_display_name(spec, name):
    assert model_display_name(spec) == name


def test_model_display_name_of_local_dir(tiny):
    assert model_display_name(str(tiny)) == "tiny"
