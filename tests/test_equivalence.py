"""We run the real model: same checkpoint, text and seed → fish-speech's own tokens and audio."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fish_worker.engine.generation import VoicePrompt
from fish_worker.engine.sampling import SamplingParams
from test_handler import run_job


def fish_speech_codes(model, text: str, seed: int, max_new_tokens: int, prompt_text=None, prompt_tokens=None):
    from fish_speech.models.text2semantic.inference import decode_one_token_ar, generate_long

    torch.manual_seed(seed)
    responses = generate_long(
        model=model, device="cpu", decode_one_token=decode_one_token_ar, text=text,
        max_new_tokens=max_new_tokens, temperature=0.7, top_p=0.8, repetition_penalty=1.1,
        prompt_text=prompt_text, prompt_tokens=prompt_tokens if prompt_tokens is not None else [],
    )
    return next(r.codes for r in responses if r.action == "sample")


def fish_speech_audio(codec_model, codes: torch.Tensor) -> np.ndarray:
    """The call fish-speech's engine makes (VQManager.decode_vq_tokens), on the same codec weights.

    (Importing the engine module itself needs packages inference does not: natsort, ...)"""
    with torch.inference_mode():
        audio, _ = codec_model.decode(indices=codes[None].long(), feature_lengths=torch.tensor([codes.shape[1]]))
    return audio[0].squeeze().float().numpy()


@pytest.mark.parametrize("seed", [0, 1234])
def test_tokens_and_audio_equal_fish_speech(runner, service, seed):
    text, max_tokens = "The quick brown fox jumps over the lazy dog.", 24
    expected = fish_speech_codes(service.generator.model, text, seed, max_tokens)
    ours = torch.stack(list(service.generator.generate(
        text, [], SamplingParams(0.7, 0.8, 1.1, max_tokens), torch.Generator().manual_seed(seed))), dim=1)
    # fish-speech drops the last generated frame when it stops on the token budget; we keep it.
    assert ours.shape[1] == expected.shape[1] + 1
    assert torch.equal(ours[:, :-1], expected)

    [out] = run_job(runner, {"message": text, "max_tokens": max_tokens, "seed": seed,
                             "temperature": 0.7, "top_p": 0.8, "repetition_penalty": 1.1})
    reference_audio = fish_speech_audio(service.codec.model, ours)
    np.testing.assert_allclose(np.asarray(out["audio"], dtype=np.float32), np.clip(reference_audio, -1, 1), atol=1e-5)


def test_voice_prompt_tokens_equal_fish_speech(service):
    prompt_codes = torch.randint(0, 64, (service.generator.num_codebooks, 30), generator=torch.Generator().manual_seed(9))
    expected = fish_speech_codes(service.generator.model, "Clone me.", 77, 16,
                                 prompt_text=["A reference."], prompt_tokens=[prompt_codes])
    ours = torch.stack(list(service.generator.generate(
        "Clone me.", [VoicePrompt("A reference.", prompt_codes)], SamplingParams(0.7, 0.8, 1.1, 16),
        torch.Generator().manual_seed(77))), dim=1)
    assert torch.equal(ours[:, :-1], expected)
