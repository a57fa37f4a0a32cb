"""The DAC codec: audio → codec tokens (voice references) and tokens → audio."""

from __future__ import annotations

import contextlib

import numpy as np
import torch


class Codec:
    def __init__(self, model: torch.nn.Module, device: torch.device, precision: torch.dtype):
        self.model = model
        self.device = device
        self.precision = precision

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

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> np.ndarray:
        """Codes [num_codebooks, frames] → mono float32 audio (frames × samples_per_frame samples)."""
        codes = codes.to(device=self.device, dtype=torch.long)
        lengths = torch.tensor([codes.shape[1]], device=self.device)
        with self._autocast():
            audio, _ = self.model.decode(indices=codes[None], feature_lengths=lengths)
        return audio[0].squeeze().float().cpu().numpy()
