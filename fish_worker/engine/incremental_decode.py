"""Codec frames → audio while they are still being generated, for streamed requests.

The DAC decoder is causal: a frame's audio depends only on the frames before it. Its decoder
transformer attends over all of them, but in practice a few frames of left context fix the output
to ~1e-5 (tests/test_incremental_decode.py), so each window is decoded together with the
`context` frames before it and only the window's own samples are kept. The joins then match the
one-shot decode (no clicks), and the first audio leaves after `first` frames instead of a sentence.
"""

from __future__ import annotations

import numpy as np
import torch

from fish_worker.engine.codec import Codec


class IncrementalDecoder:
    """Feed frames one by one; get audio for windows of first, 2·first, 4·first ... up to `largest` frames."""

    def __init__(self, codec: Codec, first: int = 8, context: int = 16, largest: int = 64):
        self.codec = codec
        self.context = context
        self.largest = max(largest, first)
        self._window = first
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
        self._window = min(self._window * 2, self.largest)  # fewer, larger decodes once audio flows
        return audio

    def flush(self) -> np.ndarray:
        """The audio of the frames not yet decoded."""
        return self._decode(len(self._frames)) if len(self._frames) > self._done else np.zeros(0, np.float32)

    def _decode(self, end: int) -> np.ndarray:
        start = max(0, self._done - self.context)
        audio = self.codec.decode(torch.stack(self._frames[start:end], dim=1))
        keep = (end - self._done) * self.codec.samples_per_frame
        self._done = end
        return audio[-keep:]
