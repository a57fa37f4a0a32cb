"""Split text into sentences for per-sentence generation and streaming.

fish-speech 0.1.0 does not split untagged text: a long message would be one long generation
(and one late chunk). Sentences end at . ! ? … and their CJK forms, or at line breaks; a sentence
longer than `max_chars` is cut at the last comma/semicolon or space before the limit.
"""

from __future__ import annotations

import re

# End punctuation plus any closing quotes/brackets; Latin needs whitespace after it ("3.5", "e.g.x").
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s)|[。！？]+[”’」』)]*|\n")
_SOFT_BREAK = re.compile(r"[,;:，；：]\s|\s")


def split_sentences(text: str, max_chars: int = 300) -> list[str]:
    sentences: list[str] = []
    for piece in _cut_at_sentence_ends(text):
        piece = " ".join(piece.split())
        while len(piece) > max_chars:
            cut = _last_break(piece, max_chars)
            sentences.append(piece[:cut].strip())
            piece = piece[cut:].strip()
        if piece:
            sentences.append(piece)
    return _merge_fragments(sentences, max_chars)


def _cut_at_sentence_ends(text: str) -> list[str]:
    pieces, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        pieces.append(text[start : match.end()])
        start = match.end()
    pieces.append(text[start:])
    return pieces


def _last_break(text: str, limit: int) -> int:
    breaks = [m.end() for m in _SOFT_BREAK.finditer(text, 0, limit)]
    return breaks[-1] if breaks and breaks[-1] > limit // 3 else limit


def _merge_fragments(sentences: list[str], max_chars: int, min_chars: int = 12) -> list[str]:
    """Glue fragments like "Hi." onto the next sentence: a too-short prompt sounds clipped."""
    merged: list[str] = []
    for sentence in sentences:
        if merged and len(merged[-1]) < min_chars and len(merged[-1]) + 1 + len(sentence) <= max_chars:
            joiner = "" if merged[-1][-1] in "。！？”’」』)" else " "  # CJK text has no spaces
            merged[-1] = f"{merged[-1]}{joiner}{sentence}"
        else:
            merged.append(sentence)
    return merged
