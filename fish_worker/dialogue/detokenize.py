"""Turn a stream of generated token ids into text deltas whose concatenation is the decoded reply.

Decoding each token alone is wrong twice over: byte-level tokens can split a UTF-8 character (a lone
piece decodes to U+FFFD), and SentencePiece tokenizers drop a word's leading space when it is decoded
without its left neighbour. So we decode a short window that starts a few tokens back, and emit only
the part beyond what that window's prefix already produced, holding it back while it ends mid-character.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # not imported at run time: the caller has transformers loaded
    from transformers import PreTrainedTokenizerBase

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer
        self.token_ids: list[int] = []
        self._prefix_start = 0  # window start: the tokens before it are already fully emitted
        self._emitted_end = 0  # tokens [prefix_start, emitted_end) are emitted; the rest is pending

    def _decode(self, ids: list[int]) -> str:
        text = self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        assert isinstance(text, str)  # one list of ids decodes to one string (transformers' hint says either)
        return text

    def push(self, token_id: int) -> str:
        """Add one token; return the new text it completes (often "", e.g. mid-character)."""
        self.token_ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """Return whatever is still pending (an incomplete character becomes U+FFFD)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        already = self._decode(self.token_ids[self._prefix_start : self._emitted_end])
        window = self._decode(self.token_ids[self._prefix_start :])
        if len(window) <= len(already) or (window.endswith(REPLACEMENT_CHAR) and not final):
            return ""
        self._prefix_start = self._emitted_end
        self._emitted_end = len(self.token_ids)
        return window[len(already) :]
