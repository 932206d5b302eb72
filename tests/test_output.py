"""Stop strings in Output: text held while a stop could still match, released when it cannot.

A stand-in detokenizer maps each token id to a fixed piece of text, so every test names
exactly where the token boundaries fall (the engine tests run the real tokenizer).
"""

from __future__ import annotations

from actors.generation.requests.output import Output
from actors.protocol.messages import TokenLogprob


class Pieces:
    """The surface of mlx_lm's StreamingDetokenizer Output uses: token ``i`` is ``pieces[i]``."""

    def __init__(self, pieces: list[str]):
        self.pieces = pieces
        self._segment = ""

    def add_token(self, token: int) -> None:
        self._segment += self.pieces[token]

    def finalize(self) -> None:
        pass

    @property
    def last_segment(self) -> str:
        segment, self._segment = self._segment, ""
        return segment


def output(stop: list[str], pieces: list[str], primer: list[int] = ()) -> Output:
    return Output(Pieces(pieces), stop, list(primer))


def feed(out: Output, tokens: list[int]) -> list[bool]:
    return [out.add(t, None) for t in tokens]


def released(out: Output) -> tuple[str, list[int]]:
    text, token_ids, _, _ = out.take()
    return text, token_ids


PIECES = ["Hello ", "ST", "ART", "O", "P", " after", "lo STOP now", "x"]
HELLO, ST, ART, OH, P, AFTER, SPLIT, X = range(len(PIECES))


def test_without_stop_strings_every_token_is_released_at_once():
    out = output([], PIECES)
    assert feed(out, [HELLO, ST]) == [False, False]
    assert released(out) == ("Hello ST", [HELLO, ST])


def test_text_that_could_begin_a_stop_string_is_held_with_its_token():
    out = output(["STOP"], PIECES)
    feed(out, [HELLO, ST])
    assert released(out) == ("Hello ", [HELLO])
    assert out.pending is False


def test_held_text_is_released_once_it_can_no_longer_become_the_stop():
    out = output(["STOP"], PIECES)
    assert feed(out, [HELLO, ST, ART]) == [False, False, False]
    assert released(out) == ("Hello START", [HELLO, ST, ART])


def test_a_stop_string_across_three_tokens_ends_the_output_and_none_of_it_is_sent():
    out = output(["STOP"], PIECES)
    assert feed(out, [HELLO, ST, OH]) == [False, False, False]
    assert released(out) == ("Hello ", [HELLO])
    assert out.add(P, None) is True
    assert released(out) == ("", [])
    assert out.stopped


def test_text_before_the_stop_in_the_same_token_is_sent_with_that_token():
    out = output(["STOP"], PIECES)
    assert out.add(SPLIT, None) is True
    assert released(out) == ("lo ", [SPLIT])


def test_nothing_after_a_stop_is_released_even_by_finish():
    out = output(["STOP"], PIECES)
    feed(out, [ST, OH, P])
    assert out.add(AFTER, None) is True
    assert out.finish() is True
    assert released(out) == ("", [])


def test_finish_releases_a_held_prefix_that_never_became_a_stop():
    out = output(["STOP"], PIECES)
    feed(out, [HELLO, ST, OH])
    released(out)
    assert out.finish() is False
    assert released(out) == ("STO", [ST, OH])


def test_the_earliest_of_several_stop_strings_wins():
    out = output(["now", "STOP"], PIECES)
    assert out.add(SPLIT, None) is True  # "lo STOP now": STOP begins before now
    assert released(out) == ("lo ", [SPLIT])


def test_the_longest_partial_match_of_any_stop_string_is_held():
    out = output(["abz", "bcd"], ["x", "a", "b", "c", "d"])
    feed(out, [0, 1, 2])  # "ab" may begin abz, "b" may begin bcd: the longer is held
    assert released(out) == ("x", [0])
    out.add(3, None)  # "abc": abz is out, "bc" may still begin bcd
    assert released(out) == ("a", [1])
    assert out.add(4, None) is True
    assert released(out) == ("", [])


def test_a_partial_match_that_breaks_releases_everything_held():
    out = output(["STOP"], PIECES)
    feed(out, [ST, OH])
    assert released(out) == ("", [])
    out.add(X, None)
    assert released(out) == ("STOx", [ST, OH, X])


def test_an_empty_stop_string_is_ignored():
    out = output([""], PIECES)
    assert out.add(HELLO, None) is False
    assert released(out) == ("Hello ", [HELLO])


def test_unicode_stop_strings_are_matched_by_character_across_tokens():
    pieces = ["Grüße ", "🙂", "👋 bye", "🙂x"]
    out = output(["🙂👋"], pieces)
    feed(out, [0, 1])
    assert released(out) == ("Grüße ", [0])  # the smile may begin the stop: held
    assert out.add(2, None) is True
    assert released(out) == ("", [])

    out = output(["🙂👋"], pieces)
    feed(out, [0, 3])  # the smile then "x": no stop can follow
    assert released(out) == ("Grüße 🙂x", [0, 3])


def test_logprobs_are_held_and_released_with_their_tokens():
    out = output(["STOP"], PIECES)
    first, second = (TokenLogprob(token_id=t, token=PIECES[t], logprob=-0.5) for t in (HELLO, ST))
    out.add(HELLO, first)
    out.add(ST, second)
    assert out.take()[2] == [first]
    out.add(ART, None)
    assert out.take()[2] == [second]


def test_a_primer_is_not_sent_again_but_can_complete_a_stop():
    out = output(["STOP"], PIECES, primer=[HELLO, ST])
    assert released(out) == ("", [])
    out.add(ART, None)
    assert released(out) == ("ART", [ART])
