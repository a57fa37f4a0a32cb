"""Every output format decodes back to the audio that went in; streams are one continuous file."""

import base64
import io
import re
import wave

import numpy as np
import pytest

from helpers import decode_ffmpeg, decode_soundfile, pcm16_of, rms
from fish_worker.audio.formats import (
    AUDIO_FORMATS,
    MODEL_SAMPLE_RATE,
    OPUS_SAMPLE_RATE,
    ResultTooLargeError,
    StreamEncoder,
    audio_result,
    clean_samples,
    encode_audio,
    encode_audio_bytes,
    json_size,
    result_limit_bytes,
    split_payload,
    streaming_wav_header,
)

SR = MODEL_SAMPLE_RATE
BINARY_FORMATS = [f for f in AUDIO_FORMATS if f != "float"]
MP3_FRAME = 1152


def speech_like(seconds=1.5, seed=0):
    """A voiced-ish test signal: a few harmonics with a slow envelope plus a little noise."""
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    tone = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((180, 360, 540, 1200), 1))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (0.3 * envelope * tone / 2 + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


AUDIO = speech_like()


def stream_encode(fmt, audio, piece=7_001):
    encoder = StreamEncoder(fmt)
    payloads = [encoder.feed(audio[i : i + piece]) for i in range(0, len(audio), piece)]
    payloads.append(encoder.close())
    return encoder, payloads


def join_stream(payloads):
    return b"".join(base64.b64decode(p) for p in payloads)


# ---- one-shot -----------------------------------------------------------------------------------


def test_float_is_a_clipped_list_with_nan_as_silence():
    out = encode_audio(np.array([0.25, np.nan, 1.5, -2.0, -0.5], dtype=np.float32), "float")
    assert out == [0.25, 0.0, 1.0, -1.0, -0.5]
    assert encode_audio(AUDIO, "float") == np.round(AUDIO.astype(np.float64), 5).tolist()


def test_float_samples_are_rounded_to_five_decimals_and_print_short():
    out = encode_audio(np.array([0.123456789, -0.000012345, 1e-7, -0.99999999], dtype=np.float32), "float")
    assert out == [0.12346, -1e-05, 0.0, -1.0]
    noise = np.random.default_rng(0).uniform(-1, 1, 10_000).astype(np.float32)
    assert json_size(encode_audio(noise, "float")) <= 10 * 10_000  # "-0.12345, ": at most 10 bytes a sample


def test_pcm16_is_little_endian_int16_within_one_lsb():
    data = base64.b64decode(encode_audio(AUDIO, "pcm16"))
    assert len(data) == 2 * len(AUDIO)
    decoded = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768
    assert np.max(np.abs(decoded - AUDIO)) <= 1 / 32768


def test_loud_input_is_clipped_not_wrapped():
    loud = np.array([3.0, -3.0, 1.0, -1.0, np.inf, -np.inf], dtype=np.float32)
    assert pcm16_of(loud).tolist() == [32767, -32768, 32767, -32768, 32767, -32768]


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_lossless_files_decode_to_the_exact_16_bit_samples(fmt):
    data = base64.b64decode(encode_audio(AUDIO, fmt))
    samples, rate = decode_soundfile(data, dtype="int16")
    assert rate == SR
    np.testing.assert_array_equal(samples, pcm16_of(AUDIO))


@pytest.mark.parametrize(
    "fmt, rate, slack",
    [
        ("mp3", SR, 2 * MP3_FRAME),  # LAME's Info tag makes most decoders trim delay/padding
        ("opus", OPUS_SAMPLE_RATE, 2 * 960),
    ],
)
def test_lossy_files_keep_length_and_level(fmt, rate, slack):
    data = base64.b64decode(encode_audio(AUDIO, fmt))
    samples, decoded_rate = decode_soundfile(data)
    assert decoded_rate == rate
    expected_length = round(len(AUDIO) * rate / SR)
    assert abs(len(samples) - expected_length) <= slack
    assert rms(samples) == pytest.approx(rms(AUDIO), rel=0.15)


AAC_FRAME = 1024


def test_aac_whole_and_streamed_are_the_same_adts_file_of_the_right_length_and_level():
    whole = encode_audio_bytes(AUDIO, "aac")
    _, payloads = stream_encode("aac", AUDIO)
    streamed = join_stream(payloads)
    assert streamed == whole  # ADTS has no file header: a stream is the whole file, frame by frame
    assert sum(1 for p in payloads[:-1] if p) >= len(payloads) // 2  # bytes leave as samples come in
    assert whole[:2] == b"\xff\xf1"  # ADTS sync word, MPEG-4, no CRC
    samples, rate = decode_ffmpeg(whole)
    assert rate == SR
    # The encoder's priming frame and the last frame's padding stay in (ADTS cannot say to trim them).
    assert 0 <= len(samples) - len(AUDIO) <= 2 * AAC_FRAME
    assert rms(samples) == pytest.approx(rms(AUDIO), rel=0.15)
    kbps = len(whole) * 8 / (len(AUDIO) / SR) / 1000
    assert 50 < kbps < 80  # 64 kbit/s ABR


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 48000])
def test_aac_streams_at_every_rate_it_can_carry(rate):
    audio = speech_like(0.5)[: rate // 2]
    encoder = StreamEncoder("aac", rate)
    assert encoder.sample_rate == rate
    data = base64.b64decode(encoder.feed(audio)) + base64.b64decode(encoder.close())
    samples, decoded_rate = decode_ffmpeg(data)
    assert decoded_rate == rate and 0 <= len(samples) - len(audio) <= 2 * AAC_FRAME
    with pytest.raises(ValueError, match="aac cannot carry 20000 Hz"):
        StreamEncoder("aac", 20000)


def test_empty_aac_stream_is_empty():
    assert StreamEncoder("aac").close() == ""


def test_mp3_is_128k_cbr():
    data = encode_audio_bytes(AUDIO, "mp3")
    kbps = len(data) * 8 / (len(AUDIO) / SR) / 1000
    assert 120 < kbps < 145


def test_audio_result_reports_format_and_rate():
    assert audio_result(AUDIO, "wav").keys() == {"audio", "audio_format", "sample_rate"}
    assert audio_result(AUDIO, "wav")["sample_rate"] == SR
    assert audio_result(AUDIO, "opus")["sample_rate"] == OPUS_SAMPLE_RATE
    assert audio_result(AUDIO, "float")["audio_format"] == "float"


def test_unknown_format_and_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="audio_format must be one of"):
        encode_audio(AUDIO, "wma")
    with pytest.raises(ValueError, match="audio_format must be one of"):
        StreamEncoder("ogg")
    with pytest.raises(ValueError, match="mono"):
        encode_audio(np.zeros((2, 100), dtype=np.float32), "wav")
    assert clean_samples(np.zeros((1, 5))).shape == (5,)


