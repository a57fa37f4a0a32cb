"""Split a whole text into sentences for per-sentence generation.

fish-speech 0.1.0 does not split untagged text: a long message would be one long generation (and
one late chunk). The sentences are those SentenceStream hands out when fed the whole text at once
(text/sentence_stream.py says how they are cut: sentencex's sentence ends in the text's language,
line breaks, a length limit, short fragments glued on), so a text spoken as it is written and the
same text sent whole are cut alike.
"""

from __future__ import annotations

from fish_worker.text.sentence_stream import SentenceStream


def split_sentences(text: str, max_chars: int = 300, language: str | None = None) -> list[str]:
    """`text`'s sentences, each at most `max_chars` characters; `language` (e.g. "de", "ja"): whose
    abbreviations and rules to use, English when None."""
    stream = SentenceStream(max_chars, language)
    return stream.push(text) + stream.finish()
