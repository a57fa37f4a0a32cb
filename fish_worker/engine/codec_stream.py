"""One streamed sentence's codec state: codes in windows → the same audio as one decode of them all.

fish-speech's decode (`DAC.decode`) is `quantizer.decode` (codebook embeddings, then the `post_module`,
a causal transformer whose attention is limited to a window: 8 layers × 128 frames at S1-mini, so a
frame's latent depends on up to 8 × 127 = 1,016 frames before it) followed by convolutions (the
quantizer's `upsample` and the `decoder`), all causal, whose reach is 9 frames (a latent frame
changes the audio of the 8.6 frames after it, nothing beyond). Decoding a window with a few frames of
left context is exact for the convolutions and wrong for the transformer, so the stream keeps the
transformer's state instead:

- per layer, that layer's input over the last window − 1 positions (what its keys and values are
  computed from): a window's frames run through fish-speech's own `TransformerBlock`s with the
  history in front of them, at their absolute positions (the rotary table) and under fish-speech's
  window mask, and only the new rows are kept;
- the last `context` latents after the transformer, which the convolutions get as left context.

fish-speech's `Transformer` does have a KV cache (`setup_caches`, `input_pos`), but it lives on the
shared module (one per model, not per stream) and grows with the sequence; the per-layer inputs
carry the same information per stream. Recomputing the history rows costs (window − 1) rows per layer
per window, small beside the convolutions (docs/performance.md, "Streamed audio").
"""

from __future__ import annotations

import numpy as np
import torch

from fish_worker.engine.codec import Codec


class CodecStream:
    """`decode(codes)` for consecutive windows of one sentence; each returns those frames' audio."""

    def __init__(self, codec: Codec, context: int = 16):
        self.codec = codec
        self.context = context  # latent frames of left context for the convolutions (their reach: 9)
        self._quantizer = codec.model.quantizer
        post = self._quantizer.post_module
        self._post = post if hasattr(post, "layers") else None  # nn.Identity: nothing to carry
        if self._post is not None:
            if not isinstance(self._post.look_ahead_conv, torch.nn.Identity):
                raise NotImplementedError("a post_module with a look-ahead conv cannot be decoded in windows")
            window = self._post.window_size
            self._keep = window - 1 if window is not None else None  # None: unlimited, keep everything
            self._history: list[torch.Tensor | None] = [None] * len(self._post.layers)
        self._position = 0  # frames decoded so far
        self._latents: torch.Tensor | None = None  # [dim, ≤ context] after the post_module

    @property
    def state_bytes(self) -> int:
        """Memory this stream holds between windows."""
        held = [*(self._history if self._post is not None else []), self._latents]
        return sum(t.numel() * t.element_size() for t in held if t is not None)

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> np.ndarray:
        """The next window's codes [num_codebooks, frames] → its audio (frames × samples_per_frame)."""
        frames = codes.shape[1]
        with self.codec.autocast():
            latent = self._post_module(self._embeddings(codes))[0]  # [dim, frames]
        window = latent if self._latents is None else torch.cat([self._latents, latent], dim=1)
        self._latents = window[:, max(0, window.shape[1] - self.context) :] if self.context else None
        self._position += frames
        return self.codec.decode_window(window)[-frames * self.codec.samples_per_frame :]

    def _embeddings(self, codes: torch.Tensor) -> torch.Tensor:
        """Codebook embeddings [1, dim, frames], as `quantizer.decode` sums them (codes clamped alike)."""
        indices = codes.to(device=self.codec.device, dtype=torch.long)[None]
        semantic, residual = self._quantizer.semantic_quantizer, self._quantizer.quantizer
        return (
            semantic.from_codes(indices[:, :1].clamp(max=semantic.codebook_size - 1))[0]
            + residual.from_codes(indices[:, 1:].clamp(max=residual.codebook_size - 1))[0]
        )

    def _post_module(self, z: torch.Tensor) -> torch.Tensor:
        """fish-speech's WindowLimitedTransformer.forward for new frames, with this stream's history."""
        post = self._post
        if post is None:
            return self._quantizer.post_module(z)
        x = post.input_proj(z.transpose(1, 2) if post.channels_first else z)  # [1, frames, dim]
        new = x.shape[1]
        held = 0 if self._history[0] is None else self._history[0].shape[1]
        positions = torch.arange(self._position - held, self._position + new, device=x.device)
        freqs_cis = post.freqs_cis[positions]  # IndexError past block_size, as the one-shot decode
        mask = post.make_window_limited_mask(held + new).to(x.device)
        for i, layer in enumerate(post.layers):
            history = self._history[i]
            rows = x if history is None else torch.cat([history, x], dim=1)
            self._history[i] = rows if self._keep is None else rows[:, max(0, rows.shape[1] - self._keep) :].clone()
            x = layer(rows, positions, freqs_cis, mask)[:, -new:]
        x = post.output_proj(post.norm(x))
        return x.transpose(1, 2) if post.channels_first else x