# ---- streaming ----------------------------------------------------------------------------------


def test_float_stream_concatenates_to_the_one_shot_list():
    _, payloads = stream_encode("float", AUDIO)
    assert sum(payloads, []) == encode_audio(AUDIO, "float")


def test_pcm16_stream_is_byte_identical_to_one_shot():
    _, payloads = stream_encode("pcm16", AUDIO)
    assert join_stream(payloads) == encode_audio_bytes(AUDIO, "pcm16")


def test_wav_stream_has_one_header_with_unknown_length():
    _, payloads = stream_encode("wav", AUDIO)
    data = join_stream(payloads)
    assert data.count(b"RIFF") == 1 and data.startswith(streaming_wav_header(SR))
    assert data[44:] == encode_audio_bytes(AUDIO, "pcm16")
    for samples, rate in (decode_soundfile(data, "int16"), decode_ffmpeg(data)):
        assert rate == SR
        np.testing.assert_array_equal(samples, pcm16_of(AUDIO))
    with wave.open(io.BytesIO(data)) as reader:  # the stdlib reader copes with the unknown size too
        assert reader.getframerate() == SR
        assert len(reader.readframes(10**9)) == 2 * len(AUDIO)


def test_flac_stream_decodes_as_one_file_equal_to_one_shot():
    _, payloads = stream_encode("flac", AUDIO)
    data = join_stream(payloads)
    assert data.startswith(b"fLaC") and data.count(b"fLaC") == 1
    one_shot, _ = decode_soundfile(encode_audio_bytes(AUDIO, "flac"), dtype="int16")
    streamed, rate = decode_ffmpeg(data)  # libsndfile refuses unknown-length FLAC; ffmpeg doesn't
    assert rate == SR
    np.testing.assert_array_equal(streamed, one_shot)


