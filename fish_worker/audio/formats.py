"""Output encoding of generated speech (mono float32, 44.1 kHz) into the API's `audio_format`s.

Formats and what the `audio` field carries:

    float  list of floats in [-1, 1] (the seed API's default)
    pcm16  base64 of raw little-endian int16 samples, no header
    wav    base64 of a WAV file (16-bit PCM)
    flac   base64 of a FLAC file (16-bit)
    mp3    base64 of an MP3 file (128 kbit/s CBR)
    opus   base64 of an Ogg Opus file, at 48 kHz (Opus has no 44.1 kHz mode; we resample with soxr)
    aac    base64 of an AAC-LC file in ADTS framing (64 kbit/s), by FFmpeg's encoder through PyAV
           (libsndfile cannot write AAC)

`encode_audio` encodes a whole clip at once. `StreamEncoder` encodes a clip that arrives in pieces:
each `feed()`/`close()` payload, base64-decoded, is the next stretch of bytes of ONE stream, so a
client appending them gets one valid file; headers are written once, never per chunk. Since a stream's
length is unknown when its header goes out, streamed files carry "length unknown" headers:

    wav   RIFF and data sizes are 0xFFFFFFFF, the usual convention for WAV written to a pipe
          (ffmpeg, libsndfile, browsers and Python's `wave` read to the end of the data).
    flac  STREAMINFO has total samples 0 ("unknown") and no MD5, as FLAC written to a pipe has.
          ffmpeg/libFLAC/browsers decode it; libsndfile (hence `soundfile.read`) refuses
          unknown-length FLAC, so read such a stream with ffmpeg/PyAV or buffer it and use one-shot.
    mp3   the first frame is the encoder's (blank) Info-tag placeholder, never filled in, so a decoder
          sees ~26 ms of extra leading silence plus the usual encoder delay/padding. CBR is used so
          decoders that estimate duration from the first frame's bitrate get it right.
    opus  nothing special: Ogg pages are written strictly in order.
    aac   nothing special: ADTS has no file header, every frame carries its own, so a stream and a
          whole file are the same bytes. The encoder's priming (1024 samples) and the padding of the
          last frame stay in: ADTS has no field to trim them, as with any .aac file.

RunPod limits what a job may return; `split_payload` keeps stream chunks within them (`jobs.outputs.within_result_limit` whole results).
"""

from __future__ import annotations

import base64
import io
import json
import struct
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args

import av
import numpy as np
import soundfile as sf
import soxr

from fish_worker.errors import ErrorKind, WorkerError

AudioFormat = Literal["float", "pcm16", "wav", "flac", "mp3", "opus", "aac"]
AUDIO_FORMATS: tuple[str, ...] = get_args(AudioFormat)

# Fish Speech's codec (DAC) decodes at 44.1 kHz.
MODEL_SAMPLE_RATE = 44_100
OPUS_SAMPLE_RATE = 48_000

# Media types for serving the raw bytes over HTTP (e.g. an OpenAI-style speech endpoint).
MEDIA_TYPES: dict[str, str] = {
    "float": "application/json",
    "pcm16": "audio/L16",
    "wav": "audio/wav",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
}

# libsndfile maps compression_level linearly onto the MPEG version's bitrate range for MP3 (0: the
# highest), and onto 256..6 kbit/s for Opus. 128 kbit/s MP3 is plenty for mono speech.
DEFAULT_MP3_KBPS = 128
# Bitrate ranges (kbit/s) of MP3 by sample rate: MPEG-1 (32-48 kHz), MPEG-2 (16-24), MPEG-2.5 (8-12).
_MP3_KBPS_RANGE = {
    32000: (320, 32),
    44100: (320, 32),
    48000: (320, 32),
    16000: (160, 8),
    22050: (160, 8),
    24000: (160, 8),
    8000: (64, 8),
    11025: (64, 8),
    12000: (64, 8),
}
_OPUS_KBPS_RANGE = (256, 6)
# AAC-LC at 64 kbit/s is transparent enough for mono speech (OpenAI does not say what it uses).
DEFAULT_AAC_KBPS = 64
# Rates MPEG-4 AAC can carry within the API's 8-48 kHz (FFmpeg's encoder refuses others): MP3's set.
AAC_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
# The formats that carry only some rates, and those rates: the one rule every door checks a
# sample_rate against (jobs/output_adjustments.py). Opus is always 48 kHz; the rest take any rate.
MP3_SAMPLE_RATES = tuple(sorted(_MP3_KBPS_RANGE))
FIXED_SAMPLE_RATES: dict[str, tuple[int, ...]] = {"mp3": MP3_SAMPLE_RATES, "aac": AAC_SAMPLE_RATES}


