"""Sentences cut from text that arrives in pieces: each handed out once the next one starts, the whole
matching split_sentences of the full text, however the text was cut into pieces."""

from __future__ import annotations

import random

import pytest

from fish_worker.text.sentence_stream import SentenceStream
from fish_worker.text.sentences import split_sentences

TEXTS = [
    "Sure. The weather today is sunny and warm! Tomorrow it will rain, I am afraid. Anything else?",
    "One line only without an end",
    "A list:\nfirst item here\nsecond item here\n",
    "It costs 3.5 euros, e.g. at the market. Fine.",
    "これは日本語です。とても良い天気ですね！明日は雨です。",
    "word " * 120,  # longer than max_chars: cut at spaces
    "",
]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pieces_give_the_sentences_of_the_whole_text(text, seed):
    rng = random.Random(seed)
    stream, out, start = SentenceStream(max_chars=80), [], 0
    while start < len(text):
        end = start + rng.randint(1, 6)
        out += stream.push(text[start:end])
        start = end
    out += stream.finish()
    assert out == split_sentences(text, 80)


def test_a_sentence_is_handed_out_as_soon_as_the_next_one_starts():
    stream = SentenceStream()
    assert stream.push("The weather is fine.") == []  # may still grow ("fine.5"), so not yet
    assert stream.push(" T") == ["The weather is fine."]
    assert stream.push("omorrow it rains.") == []
    assert stream.finish() == ["Tomorrow it rains."]
    assert stream.finish() == []


def test_short_fragments_wait_to_be_glued_onto_the_next_sentence():
    stream = SentenceStream()
    assert stream.push("Sure. ") == []
    assert stream.push("Here it is. Next") == ["Sure. Here it is."]
