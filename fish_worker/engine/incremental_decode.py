"""Codec frames → audio while they are still being generated, for streamed requests.

The first audio leaves after `first` frames instead of a whole sentence; later windows double up to
`largest` frames (fewer, larger decodes once audio flows). Each window is decoded by the sentence's
`CodecStream` (engine/codec_stream.py), which carries the codec transformer's state and the
convolutions' left context from window to window, so the windows join into exactly the one-shot
decode of the sentence (to float rounding: tests/test_incremental_decode.py, at the released
codec's transformer structure).
"""

from __future__ import annotations

import numpy as np
import torch

from fish_worker.engine.codec import Codec
from fish_worker.engine.codec_stream import CodecStream


class IncrementalDecoder:
    """Feed frames one by one; get audio for windows of first, 2·first, 4·first ... up to `largest` frames."""

    def __init__(self, codec: Codec, first: int = 8, context: int = 16, largest: int = 64):
        self.codec = codec
        self.largest = max(largest, first)
        self._window = first
        self._stream = CodecStream(codec, context)
        self._frames: list[torch.Tensor] = []
        self._done = 0  # frames already turned into audio

    def push(self, frame: torch.Tensor) -> np.ndarray | None:
        """Add a frame ([num_codebooks]); returns the next window's audio when one is due.

        A window is cut only once a frame beyond it exists, so `flush` always has audio left
        (the sentence's last chunk is never empty).
        """
        self._frames.append(frame)
        if len(self._frames) - self._done <= self._window:
            return None
        audio = self._decode(self._done + self._window)
        self._window = min(self._window * 2, self.largest)
        return audio

    def flush(self) -> np.ndarray:
        """The audio of the frames not yet decoded."""
        return self._decode(len(self._frames)) if len(self._frames) > self._done else np.zeros(0, np.float32)

    def _decode(self, end: int) -> np.ndarray:
        audio = self._stream.decode(torch.stack(self._frames[self._done : end], dim=1))
        self._done = end
        return audio
