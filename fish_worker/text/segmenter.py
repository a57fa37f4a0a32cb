"""Where sentences end in one line of text, by sentencex (Wikimedia's rule-based segmenter, ~300 languages).

sentencex knows each language's abbreviations ("Mr.", "z.B.", "т.е."), decimals, versions, URLs,
e-mail addresses, ellipses, quotes and every script's end marks (。！？ । ؟ ...). It never raises on
text, only on a lone surrogate (it takes UTF-8), which is swapped for U+FFFD before it looks.
"""

from __future__ import annotations

import re

import sentencex

# Without a language: English rules. They still end sentences at every script's end marks (CJK,
# Devanagari, Arabic ...) but know only English abbreviations. sentencex falls back to English for a
# code it does not know, too.
DEFAULT_LANGUAGE = "en"
_SURROGATE = re.compile("[\ud800-\udfff]")


def segmenter_language(language: str | None) -> str:
    """sentencex's code for a language tag: "de-DE", "de_DE" and "DE" all mean "de"; None means English."""
    primary = (language or "").strip().replace("_", "-").split("-")[0].lower()
    return primary or DEFAULT_LANGUAGE


def sentence_ends(line: str, language: str) -> list[int]:
    """Offsets in `line` where sentencex ends each sentence (the last is len(line)); [] for ""."""
    ends, end = [], 0
    for segment in sentencex.segment(language, _SURROGATE.sub("\ufffd", line)):  # same length, same offsets
        end += len(segment)
        ends.append(end)
    # The segments tile the line; should a release ever drop a character, read it as one sentence.
    return ends if end == len(line) else [len(line)] if line else []
