"""At the released openaudio-s1-mini shapes (random weights): the loader, the engine and fish-speech agree.

One checkpoint of ~3.3 GB is written per run (weights drawn directly in bf16/fp32, ~30 s) and served
in bf16 on the CPU, the serving precision on a GPU; each check decodes only a few frames.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from fish_worker.engine.batching import BatchScheduler
from fish_worker.engine.generation import SemanticGenerator
from fish_worker.engine.incremental_decode import IncrementalDecoder
from fish_worker.engine.sampling import SamplingParams
from test_equivalence import fish_speech_audio, fish_speech_codes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

FRAMES = 4
TEXTS = ["Real size.", "Another, longer sentence here."]


@pytest.fixture(scope="module")
def s1_mini(tmp_path_factory):
    from fish_worker.tts.loader import load_tts
    from fish_worker.settings import Settings, StorageSettings
    from fish_worker.devtools.tiny_checkpoint import write_tiny_checkpoint

    checkpoint = write_tiny_checkpoint(tmp_path_factory.mktemp("s1-mini"), seed=0, size="s1-mini")
    settings = Settings(
        checkpoint_dir=checkpoint,
        device="cpu",
        precision="bfloat16",
        warmup=False,
        max_concurrency=2,
        storage=StorageSettings(voices_dir=tmp_path_factory.mktemp("voices")),
    )
    return load_tts(settings)


def ours(generate, text: str, seed: int) -> torch.Tensor:
    params = SamplingParams(0.7, 0.8, 1.1, FRAMES)
    return torch.stack(list(generate(text, [], params, torch.Generator().manual_seed(seed))), dim=1)


def test_released_shapes(s1_mini):
    model, codec = s1_mini.generator.model, s1_mini.codec.model
    cfg = model.config
    assert (cfg.dim, cfg.n_layer, cfg.n_fast_layer, cfg.num_codebooks, cfg.codebook_size) == (1024, 28, 4, 10, 4096)
    assert model.embeddings.num_embeddings == 155_776
    assert (codec.quantizer.quantizer.n_codebooks, codec.quantizer.quantizer.codebook_size) == (9, 1024)
    assert codec.quantizer.semantic_quantizer.codebook_size == 4096
    assert 0.65e9 < sum(p.numel() for p in model.parameters()) < 0.75e9
    assert next(model.parameters()).dtype == torch.bfloat16


def test_tokens_and_audio_equal_fish_speech(s1_mini):
    model = s1_mini.generator.model
    expected = fish_speech_codes(model, TEXTS[0], 3, FRAMES)
    single = ours(SemanticGenerator(model, s1_mini.generator.device).generate, TEXTS[0], 3)
    assert torch.equal(single[:, :-1], expected)  # fish-speech drops the frame it stops on
    assert torch.equal(ours(s1_mini.generator.generate, TEXTS[0], 3), single)  # the batched engine, alone
    audio = s1_mini.codec.decode(single)
    assert audio.shape == (FRAMES * 2048,)
    np.testing.assert_array_equal(audio, fish_speech_audio(s1_mini.codec.model, single))


def test_batched_rows_equal_alone(s1_mini):
    single = SemanticGenerator(s1_mini.generator.model, s1_mini.generator.device)
    expected = [ours(single.generate, text, seed) for seed, text in enumerate(TEXTS)]
    scheduler: BatchScheduler = s1_mini.generator
    got: list = [None, None]
    start = threading.Barrier(2)

    def run(i: int) -> None:
        start.wait()
        got[i] = ours(scheduler.generate, TEXTS[i], i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    steps, rows = scheduler.steps, scheduler.rows_decoded
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert scheduler.rows_decoded - rows > scheduler.steps - steps  # the rows shared steps
    for g, e in zip(got, expected):
        assert torch.equal(g, e)


def test_streamed_windows_equal_the_one_shot_decode(s1_mini):
    """The codec stream at the released codec's widths (16 heads of 64, 1,024 wide; fp32 on the CPU).
    Its reach past the 128-frame window is tested on the tiny codec (tests/test_incremental_decode.py)."""
    codec = s1_mini.codec
    generator = torch.Generator().manual_seed(5)
    codes = torch.cat(
        [torch.randint(0, 4096, (1, 40), generator=generator), torch.randint(0, 1024, (9, 40), generator=generator)]
    )
    whole = codec.decode(codes)
    decoder = IncrementalDecoder(codec, first=8)
    pieces = [a for frame in codes.T if (a := decoder.push(frame)) is not None] + [decoder.flush()]
    assert [len(p) // codec.samples_per_frame for p in pieces] == [8, 16, 16]
    np.testing.assert_allclose(np.concatenate(pieces), whole, rtol=0, atol=5e-5)
