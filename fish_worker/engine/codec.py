"""The DAC codec: audio → codec tokens (voice references) and tokens → audio."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from fish_worker.engine.codec_batching import DecodeBatcher

if TYPE_CHECKING:  # fish-speech ships no type information: to mypy this is Any, to a reader what the codec is
    from fish_speech.models.dac.modded_dac import DAC


class Codec:
    """`batch_frames` > 0: concurrent decodes share padded batches of at most that many frames
    (engine/codec_batching.py), on a CUDA stream of their own so they overlap the decoding steps.
    Whole sentences (`decode`) and streamed windows (`decode_window`, engine/codec_stream.py) share
    the batches: one decode runs at a time."""

    def __init__(self, model: DAC, device: torch.device, precision: torch.dtype, batch_frames: int = 0):
        self.model = model
        self.device = device
        self.precision = precision
        self.batcher = DecodeBatcher(self._decode_on_stream, batch_frames) if batch_frames > 0 else None
        self._stream = torch.cuda.Stream(device) if batch_frames > 0 and device.type == "cuda" else None

    def autocast(self):
        # fish-speech's engine (inference_engine `get_audio_segment`) decodes under autocast to its
        # precision (bf16, or fp16 with --half) on every device but MPS, the CPU included. Here only a
        # GPU autocasts (to FISH_PRECISION); the CPU decodes in fp32 (the weights' own dtype), so the
        # CPU runs, which the tests and equality checks use, are exact to float rounding.
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
        with self.autocast():
            codes, _ = self.model.encode(wav, lengths)
        return codes[0].to(device="cpu", dtype=torch.int)

    def decode(self, codes: torch.Tensor) -> np.ndarray:
        """Codes [num_codebooks, frames] → mono float32 audio (frames × samples_per_frame samples)."""
        if self.batcher is not None:
            return self.batcher.decode(codes)
        return self.decode_many([codes])[0]

    def decode_window(self, latent: torch.Tensor) -> np.ndarray:
        """A streamed window's quantizer latent, after the post_module ([dim, frames], on the device) →
        its audio through the conv stack alone (engine/codec_stream.py keeps the transformer's state)."""
        if self.batcher is not None:
            return self.batcher.decode(latent)
        return self.decode_windows_many([latent])[0]

    @torch.inference_mode()
    def decode_many(self, codes: Sequence[torch.Tensor]) -> list[np.ndarray]:
        """One decode call for several code sequences, right-padded to the longest (the decoder is
        causal: each row's samples are those it has alone, to float rounding)."""
        batch = self._right_padded(codes, torch.long)
        lengths = [c.shape[1] for c in codes]
        with self.autocast():
            audio, _ = self.model.decode(indices=batch, feature_lengths=torch.tensor(lengths, device=self.device))
        return self._rows(audio, lengths)

    @torch.inference_mode()
    def decode_windows_many(self, latents: Sequence[torch.Tensor]) -> list[np.ndarray]:
        """`decode_window` for several windows at once: the quantizer's upsample and the decoder's convs
        (causal, so right padding changes no row's samples)."""
        batch = self._right_padded(latents, latents[0].dtype)
        with self.autocast():
            audio = self.model.decoder(self.model.quantizer.upsample(batch))
        return self._rows(audio, [z.shape[1] for z in latents])

    def _right_padded(self, rows: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        if len(rows) == 1:  # the common case (no batching, or a lone request): nothing to pad
            return rows[0].to(device=self.device, dtype=dtype)[None]
        batch = torch.zeros(
            (len(rows), rows[0].shape[0], max(r.shape[1] for r in rows)), dtype=dtype, device=self.device
        )
        for row, r in enumerate(rows):
            batch[row, :, : r.shape[1]] = r.to(device=self.device, dtype=dtype)
        return batch

    def _rows(self, batch: torch.Tensor, lengths: list[int]) -> list[np.ndarray]:
        audio: np.ndarray = batch[:, 0].float().cpu().numpy()
        if len(lengths) == 1:
            return [audio[0, : lengths[0] * self.samples_per_frame]]
        # Copies, so a job's audio does not keep the whole batch's array alive.
        return [audio[row, : n * self.samples_per_frame].copy() for row, n in enumerate(lengths)]

    def _decode_mixed(self, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
        """A batcher's turn: codes (integer) of whole sentences and streamed windows' latents (float)."""
        windows = [i for i, x in enumerate(inputs) if x.is_floating_point()]
        sentences = [i for i, x in enumerate(inputs) if not x.is_floating_point()]
        if not windows:
            return self.decode_many(inputs)
        if not sentences:
            return self.decode_windows_many(inputs)
        audio: list[np.ndarray | None] = [None] * len(inputs)
        for rows, decode in ((windows, self.decode_windows_many), (sentences, self.decode_many)):
            for i, a in zip(rows, decode([inputs[i] for i in rows]), strict=True):
                audio[i] = a
        return audio  # type: ignore[return-value]

    def _decode_on_stream(self, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
        if self._stream is None:
            return self._decode_mixed(inputs)
        # The codes were written on the engine's stream: wait for it, then decode beside it.
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream):
            return self._decode_mixed(inputs)