def test_mp3_stream_decodes_as_one_file_matching_one_shot():
    _, payloads = stream_encode("mp3", AUDIO)
    data = join_stream(payloads)
    one_shot, _ = decode_soundfile(encode_audio_bytes(AUDIO, "mp3"))
    for streamed, rate in (decode_soundfile(data), decode_ffmpeg(data)):
        assert rate == SR
        # The stream can't carry the gapless-playback tag: a blank first frame plus encoder
        # delay/padding stay in, all under three frames.
        assert 0 <= len(streamed) - len(one_shot) <= 3 * MP3_FRAME
        assert rms(streamed) == pytest.approx(rms(one_shot), rel=0.1)
    # Past the tag frame the stream is the very same MP3 as the one-shot encoding.
    assert data[2048:] == encode_audio_bytes(AUDIO, "mp3")[2048:]


def test_opus_stream_decodes_as_one_file_matching_one_shot():
    _, payloads = stream_encode("opus", AUDIO)
    data = join_stream(payloads)
    assert data.count(b"OpusHead") == 1
    one_shot, _ = decode_soundfile(encode_audio_bytes(AUDIO, "opus"))
    for streamed, rate in (decode_soundfile(data), decode_ffmpeg(data)):
        assert rate == OPUS_SAMPLE_RATE
        assert abs(len(streamed) - len(one_shot)) <= 960
        assert rms(streamed) == pytest.approx(rms(one_shot), rel=0.1)


@pytest.mark.parametrize("fmt", AUDIO_FORMATS)
def test_stream_reports_format_and_rate_and_refuses_feed_after_close(fmt):
    encoder = StreamEncoder(fmt)
    assert encoder.audio_format == fmt
    assert encoder.sample_rate == (OPUS_SAMPLE_RATE if fmt == "opus" else SR)
    encoder.feed(AUDIO[:1000])
    encoder.close()
    with pytest.raises(RuntimeError, match="closed"):
        encoder.feed(AUDIO[:10])


def test_empty_wav_stream_is_still_a_valid_file():
    data = base64.b64decode(StreamEncoder("wav").close())
    with wave.open(io.BytesIO(data)) as reader:
        assert reader.readframes(10) == b""


# ---- RunPod size limits -------------------------------------------------------------------------


def test_split_base64_payload_pieces_fit_and_rejoin():
    raw = np.random.default_rng(1).bytes(2_500_001)
    payload = base64.b64encode(raw).decode()
    pieces = split_payload(payload, max_json_bytes=1_000_000)
    assert len(pieces) == 4
    assert all(json_size(p) <= 1_000_000 for p in pieces)
    assert b"".join(base64.b64decode(p) for p in pieces) == raw


def test_split_float_payload_pieces_fit_and_rejoin():
    # Negative values with 5 significant decimals have the longest JSON text ("-0.12345").
    rng = np.random.default_rng(2)
    worst = np.round(-rng.uniform(0.1, 0.9, 100_000), 5).tolist()
    pieces = split_payload(worst, max_json_bytes=200_000)
    assert len(pieces) > 1
    assert all(json_size(p) <= 200_000 for p in pieces)
    assert sum(pieces, []) == worst
    assert split_payload([]) == []


def test_result_limits_per_route_and_the_error_names_the_ways_out():
    assert result_limit_bytes("run") == 10_000_000 and result_limit_bytes("runsync") == 20_000_000
    with pytest.raises(ValueError, match="route"):
        result_limit_bytes("stream")
    error = ResultTooLargeError(12_000_000, result_limit_bytes("run"), "run")
    assert re.search(r"12.0 MB, over .*/run;.*compressed audio_format.*S3", str(error))
