"""Streamed audio: decoded in windows while a sentence is generated, equal to the one-shot decode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fish_worker.engine.incremental_decode import IncrementalDecoder
from fish_worker.tts.requests import SynthesisRequest


def random_codes(service, frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 64, (service.generator.num_codebooks, frames), generator=torch.Generator().manual_seed(seed)
    )


def decode_incrementally(decoder: IncrementalDecoder, codes: torch.Tensor) -> list[np.ndarray]:
    pieces = [a for frame in codes.T if (a := decoder.push(frame)) is not None]
    return pieces + [decoder.flush()]


def test_windows_join_into_the_one_shot_audio(service):
    codes = random_codes(service, 100)
    whole = service.codec.decode(codes)
    pieces = decode_incrementally(IncrementalDecoder(service.codec, first=4, context=16, largest=32), codes)
    assert [len(p) // service.codec.samples_per_frame for p in pieces] == [4, 8, 16, 32, 32, 8]
    joined = np.concatenate(pieces)
    assert joined.shape == whole.shape
    np.testing.assert_allclose(joined, whole, atol=1e-4)  # no clicks at the joins


@pytest.mark.timeout(240)
def test_a_long_sentence_in_windows_is_its_one_shot_decode(service):
    """Past the codec transformer's window (128 frames, 8 layers: a latent depends on 1,016 frames
    before it), windows decoded with only a few frames of left context differ (4e-3 of 0.12 here);
    the stream carries the transformer's state, so the joined windows are the one-shot decode."""
    post_module = service.codec.model.quantizer.post_module
    assert (len(post_module.layers), post_module.window_size) == (8, 128)  # the released structure
    codes = random_codes(service, 320, seed=2)
    codes[:, ::7] += 64  # some codes past the codebooks: clamped alike by both decodes
    whole = service.codec.decode(codes)
    pieces = decode_incrementally(IncrementalDecoder(service.codec, first=8, context=16, largest=64), codes)
    assert [len(p) // service.codec.samples_per_frame for p in pieces] == [8, 16, 32, 64, 64, 64, 64, 8]
    joined = np.concatenate(pieces)
    assert joined.shape == whole.shape
    np.testing.assert_allclose(joined, whole, rtol=0, atol=1e-5)


def test_without_left_context_the_joins_differ(service):
    """Why the context exists: each window decoded cold starts its filters from silence."""
    codes = random_codes(service, 40, seed=1)
    whole = service.codec.decode(codes)
    joined = np.concatenate(decode_incrementally(IncrementalDecoder(service.codec, first=8, context=0), codes))
    assert np.max(np.abs(joined - whole)) > 1e-3


def test_last_chunk_is_never_empty(service):
    codes = random_codes(service, 8)  # exactly one first window
    decoder = IncrementalDecoder(service.codec, first=8)
    assert all(decoder.push(frame) is None for frame in codes.T)
    assert len(decoder.flush()) == 8 * service.codec.samples_per_frame


def test_streamed_request_yields_audio_before_the_sentence_ends(service):
    request = dict(text="A fairly long first sentence. And a second one.", frames_per_sentence=40, seed=3)
    one_shot = list(service.synthesize(SynthesisRequest(**request)))
    streamed = list(service.synthesize(SynthesisRequest(**request, stream=True)))
    assert len(streamed) > len(one_shot)  # at least one sentence came in several chunks
    for sentence in one_shot:
        parts = [c for c in streamed if c.index == sentence.index]
        assert parts[0].text == sentence.text and all(c.text == "" for c in parts[1:])
        assert all(c.codes is None for c in parts[:-1]) and torch.equal(parts[-1].codes, sentence.codes)
        assert parts[-1].sentence == sentence.text
        np.testing.assert_allclose(np.concatenate([c.audio for c in parts]), sentence.audio, atol=1e-4)
