"""The demo model's training text: English-ish sentences and JSON, from a seeded generator.

The tokenizer is trained on it, so the same seed must give the same lines on every
build; change anything here and ``actors.models.demo.BUILD_VERSION`` must change too.
"""

from __future__ import annotations

import json
import random

_WORDS = {
    "noun": "cat dog model server cluster node request token answer question city river "
    "garden teacher student engine report memory weather number list table window "
    "machine network message file function value key record user assistant system "
    "house road bridge forest mountain ocean island village market school library "
    "kitchen doctor friend family child country language history music picture story "
    "problem reason result minute hour morning evening winter summer spring autumn "
    "computer program process thread socket packet screen keyboard battery camera "
    "paper letter book chapter page word sentence idea plan game team player".split(),
    "verb": "reads writes sends builds finds calls answers checks moves opens loads "
    "returns starts stops serves counts sorts joins learns keeps shows brings carries "
    "changes explains follows grows helps holds listens lives needs plays remembers "
    "runs says sees takes tells thinks tries turns uses waits walks wants watches".split(),
    "adj": "small large quick slow bright quiet warm cold green blue early late simple "
    "careful happy busy empty full new old strong weak heavy light short long clean "
    "dark fresh gentle hungry honest lucky modern narrow polite proud rapid rich safe "
    "sharp smooth strange sweet tired wide wild young".split(),
    "city": "Paris London Tokyo Berlin Madrid Rome Oslo Lima Cairo Sydney Toronto Seoul "
    "Vienna Prague Lisbon Dublin Nairobi Mumbai Chicago Denver Boston Quito".split(),
    "name": "Alice Bob Carol Dave Erin Frank Grace Heidi Ivan Judy Mallory Oscar "
    "Peggy Rupert Sybil Trent Victor Walter Yuki Zara".split(),
    "func": "get_weather search_web add_numbers send_email get_time lookup_user "
    "create_event read_file convert_units translate_text".split(),
    "field": "name arguments city unit date count query id email title text type "
    "value items enabled score location temperature".split(),
}
_SYLLABLES = "ka lo mi ra tu ve sen dor bal fin gro pel qua zim thor wen ix ul ast mer".split()


def _coined_word(rng: random.Random) -> str:
    """A made-up word, so BPE has rare words to split and merges to learn."""
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))


def _sentence(rng: random.Random) -> str:
    """One English-ish sentence."""
    w = {k: rng.choice(v) for k, v in _WORDS.items()}
    w["coined"] = _coined_word(rng)
    n = rng.randint(0, 9999)
    return rng.choice(
        [
            f"The {w['adj']} {w['noun']} {w['verb']} the {w['noun']} in {w['city']}.",
            f"{w['name']} {w['verb']} {n} {w['noun']}s before noon.",
            f"The {w['coined']} of {w['city']} {w['verb']} every {w['adj']} {w['noun']}.",
            f"What is the weather in {w['city']}? It is {n % 40} degrees and {w['adj']}.",
            f"Please call {w['func']} with the {w['field']} set to {n}.",
            f"I think {w['name']}'s {w['noun']} isn't {w['adj']}, but it's {w['adj']}!",
            f"On 2024-{n % 12 + 1:02d}-{n % 28 + 1:02d} at {n % 24}:{n % 60:02d}, "
            f"{n / 100:.2f} percent of users were {w['adj']}.",
        ]
    )


def _json_value(rng: random.Random, depth: int = 0) -> object:
    """A random JSON value, nested at most twice."""
    kind = rng.randrange(7 if depth < 2 else 5)
    if kind == 0:
        return rng.randint(-999, 99999)
    if kind == 1:
        return round(rng.uniform(-100, 100), rng.randint(1, 3))
    if kind == 2:
        return rng.choice([True, False, None])
    if kind in (3, 4):
        return _sentence(rng) if rng.random() < 0.3 else rng.choice(_WORDS["noun"])
    if kind == 5:
        return [_json_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = rng.sample(_WORDS["field"], rng.randint(1, 4))
    return {k: _json_value(rng, depth + 1) for k in keys}


def _json_line(rng: random.Random) -> str:
    """A JSON document: a tool call, a schema or a plain object, in varied spacing."""
    kind = rng.randrange(3)
    if kind == 0:
        doc: object = {"name": rng.choice(_WORDS["func"]), "arguments": _json_value(rng, 1)}
    elif kind == 1:
        props = {
            f: {"type": rng.choice(["string", "integer", "number", "boolean"])}
            for f in rng.sample(_WORDS["field"], 3)
        }
        doc = {"type": "object", "properties": props, "required": sorted(props)[:2]}
    else:
        doc = _json_value(rng, 1)
    spacing = rng.choice([None, (",", ":"), 2])
    if spacing == 2:
        return json.dumps(doc, indent=2)
    return json.dumps(doc, separators=spacing)


def demo_corpus(seed: int, lines: int = 6000) -> list[str]:
    """The fixed training corpus: sentences and JSON, from a generator seeded with ``seed``."""
    rng = random.Random(seed)
    return [_json_line(rng) if rng.random() < 0.4 else _sentence(rng) for _ in range(lines)]
