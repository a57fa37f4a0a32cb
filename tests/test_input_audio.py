"""Input audio, one decoder for every door (fish_worker/audio/reference.py): the formats it reads,
the limits it checks while decoding (decompression bombs), zero-size clips, the base64 rule, and
lone surrogates on the Fish doors (the seed/OpenAI doors' are in test_hostile_input.py)."""

from __future__ import annotations

import base64
import io
import json
import random
import struct
import time
import tracemalloc

import av
import numpy as np
import ormsgpack
import pytest
import soundfile as sf
import soxr
from fastapi.testclient import TestClient

from fish_worker.audio.reference import decode_audio_file, decode_reference_audio, reference_bytes
from fish_worker.errors import JobInputError
from fish_worker.server.app import create_app
from helpers import rms

pytestmark = pytest.mark.timeout(180)

RATE = 44100  # the codec's
LONE = "\ud800"


def tone(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def soundfile_bytes(fmt: str, subtype: str, rate: int, channels: int, seconds: float = 1.0) -> bytes:
    mono = tone(seconds, rate)
    buf = io.BytesIO()
    sf.write(buf, np.stack([mono] * channels, axis=1), rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def pyav_bytes(container: str, codec: str, rate: int, channels: int, seconds: float = 1.0) -> bytes:
    """A file FFmpeg writes (WebM/Opus, M4A/AAC, ADTS AAC), as browsers and phones send them."""
    layout = "mono" if channels == 1 else "stereo"
    mono = tone(seconds, rate)
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.stack([mono] * channels), format="fltp", layout=layout)
        frame.rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


# ---- formats ------------------------------------------------------------------------------------

FORMATS = [  # (name, file maker, source rate, channels, lossless)
    ("wav-pcm16", lambda r, c: soundfile_bytes("WAV", "PCM_16", r, c), 16000, 1, True),
    ("wav-float-stereo", lambda r, c: soundfile_bytes("WAV", "FLOAT", r, c), 96000, 2, True),
    ("wav-24bit-6ch", lambda r, c: soundfile_bytes("WAV", "PCM_24", r, c), 44100, 6, True),
    ("wav-u8", lambda r, c: soundfile_bytes("WAV", "PCM_U8", r, c), 8000, 1, False),
    ("aiff", lambda r, c: soundfile_bytes("AIFF", "PCM_16", r, c), 22050, 1, True),
    ("flac", lambda r, c: soundfile_bytes("FLAC", "PCM_16", r, c), 48000, 2, True),
    ("mp3", lambda r, c: soundfile_bytes("MP3", "MPEG_LAYER_III", r, c), 44100, 2, False),
    ("mp3-24k", lambda r, c: soundfile_bytes("MP3", "MPEG_LAYER_III", r, c), 24000, 1, False),
    ("ogg-vorbis", lambda r, c: soundfile_bytes("OGG", "VORBIS", r, c), 32000, 2, False),
    ("ogg-opus", lambda r, c: soundfile_bytes("OGG", "OPUS", r, c), 48000, 1, False),
    ("webm-opus", lambda r, c: pyav_bytes("webm", "libopus", r, c), 48000, 2, False),
    ("m4a-aac", lambda r, c: pyav_bytes("ipod", "aac", r, c), 44100, 2, False),
    ("mp4-aac-16k", lambda r, c: pyav_bytes("mp4", "aac", r, c), 16000, 1, False),
    ("adts-aac", lambda r, c: pyav_bytes("adts", "aac", r, c), 22050, 1, False),
]


@pytest.mark.parametrize(
    ("maker", "rate", "channels", "lossless"), [f[1:] for f in FORMATS], ids=[f[0] for f in FORMATS]
)
def test_every_format_decodes_to_mono_at_the_codec_rate(maker, rate, channels, lossless):
    audio = decode_reference_audio(maker(rate, channels), RATE, max_seconds=5.0, max_bytes=1 << 24)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) / RATE - 1.0) < 0.1, len(audio) / RATE  # encoder padding is a few ms
    assert rms(audio) == pytest.approx(rms(tone(1.0, RATE)), rel=0.02 if lossless else 0.2)
    if lossless and rate == RATE:  # same rate, no codec loss: the very samples, to 16-bit rounding
        np.testing.assert_allclose(audio, tone(1.0, RATE), atol=1e-4)


