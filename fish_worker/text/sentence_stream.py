"""Cut text that arrives in pieces (a chat reply being written) into sentences as soon as each is complete.

A sentence is complete once the next one has started: until then it may still grow ("Hello." can
become "Hello.5"), or be glued onto the next one by split_sentences' fragment merging. So every
piece re-splits the text so far and hands out all but the last sentence; the end of the text
hands out the rest. The result is what split_sentences makes of the whole text.
"""

from __future__ import annotations

from fish_worker.text.sentences import split_sentences


class SentenceStream:
    def __init__(self, max_chars: int = 300):
        self.max_chars = max_chars
        self.text = ""
        self._handed_out = 0  # sentences already returned

    def push(self, piece: str) -> list[str]:
        """Add a piece of text; return the sentences it completed (often none)."""
        self.text += piece
        return self._new(split_sentences(self.text, self.max_chars)[:-1])

    def finish(self) -> list[str]:
        """The text has ended: return the sentences not handed out yet."""
        return self._new(split_sentences(self.text, self.max_chars))

    def _new(self, sentences: list[str]) -> list[str]:
        # Re-splitting the whole text is quadratic, but a reply is at most a few thousand characters.
        new = sentences[self._handed_out :]
        self._handed_out += len(new)
        return new