def mp3_compression_level(kbps: int, sample_rate: int) -> float:
    """libsndfile's compression_level for a CBR MP3 of `kbps` (capped at what the rate allows)."""
    if sample_rate not in _MP3_KBPS_RANGE:
        raise ValueError(
            f"mp3 cannot carry {sample_rate} Hz; use one of {', '.join(map(str, sorted(_MP3_KBPS_RANGE)))}"
        )
    high, low = _MP3_KBPS_RANGE[sample_rate]
    return min(max((high - kbps) / (high - low), 0.0), 0.99)  # 1.0 is refused at some rates


def opus_compression_level(kbps: int) -> float:
    high, low = _OPUS_KBPS_RANGE
    return min(max((high - kbps) / (high - low), 0.0), 1.0)


# RunPod's documented limits, in bytes of JSON (MB taken as 10^6, the conservative reading).
STREAM_CHUNK_LIMIT_BYTES = 1_000_000
RESULT_LIMIT_BYTES: dict[str, int] = {"run": 10_000_000, "runsync": 20_000_000}
# Room left in a streamed chunk for the fields around `audio` (audio_format, sample_rate, index...).
STREAM_ENVELOPE_ALLOWANCE_BYTES = 4_096
# "float" audio is rounded to this many decimals: a step of 1e-5 (about -100 dBFS, finer than 16-bit
# PCM's 3e-5), and JSON text of at most 8 characters per sample ("-0.12345") instead of ~20 for the
# raw float32 value, so a whole float result holds ~2.5x more seconds within RunPod's limits.
FLOAT_DECIMALS = 5
# Longest JSON text of one rounded sample ("-0.12345"), plus the ", " separator json.dumps puts
# between items (RunPod's SDK serializes results with json.dumps' default separators).
MAX_JSON_BYTES_PER_FLOAT = 10

Payload = Union[str, list[float]]


@dataclass(frozen=True)
class _Container:
    """How soundfile writes one binary format."""

    format: str
    subtype: str
    options: dict[str, Any] = field(default_factory=dict)


# Containers soundfile writes (pcm16 is plain numpy; see to_pcm16).
_CONTAINERS: dict[str, _Container] = {
    "wav": _Container("WAV", "PCM_16"),
    "flac": _Container("FLAC", "PCM_16"),
    "mp3": _Container(
        "MP3",
        "MPEG_LAYER_III",
        {"bitrate_mode": "CONSTANT", "compression_level": mp3_compression_level(DEFAULT_MP3_KBPS, MODEL_SAMPLE_RATE)},
    ),
    "opus": _Container("OGG", "OPUS"),
}


def validate_audio_format(fmt: str) -> AudioFormat:
    if fmt not in AUDIO_FORMATS:
        raise ValueError(f"audio_format must be one of {', '.join(AUDIO_FORMATS)}; got {fmt!r}")
    return fmt  # type: ignore[return-value]


def encoded_sample_rate(fmt: str, sample_rate: int = MODEL_SAMPLE_RATE) -> int:
    """Sample rate of the encoded audio (what the output's `sample_rate` field reports)."""
    return OPUS_SAMPLE_RATE if validate_audio_format(fmt) == "opus" else sample_rate


