"""Sentences cut from text that arrives in pieces: each handed out once the next one starts, the whole
matching split_sentences of the full text, however the text was cut into pieces."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fish_worker.text.sentence_stream import SentenceStream
from fish_worker.text.sentences import split_sentences

TEXTS = [
    "Sure. The weather today is sunny and warm! Tomorrow it will rain, I am afraid. Anything else?",
    "One line only without an end",
    "A list:\nfirst item here\nsecond item here\n",
    "It costs 3.5 euros, e.g. at the market. Fine.",
    "Mr. and Mrs. Jones live at No. 5 St. James St. in the U.S.A. They like it. Install v1.2.3 first.",
    "“Are you coming?” she asked. “Yes!” he said. See https://example.com/a.b?c=d.e for more...",
    "これは日本語です。とても良い天気ですね！明日は雨です。",
    "word " * 120,  # longer than max_chars: cut at spaces
    "",
]

# Words that exercise sentencex's rules, and the gaps between them.
WORDS = [
    "Mr.",
    "Jones",
    "e.g.",
    "U.S.A.",
    "v1.2.3",
    "3.14",
    "https://a.example/x.y?z=1.",
    "Hi.",
    "Ok!",
    "what?",
    "so...",
    "wait…",
    '"Stop."',
    "“Yes!”",
    "«Non»",
    "(see",
    "above.)",
    "the",
    "cat",
    "sat",
    "mat.",
    "今天很好。",
    "明天下雨！",
    "です。",
    "Привет.",
    "т.е.",
    "z.B.",
    "¿Qué?",
    "है।",
    "؟",
    "word,",
    "x" * 40,
    "’",
    "'",
    "A.",
    "5",
]
GAPS = [" ", " ", "", "\n", "  \n ", "\t"]


def pieces_of(text: str, cuts: list[int]) -> list[str]:
    bounds = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


def streamed(pieces: list[str], max_chars: int, language: str | None = None) -> list[str]:
    stream, out = SentenceStream(max_chars, language), []
    for piece in pieces:
        out += stream.push(piece)
    return out + stream.finish()


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pieces_give_the_sentences_of_the_whole_text(text, seed):
    rng = random.Random(seed)
    assert streamed(pieces_of(text, [rng.randint(0, len(text)) for _ in range(len(text) // 3)]), 80) == split_sentences(
        text, 80
    )


@settings(max_examples=300, deadline=None)
@given(
    words=st.lists(st.tuples(st.sampled_from(WORDS), st.sampled_from(GAPS)), max_size=50),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=60),
    max_chars=st.sampled_from([20, 40, 80, 300]),
    language=st.sampled_from([None, "en", "de", "ja", "ru"]),
)
@pytest.mark.timeout(120)
def test_random_texts_cut_anywhere_give_the_sentences_of_the_whole_text(words, cuts, max_chars, language):
    text = "".join(word + gap for word, gap in words)
    whole = split_sentences(text, max_chars, language)
    assert streamed(pieces_of(text, cuts), max_chars, language) == whole
    assert all(0 < len(sentence) <= max_chars for sentence in whole)
    assert "".join("".join(whole).split()) == "".join(text.split())  # nothing lost, nothing added but spaces


def test_a_sentence_is_handed_out_as_soon_as_the_next_one_starts():
    stream = SentenceStream()
    assert stream.push("The weather is fine.") == []  # may still grow ("fine.5"), so not yet
    assert stream.push(" T") == ["The weather is fine."]
    assert stream.push("omorrow it rains.") == []
    assert stream.finish() == ["Tomorrow it rains."]
    assert stream.finish() == []


def test_an_abbreviation_does_not_end_a_sentence_while_it_is_written():
    stream = SentenceStream()
    out = [stream.push(piece) for piece in ["Mr. and Mrs. ", "Jones live in the U.S.A. ", "T", "hey like it. ", "Y"]]
    assert out == [[], [], [], ["Mr. and Mrs. Jones live in the U.S.A."], ["They like it."]]


def test_short_fragments_wait_to_be_glued_onto_the_next_sentence():
    stream = SentenceStream()
    assert stream.push("Sure. ") == []
    assert stream.push("Here it is. Next") == ["Sure. Here it is."]


def test_the_stream_keeps_only_the_text_not_yet_cut():
    stream, out = SentenceStream(), []
    for _ in range(2000):
        out += stream.push("This sentence is complete. ")
        assert len(stream.text) < 100
    assert len(out + stream.finish()) == 2000