@pytest.mark.parametrize(("rate", "channels"), [(16000, 1), (48000, 2), (22050, 2)])
def test_wav_decodes_to_the_same_samples_as_reading_it_whole(rate, channels):
    """Streaming (PyAV + soxr.ResampleStream) gives what a whole read + one soxr call gave before,
    so a voice encoded from a WAV clip has the same codes as it had."""
    data = soundfile_bytes("WAV", "PCM_16", rate, channels, seconds=2.0)
    whole, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    expected = soxr.resample(whole.mean(axis=1), rate, RATE, quality="HQ").astype(np.float32)
    np.testing.assert_array_equal(decode_audio_file(data, RATE, 5.0), np.clip(expected, -1, 1))


def test_channels_are_averaged_not_summed():
    left = tone(1.0, RATE)
    audio = decode_audio_file(wav_bytes(np.stack([left, np.zeros_like(left)], axis=1), RATE), RATE, 5.0)
    assert rms(audio) == pytest.approx(rms(left) / 2, rel=0.01)


def test_too_many_channels_are_refused_before_decoding():
    with pytest.raises(JobInputError, match=r"^reference_audio: has 33 channels; at most 32 are accepted$"):
        decode_audio_file(soundfile_bytes("WAV", "PCM_16", 8000, 33, seconds=0.1), RATE, 5.0)