def clean_samples(samples: Any) -> np.ndarray:
    """Mono float32 in [-1, 1]: NaN becomes silence, anything louder is clipped, not wrapped."""
    audio = np.asarray(samples, dtype=np.float32)
    if audio.ndim == 2 and 1 in audio.shape:
        audio = audio.reshape(-1)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio (1-D samples); got shape {audio.shape}")
    audio = np.nan_to_num(audio, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(audio, -1.0, 1.0)


def to_pcm16(samples: Any) -> np.ndarray:
    """16-bit samples as every 16-bit format stores them: round(x * 32768), clipped at 32767.

    Done here once rather than by libsndfile, whose float->int16 conversion differs between
    containers (raw/WAV and FLAC round differently): pcm16, wav and flac then hold the very
    same integers, each within 1/32768 of the input read back the usual way (int / 32768).
    """
    scaled = np.round(clean_samples(samples).astype(np.float64) * 32768)
    return np.clip(scaled, -32768, 32767).astype("<i2")


def _writer_options(fmt: str, sample_rate: int, bitrate_kbps: int | None) -> dict[str, Any]:
    """soundfile options of `fmt` at the encoded `sample_rate`; `bitrate_kbps` for mp3/opus (None: default)."""
    options = dict(_CONTAINERS[fmt].options)
    if fmt == "mp3":
        options["compression_level"] = mp3_compression_level(bitrate_kbps or DEFAULT_MP3_KBPS, sample_rate)
    elif fmt == "opus" and bitrate_kbps is not None:
        options["compression_level"] = opus_compression_level(bitrate_kbps)
    return options


def encode_audio_bytes(samples: Any, fmt: str, sample_rate: int = MODEL_SAMPLE_RATE) -> bytes:
    """Whole clip as the bytes of one file in `fmt` (any format but "float")."""
    fmt = validate_audio_format(fmt)
    if fmt == "float":
        raise ValueError('audio_format "float" has no byte encoding; use encode_audio')
    if fmt == "pcm16":
        return to_pcm16(samples).tobytes()
    if fmt == "aac":
        encoder = _AdtsEncoder(sample_rate)
        return encoder.write(clean_samples(samples)) + encoder.close()
    audio = _codec_input(fmt, clean_samples(samples))
    if fmt == "opus":
        audio = _resample_for_opus(soxr.resample(audio, sample_rate, OPUS_SAMPLE_RATE))
    container = _CONTAINERS[fmt]
    buffer = io.BytesIO()
    sf.write(
        buffer,
        audio,
        encoded_sample_rate(fmt, sample_rate),
        format=container.format,
        subtype=container.subtype,
        **_writer_options(fmt, encoded_sample_rate(fmt, sample_rate), None),
    )
    return buffer.getvalue()


def float_list(samples: Any) -> list[float]:
    """The "float" payload: clean samples rounded to FLOAT_DECIMALS (in float64, so each prints short)."""
    rounded: list[float] = np.round(clean_samples(samples).astype(np.float64), FLOAT_DECIMALS).tolist()
    return rounded


def encode_audio(samples: Any, fmt: str, sample_rate: int = MODEL_SAMPLE_RATE) -> Payload:
    """Whole clip as the `audio` field: a list of floats for "float", else base64 of the file."""
    if validate_audio_format(fmt) == "float":
        return float_list(samples)
    return _b64(encode_audio_bytes(samples, fmt, sample_rate))


def audio_result(samples: Any, fmt: str, sample_rate: int = MODEL_SAMPLE_RATE) -> dict[str, Any]:
    """The audio part of a job's output: `audio`, `audio_format`, `sample_rate`."""
    return {
        "audio": encode_audio(samples, fmt, sample_rate),
        "audio_format": fmt,
        "sample_rate": encoded_sample_rate(fmt, sample_rate),
    }


class StreamEncoder:
    """Encodes a clip that arrives in pieces into one continuous stream.

    `feed()` returns the payload for the samples given so far (it may be empty while an encoder
    buffers a frame: skip empty payloads), `close()` the rest. Payloads are lists of floats for
    "float" and base64 strings otherwise; decoding each and concatenating gives one valid file.
    """

    def __init__(self, fmt: str, sample_rate: int = MODEL_SAMPLE_RATE, bitrate_kbps: int | None = None) -> None:
        self.audio_format: AudioFormat = validate_audio_format(fmt)
        self.sample_rate = encoded_sample_rate(fmt, sample_rate)
        self._closed = False
        self._wav_header_sent = False
        self._resampler = None
        self._sink = None
        self._file = None
        self._aac = _AdtsEncoder(self.sample_rate, bitrate_kbps) if fmt == "aac" else None
        if fmt == "opus":
            self._resampler = soxr.ResampleStream(sample_rate, OPUS_SAMPLE_RATE, 1, dtype="float32")
        if fmt in ("flac", "mp3", "opus"):
            container = _CONTAINERS[fmt]
            self._sink = _ForwardOnlySink()
            self._file = sf.SoundFile(
                self._sink,
                "w",
                samplerate=self.sample_rate,
                channels=1,
                format=container.format,
                subtype=container.subtype,
                **_writer_options(fmt, self.sample_rate, bitrate_kbps),
            )

    def feed(self, samples: Any) -> Payload:
        if self.audio_format == "float":
            self._check_open()
            return float_list(samples)
        return _b64(self.feed_bytes(samples))

    def close(self) -> Payload:
        if self.audio_format == "float":
            self._closed = True
            return []
        return _b64(self.close_bytes())

    def feed_bytes(self, samples: Any) -> bytes:
        self._check_open()
        self._check_binary()
        if self.audio_format in ("pcm16", "wav"):
            # Header-less PCM is stateless, so each piece is encoded on its own.
            return self._wav_header() + to_pcm16(samples).tobytes()
        if self._aac is not None:
            return self._aac.write(clean_samples(samples))
        audio = _codec_input(self.audio_format, clean_samples(samples))
        if self._resampler is not None:
            audio = _resample_for_opus(self._resampler.resample_chunk(audio))
        file, sink = self._soundfile()
        file.write(audio)
        return sink.take()

    def close_bytes(self) -> bytes:
        self._check_binary()
        if self._closed:
            return b""
        self._closed = True
        if self.audio_format in ("pcm16", "wav"):
            return self._wav_header()  # a stream with no samples is still a valid (empty) WAV
        if self._aac is not None:
            return self._aac.close()
        file, sink = self._soundfile()
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            file.write(_resample_for_opus(tail))
        file.close()  # flushes the encoder's last frame and the end of the stream
        return sink.take()

    def _soundfile(self) -> tuple[sf.SoundFile, "_ForwardOnlySink"]:
        # libsndfile's writer: made in __init__ for exactly the formats the branches before it leave (flac, mp3, opus).
        assert self._file is not None and self._sink is not None, self.audio_format
        return self._file, self._sink

    def _wav_header(self) -> bytes:
        if self.audio_format != "wav" or self._wav_header_sent:
            return b""
        self._wav_header_sent = True
        return streaming_wav_header(self.sample_rate)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("StreamEncoder is closed")

    def _check_binary(self) -> None:
        if self.audio_format == "float":
            raise ValueError('audio_format "float" has no byte encoding; use feed()/close()')


def streaming_wav_header(sample_rate: int = MODEL_SAMPLE_RATE) -> bytes:
    """44-byte header of a mono 16-bit PCM WAV whose length is not known yet.

    RIFF and data chunk sizes are 0xFFFFFFFF (the maximum), as ffmpeg writes to a pipe; readers
    then take samples up to the end of the data.
    """
    unknown = 0xFFFFFFFF
    channels, bits = 1, 16
    block_align = channels * bits // 8
    fmt_chunk = struct.pack(
        "<4sIHHIIHH", b"fmt ", 16, 1, channels, sample_rate, sample_rate * block_align, block_align, bits
    )
    return struct.pack("<4sI4s", b"RIFF", unknown, b"WAVE") + fmt_chunk + struct.pack("<4sI", b"data", unknown)


class _ForwardOnlySink:
    """File-like object soundfile writes an encoded stream into; `take()` hands out the new bytes.

    Bytes already taken are gone (sent to the client). libsndfile seeks back when it closes a
    FLAC or MP3 file to fill in the length/MD5/Info tag at the start; those rewrites land in bytes
    already sent, so they are dropped and the stream keeps its "length unknown" header.
    """

    def __init__(self) -> None:
        self._pending = bytearray()
        self._taken = 0  # stream offset where _pending starts
        self._position = 0

    def write(self, data: Any) -> int:
        data = bytes(data)
        written = len(data)
        start = self._position - self._taken
        if start < 0:
            data = data[-start:]
            start = 0
        if start > len(self._pending):
            self._pending.extend(bytes(start - len(self._pending)))
        self._pending[start : start + len(data)] = data
        self._position += written
        return written

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            self._position = offset
        elif whence == io.SEEK_CUR:
            self._position += offset
        else:
            self._position = self._taken + len(self._pending) + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def read(self, size: int = -1) -> bytes:
        return b""  # libsndfile never reads back an encoded stream it is writing

    def take(self) -> bytes:
        out = bytes(self._pending)
        self._taken += len(out)
        self._pending.clear()
        return out


class _AdtsEncoder:
    """AAC-LC in ADTS framing by FFmpeg's native `aac` encoder (PyAV): `write()`/`close()` return the
    bytes of the frames completed so far (the encoder holds up to ~2 frames of 1024 samples back)."""

    def __init__(self, sample_rate: int, bitrate_kbps: int | None = None) -> None:
        if sample_rate not in AAC_SAMPLE_RATES:
            raise ValueError(f"aac cannot carry {sample_rate} Hz; use one of {', '.join(map(str, AAC_SAMPLE_RATES))}")
        self._sample_rate = sample_rate
        self._sink = _ForwardOnlySink()
        # flush_packets: each frame reaches the sink when muxed, not when FFmpeg's 32 kB buffer fills.
        self._container = av.open(self._sink, "w", format="adts", options={"flush_packets": "1"})
        self._stream = self._container.add_stream("aac", rate=sample_rate, layout="mono")
        self._stream.bit_rate = (bitrate_kbps or DEFAULT_AAC_KBPS) * 1000
        self._next_pts = 0

    def write(self, audio: np.ndarray) -> bytes:
        if len(audio):
            frame = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate, frame.pts = self._sample_rate, self._next_pts
            self._next_pts += len(audio)
            self._mux(frame)
        return self._sink.take()

    def close(self) -> bytes:
        self._mux(None)  # drains the encoder's held-back frames
        self._container.close()
        return self._sink.take()

    def _mux(self, frame: av.AudioFrame | None) -> None:
        for packet in self._stream.encode(frame):
            self._container.mux(packet)


def _codec_input(fmt: str, audio: np.ndarray) -> np.ndarray:
    # Lossless 16-bit containers get our integers; MP3/Opus encoders take float natively.
    return to_pcm16(audio) if fmt in ("wav", "flac") else audio


def _resample_for_opus(audio: np.ndarray) -> np.ndarray:
    # Resampling can overshoot full scale by a hair; keep the encoder's input in range.
    clipped: np.ndarray = np.clip(audio, -1.0, 1.0).astype(np.float32, copy=False)
    return clipped


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# ---- RunPod size limits -------------------------------------------------------------------------


class ResultTooLargeError(WorkerError, ValueError):
    """A job result is over what RunPod accepts for the route: TOO_LARGE."""

    kind = ErrorKind.TOO_LARGE

    def __init__(self, size: int, limit: int, route: str, estimated: bool = False) -> None:
        self.size, self.limit, self.route, self.estimated = size, limit, route, estimated
        # Estimated before synthesis, it is a rejection of the request: it names the field that fixes it.
        what = (
            f"audio_format: the result would be at least {size / 1e6:.1f} MB"
            if estimated
            else f"result is {size / 1e6:.1f} MB"
        )
        super().__init__(
            f"{what}, over RunPod's ~{limit / 1e6:.0f} MB limit for /{route}; "
            "ask for a compressed audio_format (mp3, opus, flac), use streaming, "
            "or configure an S3 bucket for large results"
        )


def json_size(obj: Any) -> int:
    """Bytes of `obj` as JSON, with json.dumps' default (roomier) separators."""
    return len(json.dumps(obj).encode("utf-8"))


def result_limit_bytes(route: Literal["run", "runsync"]) -> int:
    try:
        return RESULT_LIMIT_BYTES[route]
    except KeyError:
        raise ValueError(f"route must be one of {', '.join(RESULT_LIMIT_BYTES)}; got {route!r}") from None


def split_payload(
    payload: Payload,
    max_json_bytes: int = STREAM_CHUNK_LIMIT_BYTES - STREAM_ENVELOPE_ALLOWANCE_BYTES,
) -> list[Payload]:
    """Split one payload into pieces whose JSON is at most `max_json_bytes` each.

    Pieces keep the stream semantics: concatenating the float lists, or the base64-decoded bytes
    of the strings (cut on 4-character boundaries, so each piece decodes on its own), gives back
    the original. An empty payload gives no pieces.
    """
    if isinstance(payload, str):
        per_piece = (max_json_bytes - 2) // 4 * 4  # 2 for the JSON quotes; base64 needs no escapes
    else:
        per_piece = (max_json_bytes - 2) // MAX_JSON_BYTES_PER_FLOAT  # 2 for the brackets
    if per_piece <= 0:
        raise ValueError(f"max_json_bytes={max_json_bytes} is too small for any audio")
    return [payload[i : i + per_piece] for i in range(0, len(payload), per_piece)]
