"""The DAC codec: audio → codec tokens (voice references) and tokens → audio."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch

from fish_worker.engine.codec_batching import DecodeBatcher


class Codec:
    """`batch_frames` > 0: concurrent decodes share padded batches of at most that many frames
    (engine/codec_batching.py), on a CUDA stream of their own so they overlap the decoding steps."""

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: torch.dtype,
                 batch_frames: int = 0):
        self.model = model
        self.device = device
        self.precision = precision
        self.batcher = DecodeBatcher(self._decode_on_stream, batch_frames) if batch_frames > 0 else None
        self._stream = torch.cuda.Stream(device) if batch_frames > 0 and device.type == "cuda" else None

    def _autocast(self):
        # fish-speech decodes under autocast in the serving precision on GPU; fp32 on CPU.
        if self.device.type == "cuda" and self.precision != torch.float32:
            return torch.autocast(device_type="cuda", dtype=self.precision)
        return contextlib.nullcontext()

    @property
    def sample_rate(self) -> int:
        return int(self.model.sample_rate)

    @property
    def samples_per_frame(self) -> int:
        return int(self.model.frame_length)  # 2048 at 44.1 kHz: ~21.5 frames per second

    @torch.inference_mode()
    def encode(self, audio: np.ndarray) -> torch.Tensor:
        """Mono float32 audio at `sample_rate` → codes [num_codebooks, frames] (int, CPU)."""
        wav = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).to(self.device)[None, None, :]
        lengths = torch.tensor([wav.shape[-1]], device=self.device, dtype=torch.long)
        with self._autocast():
            codes, _ = self.model.encode(wav, lengths)
        return codes[0].to(device="cpu", dtype=torch.int)

    def decode(self, codes: torch.Tensor) -> np.ndarray:
        """Codes [num_codebooks, frames] → mono float32 audio (frames × samples_per_frame samples)."""
        if self.batcher is not None:
            return self.batcher.decode(codes)
        return self.decode_many([codes])[0]

    @torch.inference_mode()
    def decode_many(self, codes: Sequence[torch.Tensor]) -> list[np.ndarray]:
        """One decode call for several code sequences, right-padded to the longest (the decoder is
        causal: each row's samples are those it has alone, to float rounding)."""
        lengths = [c.shape[1] for c in codes]
        if len(codes) == 1:  # the common case (no batching, or a lone request): nothing to pad
            batch = codes[0].to(device=self.device, dtype=torch.long)[None]
        else:
            batch = torch.zeros((len(codes), codes[0].shape[0], max(lengths)), dtype=torch.long, device=self.device)
            for row, c in enumerate(codes):
                batch[row, :, : c.shape[1]] = c.to(device=self.device, dtype=torch.long)
        with self._autocast():
            audio, _ = self.model.decode(indices=batch, feature_lengths=torch.tensor(lengths, device=self.device))
        audio = audio[:, 0].float().cpu().numpy()
        if len(codes) == 1:
            return [audio[0, : lengths[0] * self.samples_per_frame]]
        # Copies, so a job's audio does not keep the whole batch's array alive.
        return [audio[row, : n * self.samples_per_frame].copy() for row, n in enumerate(lengths)]

    def _decode_on_stream(self, codes: Sequence[torch.Tensor]) -> list[np.ndarray]:
        if self._stream is None:
            return self.decode_many(codes)
        # The codes were written on the engine's stream: wait for it, then decode beside it.
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream):
            return self.decode_many(codes)
