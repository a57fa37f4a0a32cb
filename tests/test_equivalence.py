"""We run the real model: same checkpoint, text and seed → fish-speech's own tokens and audio."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fish_worker.engine.generation import VoicePrompt
from fish_worker.engine.sampling import SamplingParams
from helpers import run_job


DEFAULT_SAMPLING = (0.7, 0.8, 1.1)  # temperature, top_p, repetition_penalty


def fish_speech_codes(
    model, text: str, seed: int, max_new_tokens: int, prompt_text=None, prompt_tokens=None, sampling=DEFAULT_SAMPLING
):
    from fish_speech.models.text2semantic.inference import decode_one_token_ar, generate_long

    torch.manual_seed(seed)
    responses = generate_long(
        model=model,
        device="cpu",
        decode_one_token=decode_one_token_ar,
        text=text,
        max_new_tokens=max_new_tokens,
        temperature=sampling[0],
        top_p=sampling[1],
        repetition_penalty=sampling[2],
        prompt_text=prompt_text,
        prompt_tokens=prompt_tokens if prompt_tokens is not None else [],
    )
    return next(r.codes for r in responses if r.action == "sample")


def fish_speech_audio(codec_model, codes: torch.Tensor) -> np.ndarray:
    """The call fish-speech's engine makes (VQManager.decode_vq_tokens), on the same codec weights.

    (Importing the engine module itself needs packages inference does not: natsort, ...)"""
    with torch.inference_mode():
        audio, _ = codec_model.decode(indices=codes[None].long(), feature_lengths=torch.tensor([codes.shape[1]]))
    return audio[0].squeeze().float().numpy()


# The second case is far from the defaults: a job's sampling settings must reach the sampler.
@pytest.mark.parametrize(("seed", "sampling"), [(0, DEFAULT_SAMPLING), (1234, (0.3, 0.5, 1.6))])
def test_tokens_and_audio_equal_fish_speech(runner, service, seed, sampling):
    text, max_tokens = "The quick brown fox jumps over the lazy dog.", 24
    expected = fish_speech_codes(service.generator.model, text, seed, max_tokens, sampling=sampling)
    ours = torch.stack(
        list(
            service.generator.generate(
                text, [], SamplingParams(*sampling, max_tokens), torch.Generator().manual_seed(seed)
            )
        ),
        dim=1,
    )
    # fish-speech drops the last generated frame when it stops on the token budget; we keep it.
    assert ours.shape[1] == expected.shape[1] + 1
    assert torch.equal(ours[:, :-1], expected)

    temperature, top_p, repetition_penalty = sampling
    [out] = run_job(
        runner,
        {
            "message": text,
            "max_tokens": max_tokens,
            "seed": seed,
            "temperature": temperature,
            "top_p": top_p,
            "repetition_penalty": repetition_penalty,
        },
    )
    reference_audio = fish_speech_audio(service.codec.model, ours)
    np.testing.assert_allclose(np.asarray(out["audio"], dtype=np.float32), np.clip(reference_audio, -1, 1), atol=1e-5)


def test_sampling_settings_change_the_speech(runner):
    """Each setting matters on its own (so the check above would notice one being dropped)."""
    base = {"message": "The quick brown fox jumps over the lazy dog.", "max_tokens": 24, "seed": 5}
    audio = {
        name: run_job(runner, {**base, **change})[0]["audio"]
        for name, change in {
            "default": {},
            "temperature": {"temperature": 0.3},
            "top_p": {"top_p": 0.3},
            "repetition_penalty": {"repetition_penalty": 1.8},
        }.items()
    }
    assert all(audio[name] != audio["default"] for name in ("temperature", "top_p", "repetition_penalty"))


def test_voice_prompt_tokens_equal_fish_speech(service):
    prompt_codes = torch.randint(
        0, 64, (service.generator.num_codebooks, 30), generator=torch.Generator().manual_seed(9)
    )
    expected = fish_speech_codes(
        service.generator.model, "Clone me.", 77, 16, prompt_text=["A reference."], prompt_tokens=[prompt_codes]
    )
    ours = torch.stack(
        list(
            service.generator.generate(
                "Clone me.",
                [VoicePrompt("A reference.", prompt_codes)],
                SamplingParams(0.7, 0.8, 1.1, 16),
                torch.Generator().manual_seed(77),
            )
        ),
        dim=1,
    )
    assert torch.equal(ours[:, :-1], expected)