@pytest.mark.parametrize(("name", "maker", "rate", "channels"), [f[:4] for f in FORMATS], ids=[f[0] for f in FORMATS])
def test_damaged_files_are_refused_or_read_never_an_other_error(name, maker, rate, channels):
    """Bytes flipped, files cut short, headers overwritten: a clip or a JobInputError, nothing else."""
    rng = random.Random(name)
    data = maker(rate, channels)
    for _ in range(25):
        damaged = bytearray(data)
        kind = rng.randrange(3)
        if kind == 0:
            for _ in range(rng.randrange(1, 20)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        elif kind == 1:
            damaged = damaged[: rng.randrange(len(damaged))]
        else:
            at = rng.randrange(min(200, len(damaged)))
            damaged[at : at + 4] = rng.randbytes(4)
        try:
            audio = decode_audio_file(bytes(damaged), RATE, 5.0)
        except JobInputError as exc:
            assert str(exc).startswith("reference_audio: "), exc
        else:
            assert audio.dtype == np.float32 and np.isfinite(audio).all() and np.abs(audio).max() <= 1.0


def test_containers_that_are_not_audio_files_are_refused_before_their_header_is_read():
    playlist = b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n"
    au = soundfile_bytes("AU", "PCM_16", 16000, 1)  # readable by FFmpeg, but not a demuxer we allow
    for data in (playlist, au, b"RIFFjunkjunk", b"hello, not audio" * 10):
        with pytest.raises(JobInputError, match=r"^reference_audio: is not a readable audio file \(WAV, FLAC"):
            decode_audio_file(data, RATE, 5.0)


# ---- decompression bombs: the limit is checked while decoding ---------------------------------------------


def constant_flac(seconds: float, rate: int = RATE, state_length: bool = True) -> bytes:
    """A tiny FLAC holding `seconds` of one value; without `state_length` its header says 'unknown length'."""
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", rate, 1, format="FLAC", subtype="PCM_16") as f:
        block = np.full(rate * 10, 0.25, dtype=np.float32)
        for _ in range(int(seconds // 10)):
            f.write(block)
    data = bytearray(buf.getvalue())
    if not state_length:  # STREAMINFO's 36-bit total-samples field (bytes 18-25 hold it in their low bits)
        packed = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)
        data[18:26] = packed.to_bytes(8, "big")
    return bytes(data)


def peak_traced_bytes(fn) -> tuple[int, Exception | None]:
    """Peak of Python/numpy allocations while fn runs (FFmpeg's own frame buffers are one frame at a time)."""
    tracemalloc.start()
    try:
        fn()
        error = None
    except JobInputError as exc:
        error = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, error


MAX_S = 5.0
BUDGET = 2 * int(MAX_S * RATE) * 4 + (2 << 20)  # the limit's worth of float32 samples (twice: concat) + 2 MB


def test_a_bomb_that_states_its_length_is_refused_before_decoding():
    bomb = constant_flac(600)  # 10 minutes of one value: ~85 kB
    assert len(bomb) < 100_000
    peak, error = peak_traced_bytes(lambda: decode_audio_file(bomb, RATE, MAX_S))
    assert str(error) == "reference_audio: is 600.0 s long, the limit is 5 s"
    assert peak < BUDGET, peak


def test_a_bomb_that_hides_its_length_is_stopped_at_the_limit():
    bomb = constant_flac(600, state_length=False)  # decoding it whole would hold 106 MB of float32
    peak, error = peak_traced_bytes(lambda: decode_audio_file(bomb, RATE, MAX_S))
    assert str(error) == "reference_audio: is longer than the limit of 5 s"
    assert peak < BUDGET, peak


def test_a_long_mp3_is_refused_by_its_stated_length():
    started = time.perf_counter()
    long_mp3 = soundfile_bytes("MP3", "MPEG_LAYER_III", 8000, 1, seconds=40.0)
    with pytest.raises(JobInputError, match=r"^reference_audio: is 40\.\d s long, the limit is 5 s$"):
        decode_audio_file(long_mp3, RATE, MAX_S)
    assert time.perf_counter() - started < 60  # bounded: not the whole file decoded at a high rate


def test_a_clip_at_the_limit_stays_within_the_budget():
    clip = soundfile_bytes("FLAC", "PCM_16", 96000, 2, seconds=MAX_S)  # resampled 96 kHz stereo → 44.1 kHz mono
    peak, error = peak_traced_bytes(lambda: decode_audio_file(clip, RATE, MAX_S))
    assert error is None
    assert peak < BUDGET + int(MAX_S * 96000) * 2 * 2, peak  # + the file's own bytes, held by the caller


# ---- zero-size and other unusable clips ---------------------------------------------------------


def one_frame_96k() -> bytes:
    return wav_bytes(np.array([0.5], np.float32), 96000)  # resampled to 44.1 kHz: no sample at all


def claims_2ghz() -> bytes:
    data = bytearray(wav_bytes(tone(0.5, 16000), 16000))
    struct.pack_into("<II", data, 24, 2_000_000_000, 4_000_000_000)  # fmt chunk: sample rate, byte rate
    return bytes(data)


ZERO_SIZE = [
    (one_frame_96k(), "contains no samples"),
    (claims_2ghz(), "has a sample rate of 2000000000 Hz; 1000-768000 Hz are accepted"),
    (wav_bytes(np.zeros(0, np.float32), 16000), "contains no samples"),
    (b"", "is empty"),
]


@pytest.mark.parametrize(("data", "problem"), ZERO_SIZE, ids=["1-frame-96k", "2-GHz", "0-frames", "0-bytes"])
def test_zero_size_clips_are_refused_naming_the_field(data, problem):
    with pytest.raises(JobInputError) as refused:
        decode_reference_audio(data, RATE, MAX_S, 1 << 24, field="voices[0].audio")
    assert str(refused.value) == f"voices[0].audio: {problem}"


def test_too_many_bytes_are_refused_before_decoding():
    with pytest.raises(JobInputError, match=r"^reference_audio: is larger than 1 MB$"):
        reference_bytes(b"x" * ((1 << 20) + 1), 1 << 20)
    with pytest.raises(JobInputError, match=r"^reference_audio: is larger than 1 MB$"):
        reference_bytes("A" * (3 << 20), 1 << 20)  # base64 text: refused by its length, not decoded


# ---- one base64 rule: line breaks and data: URIs ------------------------------------------------


@pytest.mark.parametrize(
    "wrap",
    [
        lambda b64: b64,
        lambda b64: "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76)) + "\n",  # MIME, as base64(1) writes
        lambda b64: "\r\n".join(b64[i : i + 64] for i in range(0, len(b64), 64)),  # PEM-style CRLF
        lambda b64: "data:audio/wav;base64," + b64,
        lambda b64: (
            "data:audio/x-wav;name=clip.wav;base64,\n" + "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76))
        ),
    ],
    ids=["plain", "mime-lines", "crlf-lines", "data-uri", "data-uri-wrapped"],
)
def test_base64_may_be_wrapped_or_a_data_uri(wrap):
    data = soundfile_bytes("WAV", "PCM_16", 16000, 1)
    assert reference_bytes(wrap(base64.b64encode(data).decode()), 1 << 24) == data


@pytest.mark.parametrize("text", ["not base64!!", "data:audio/wav;base64,@@@@", "é" * 8])
def test_bad_base64_says_so(text):
    with pytest.raises(JobInputError, match=r"^reference_audio: is not valid base64$"):
        reference_bytes(text, 1 << 24)


# ---- every door ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(runner, app_settings):
    return TestClient(create_app(runner, app_settings(auth_disabled=True)))


def live_finish(client, *events, text_frames: bool = False) -> dict:
    """Send `events` on /v1/tts/live (JSON text frames or msgpack); the first non-audio event back."""
    with client.websocket_connect("/v1/tts/live") as ws:
        for event in events:
            if text_frames:
                ws.send_text(json.dumps(event))  # json.dumps writes a lone surrogate as the escape "\ud800"
            else:
                ws.send_bytes(ormsgpack.packb(event))
        while (event := ormsgpack.unpackb(ws.receive_bytes()))["event"] == "audio":
            pass
        return event


UNUSABLE = [
    *ZERO_SIZE[:3],
    (constant_flac(600), "is 600.0 s long, the limit is 5 s"),
    (constant_flac(600, state_length=False), "is longer than the limit of 5 s"),
]


@pytest.mark.parametrize(
    ("data", "problem"), UNUSABLE, ids=["1-frame-96k", "2-GHz", "0-frames", "bomb-stated", "bomb-hidden"]
)
def test_every_door_answers_a_zero_size_clip_or_a_bomb_with_a_400_naming_the_field(client, runner, data, problem):
    b64 = base64.b64encode(data).decode()
    job = client.post("/run", json={"input": {"message": "Hi.", "max_tokens": 2, "reference_audio": b64}})
    assert job.status_code == 400 and job.json()["error"] == f"reference_audio: {problem}"
    save = client.post("/run", json={"input": {"action": "save_voice", "voice_id": "zero", "reference_audio": b64}})
    assert save.status_code == 400 and save.json()["error"] == f"reference_audio: {problem}"
    fish = {"text": "Hi.", "max_new_tokens": 2, "references": [{"audio": b64, "text": ""}]}
    as_json = client.post("/v1/tts", json=fish)
    assert as_json.status_code == 400 and as_json.json()["message"] == f"references[0].audio: {problem}"
    as_msgpack = client.post(
        "/v1/tts",
        content=ormsgpack.packb({**fish, "references": [{"audio": data}]}),
        headers={"Content-Type": "application/msgpack"},
    )
    assert as_msgpack.status_code == 400 and as_msgpack.json()["message"] == f"references[0].audio: {problem}"
    model = client.post("/model", data={"title": "zero"}, files=[("voices", ("clip.wav", data, "audio/wav"))])
    assert model.status_code == 400 and model.json()["message"] == f"voices[0].audio: {problem}"
    finish = live_finish(client, {"event": "start", "request": {**fish, "references": [{"audio": data}]}})
    assert finish == {"event": "finish", "reason": "error", "message": f"references[0].audio: {problem}"}
    assert runner.service.generator.free_slots == runner.service.max_concurrency  # nothing left holding a slot


def test_the_fish_doors_take_wrapped_base64_and_data_uris(client, runner):
    data = soundfile_bytes("FLAC", "PCM_16", 22050, 1, seconds=0.5)
    wrapped = "data:audio/flac;base64," + base64.encodebytes(data).decode()  # 76-character lines
    job = client.post(
        "/run", json={"input": {"message": "Hi.", "max_tokens": 2, "seed": 1, "reference_audio": wrapped}}
    )
    assert job.status_code == 200, job.text
    hits = runner.service.voices.cache.hits
    fish = {"text": "Hi.", "format": "pcm", "max_new_tokens": 2, "references": [{"audio": wrapped, "text": ""}]}
    response = client.post("/v1/tts", json=fish)
    assert response.status_code == 200 and len(response.content) > 0
    assert runner.service.voices.cache.hits == hits + 1  # the same file, however it was written: one encoding


def test_fish_json_with_bad_base64_names_the_clip(client):
    response = client.post("/v1/tts", json={"text": "Hi.", "references": [{"audio": "not base64!!"}]})
    assert response.status_code == 400 and response.json()["message"] == (
        "references[0].audio: is not valid base64 (audio is bytes: base64 text in JSON)"
    )


# ---- lone surrogates on the Fish doors ------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"text": f"{LONE} hi there."}, "text: contains invalid unicode (lone surrogate) at position 0"),
        (
            {"text": "Hi.", "references": [{"audio": "UklGRg==", "text": f"ab{LONE}"}]},
            "references[0].text: contains invalid unicode (lone surrogate) at position 2",
        ),
        (
            {"text": "Hi.", "reference_id": LONE},
            "reference_id: contains invalid unicode (lone surrogate) at position 0",
        ),
        (
            {"text": "Hi.", f"x{LONE}": 1},
            "'x\\ud800': the field name contains invalid unicode (lone surrogate) at position 1",
        ),
    ],
)
def test_v1_tts_refuses_lone_surrogates_in_json(client, body, expected):
    response = client.post("/v1/tts", content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json() == {"status": 400, "message": expected}


def test_v1_tts_msgpack_cannot_carry_a_lone_surrogate(client):
    # msgpack strings are UTF-8; a surrogate's bytes (CESU-8 "\xed\xa0\x80") are not UTF-8.
    body = ormsgpack.packb({"text": "XYZ hi there."}).replace(b"XYZ", b"\xed\xa0\x80")
    response = client.post("/v1/tts", content=body, headers={"Content-Type": "application/msgpack"})
    assert response.status_code == 400 and response.json()["message"] == "body: is not valid msgpack"


def test_live_socket_ends_cleanly_on_a_lone_surrogate(client, runner):
    start = {"event": "start", "request": {"text": f"{LONE} hi there.", "format": "pcm", "max_new_tokens": 2}}
    assert live_finish(client, start, text_frames=True) == {
        "event": "finish",
        "reason": "error",
        "message": "text: contains invalid unicode (lone surrogate) at position 0",
    }
    start["request"]["text"] = ""
    finish = live_finish(
        client, start, {"event": "text", "text": f"Hello {LONE} there."}, {"event": "stop"}, text_frames=True
    )
    assert finish == {
        "event": "finish",
        "reason": "error",
        "message": "text: contains invalid unicode (lone surrogate) at position 6",
    }
    assert runner.service.generator.free_slots == runner.service.max_concurrency


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("title", "\\ud800 voice", "title: contains invalid unicode (lone surrogate) at position 0"),
        ("texts", "ab \\udfff", "texts[0]: contains invalid unicode (lone surrogate) at position 3"),
        ("description", "x\\ud800", "description: contains invalid unicode (lone surrogate) at position 1"),
        ("tags", "\\udfff", "tags[0]: contains invalid unicode (lone surrogate) at position 0"),
    ],
)
def test_post_model_refuses_lone_surrogates_a_form_charset_can_make(client, field, value, expected):
    # Starlette decodes form fields with the charset the client names; unicode_escape makes "\ud800".
    boundary = "b0undary"
    clip = soundfile_bytes("WAV", "PCM_16", 16000, 1, seconds=0.5)
    fields = {"title": "voice", field: value}
    body = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{text}\r\n'
        for name, text in fields.items()
    )
    body = (
        (
            body + f'--{boundary}\r\nContent-Disposition: form-data; name="voices"; filename="a.wav"\r\n'
            f"Content-Type: audio/wav\r\n\r\n"
        ).encode()
        + clip
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = client.post(
        "/model",
        content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}; charset=unicode_escape"},
    )
    assert response.status_code == 400 and response.json() == {"status": 400, "message": expected}
