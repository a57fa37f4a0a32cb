"""Output adjustments (fish_worker/audio/postprocess.py): speed with pitch kept, volume, sample rate."""

from __future__ import annotations

import numpy as np
import pytest

from fish_worker.audio.postprocess import AudioAdjustments, AudioPostProcessor

RATE = 44100


def tone(seconds=1.0, hz=220.0, amplitude=0.5):
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(int(seconds * RATE)) / RATE)).astype(np.float32)


def peak_hz(audio, rate):
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return np.argmax(spectrum) * rate / len(audio)


def streamed(audio, adjustments, piece=3001):
    processor = AudioPostProcessor(adjustments, RATE)
    parts = [processor.process(audio[i : i + piece]) for i in range(0, len(audio), piece)]
    return np.concatenate(parts + [processor.flush()])


def test_defaults_change_nothing():
    audio = tone()
    assert AudioAdjustments().is_identity
    np.testing.assert_array_equal(streamed(audio, AudioAdjustments()), audio)


@pytest.mark.parametrize("speed", [0.5, 0.8, 1.5, 2.0])
def test_speed_changes_duration_not_pitch(speed):
    out = streamed(tone(2.0), AudioAdjustments(speed=speed))
    assert len(out) == pytest.approx(2.0 * RATE / speed, rel=0.02)
    assert peak_hz(out, RATE) == pytest.approx(220, abs=3)


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 24000, 48000])
def test_sample_rate_resamples_in_stream(rate):
    adjustments = AudioAdjustments(sample_rate=rate)
    out = streamed(tone(1.0), adjustments)
    assert len(out) == pytest.approx(rate, abs=2)
    assert peak_hz(out, rate) == pytest.approx(220, abs=2)


def test_volume_in_decibels():
    out = streamed(tone(amplitude=0.5), AudioAdjustments(volume_db=-6.0))
    assert np.abs(out).max() == pytest.approx(0.5 * 10 ** (-6 / 20), rel=1e-3)


def test_all_at_once_in_pieces():
    adjustments = AudioAdjustments(sample_rate=16000, speed=1.25, volume_db=3.0)
    out = streamed(tone(2.0, amplitude=0.3), adjustments, piece=1024)
    assert len(out) == pytest.approx(2.0 * 16000 / 1.25, rel=0.02)
    assert peak_hz(out, 16000) == pytest.approx(220, abs=3)
    assert np.abs(out).max() == pytest.approx(0.3 * 10 ** (3 / 20), rel=0.05)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"sample_rate": 4000}, "sample_rate"),
        ({"sample_rate": 96000}, "sample_rate"),
        ({"speed": 0.4}, "speed"),
        ({"speed": 2.5}, "speed"),
        ({"volume_db": 30.0}, "volume"),
    ],
)
def test_out_of_range_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        AudioAdjustments(**kwargs)


def test_fish_encoder_hands_out_a_sentence_whole_at_its_end():
    """With speed and resampling on, nothing of a finished sentence waits for the next one."""
    from fish_worker.server.fish_synthesis import FishAudioEncoder

    encoder = FishAudioEncoder("pcm16", AudioAdjustments(sample_rate=16000, speed=1.5), RATE)
    sentence = tone(1.0)
    data = encoder.feed(sentence[:20000]) + encoder.feed(sentence[20000:], end_of_sentence=True)
    assert len(data) // 2 == pytest.approx(16000 / 1.5, rel=0.02)
    assert encoder.close() == b""


@pytest.mark.parametrize("speed", [0.5, 1.5, 2.0])
def test_time_stretch_holds_back_little_of_a_streamed_piece(speed):
    """A streamed job's first audio waits ~50 ms for the stretch, not the most of its first piece."""
    processor = AudioPostProcessor(AudioAdjustments(speed=speed), 44100)
    out = processor.process(tone(0.4))  # one streamed chunk: ~0.4 s of model audio
    held_back_s = 0.4 - len(out) * speed / 44100
    assert held_back_s < 0.08, held_back_s
