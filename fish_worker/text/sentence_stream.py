"""Cut text into sentences, also while it arrives in pieces (a chat reply being written).

Where a sentence ends is sentencex's call (text/segmenter.py), asked about one line at a time. While
text arrives, an end can only be told once some of what follows it is there ("It costs 5." may go on
as "5.50"; after "U.S.A." a name or a new sentence may come). So the first sentence of the text not
cut yet is decided on windows of that text, each ending at the first letter or digit of a word (or
right after a mark, for scripts written without spaces), shortest first: the first window in which
sentencex ends a sentence decides where it ends. A window is a fixed piece of the text, so the
sentences do not depend on how the text was cut into pieces: split_sentences (all the text at once)
is this stream fed one piece. A sentence is handed out once the first letter of the next has come,
or later where sentencex needs more of it ("U.S.A. They"). A quote still open when a window decides
does not hold its sentences together, and an opening quote belongs to the sentence after it.

Besides sentencex's ends:
- a line break ends a sentence;
- a sentence longer than `max_chars` is cut at the last comma/semicolon/colon or space before the
  limit (in its last two thirds), else at the limit;
- a sentence shorter than 12 characters ("Hi.") is glued onto the next when the two fit in
  `max_chars`: a too-short prompt sounds clipped.

Cost: a window is segmented once; a sentence takes at most one window per word, each at most
`max_chars` + 1 characters, and the stream keeps only the text not yet cut.
"""

from __future__ import annotations

import re
import unicodedata

from fish_worker.text.segmenter import segmenter_language, sentence_ends

MIN_SENTENCE_CHARS = 12
_LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")  # what str.splitlines breaks at
_RUNS = re.compile(r"(\s+)|(\S+)")
_SOFT_BREAK = re.compile(r"[,;:，；：]\s|\s")
_QUOTES = "\"'`«»‹›‘’‚‛“”„‟「」『』《》"


class SentenceStream:
    def __init__(self, max_chars: int = 300, language: str | None = None):
        self.max_chars = max_chars
        self.language = segmenter_language(language)
        self.text = ""  # not cut yet: its words joined by one space, its lines by one "\n"
        self._gap = ""  # whitespace after the last word ("", " " or "\n"), joined in when the next word comes
        self._checked = 0  # windows of the first line ending up to here showed no sentence end
        self._fragment = ""  # a short sentence waiting to be glued onto the next

    def push(self, piece: str) -> list[str]:
        """Add a piece of text; return the sentences it completed (often none)."""
        self._append(piece)
        return self._glue(self._cut(final=False), final=False)

    def finish(self) -> list[str]:
        """The text has ended: return the sentences not handed out yet."""
        sentences = self._glue(self._cut(final=True), final=True)
        self._gap = ""
        return sentences

    def _append(self, piece: str) -> None:
        for gap, word in _RUNS.findall(piece):
            if gap:
                self._gap = "\n" if self._gap == "\n" or not _LINE_BREAKS.isdisjoint(gap) else " "
            else:
                self.text += (self._gap if self.text else "") + word
                self._gap = ""

    def _cut(self, final: bool) -> list[str]:
        sentences = []
        while self.text:
            newline = self.text.find("\n")
            line = self.text if newline < 0 else self.text[:newline]
            end = self._sentence_end(line, complete=final or newline >= 0)
            if end is None:
                break  # wait for more text
            sentences.append(line[:end].strip())
            self.text = self.text[end:].lstrip(" \n")  # the rest of the line, or the next line
            self._checked = 0
        return sentences

    def _sentence_end(self, line: str, complete: bool) -> int | None:
        """Where the first sentence of `line` ends, or None while that depends on text still to come."""
        limit = self.max_chars
        windows = min(len(line), limit + 1)
        for end in range(self._checked + 1, windows + 1):
            starts_word = end >= 2 and line[end - 1].isalnum() and not line[end - 2].isalnum()
            if end == len(line) and not (starts_word or complete):
                return None  # whether the line ends here is not known yet
            if starts_word or end == len(line):
                ends = sentence_ends(line[:end], self.language)
                if len(ends) > 1:
                    return _opening_quotes_go_after(line, ends[0])
            self._checked = end
        if len(line) > limit:
            return _last_break(line, limit)
        return len(line) if complete else None

    def _glue(self, sentences: list[str], final: bool) -> list[str]:
        glued = []
        for sentence in sentences:
            if self._fragment:
                fragment, self._fragment = self._fragment, ""
                if len(fragment) + 1 + len(sentence) <= self.max_chars:
                    sentence = _join(fragment, sentence)
                else:
                    glued.append(fragment)
            if len(sentence) < MIN_SENTENCE_CHARS:
                self._fragment = sentence
            else:
                glued.append(sentence)
        if final and self._fragment:
            glued.append(self._fragment)
            self._fragment = ""
        return glued


def _join(fragment: str, sentence: str) -> str:
    wide = unicodedata.east_asian_width(fragment[-1]) in "WF"  # CJK: no spaces between sentences
    return f"{fragment}{'' if wide else ' '}{sentence}"


def _opening_quotes_go_after(line: str, end: int) -> int:
    """sentencex reads a quote that opens the next sentence before its closer has come ('asked. "Y')
    as the end of this one: move the end back before it."""
    head = line[:end].rstrip(_QUOTES)
    return len(head) if len(head) < end and head.endswith(" ") and not line[end].isspace() else end


def _last_break(line: str, limit: int) -> int:
    breaks = [m.end() for m in _SOFT_BREAK.finditer(line, 0, limit)]
    return breaks[-1] if breaks and breaks[-1] > limit // 3 else limit
