"""StreamEncoder's bitrate option: MP3 CBR at every MP3 sample rate, Opus bitrates."""

from __future__ import annotations

import numpy as np
import pytest

from fish_worker.audio.formats import StreamEncoder, mp3_compression_level

SECONDS = 4.0


def noise(rate):
    return (0.3 * np.random.default_rng(0).standard_normal(int(SECONDS * rate))).astype(np.float32)


def kbps(fmt, rate, bitrate):
    encoder = StreamEncoder(fmt, rate, bitrate)
    audio = noise(rate)
    data = b"".join(
        [encoder.feed_bytes(audio[i : i + 4000]) for i in range(0, len(audio), 4000)] + [encoder.close_bytes()]
    )
    return len(data) * 8 / SECONDS / 1000


@pytest.mark.parametrize(
    "rate, bitrate, expected",
    [
        (44100, 64, 64),
        (44100, 128, 128),
        (44100, 192, 192),
        (48000, 128, 128),
        (24000, 64, 64),
        (16000, 128, 128),
        (16000, 192, 160),  # MPEG-2 tops out at 160
        (8000, 64, 64),
        (8000, 128, 64),  # MPEG-2.5 at 64
    ],
)
def test_mp3_bitrate_is_what_was_asked_at_every_rate(rate, bitrate, expected):
    assert kbps("mp3", rate, bitrate) == pytest.approx(expected, rel=0.1)


def test_mp3_default_is_128k_whatever_the_rate():
    assert kbps("mp3", 16000, None) == pytest.approx(128, rel=0.1)


@pytest.mark.parametrize("bitrate", [24, 32, 64])
def test_opus_bitrate(bitrate):
    assert kbps("opus", 44100, bitrate) == pytest.approx(bitrate, rel=0.25)


def test_mp3_refuses_a_rate_it_cannot_carry():
    with pytest.raises(ValueError, match="10000"):
        mp3_compression_level(128, 10000)
