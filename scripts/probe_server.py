"""Hostile-client probe: every door of a running server against the clients issue 23 found harmful.

    .venv/bin/python scripts/probe_server.py --base-url http://127.0.0.1:8000 --key KEY \\
        [--pid SERVER_PID] [--log SERVER_STDERR_FILE] [--short] [--doors seed-run,fish-live] [--cases surrogate]
    .venv/bin/python scripts/probe_server.py --start --short     # starts its own server on a tiny checkpoint

Cases, each run on every door where it applies (the table `DOORS`; a new door is one entry there):

  normal               the door's small request succeeds (the table itself is right)
  slow-reader          reads one byte a second: the server finishes or drops it within the send deadline
  never-reader         tiny receive buffer, never reads: its slot is freed within the send deadline
  mid-stream-hangup    closes after the first bytes of audio: the slot is freed
  abandoned            hangs up 1 s into a long request (/v2 run: cancels): generation stops within a few s
  flac-bomb, mp3-bomb  60 min FLAC of one value (~0.5 MB), 10 min MP3, in every audio field: refused, RSS bounded
  empty-wav, wav-1-frame-96k   zero-length and one-frame 96 kHz WAV in every audio field: refused
  nesting              `[` x 100000 as JSON, 100000-deep msgpack: refused
  surrogate            a lone surrogate ("\\ud800") in every string field: refused, naming the field
  headers-20k, headers-100k   oversized headers in one write: 431 (or 400)
  big-bodies           N concurrent bodies at the size limit: no 5xx, RSS growth within a budget

After every case: no 5xx, no traceback in the server's log (--log), every generation slot idle
(/v2/<id>/health) and a small job admitted (/run list_voices) within --slot-bound-s; memory cases
compare the server's peak RSS (/proc/PID/status VmHWM, reset through /proc/PID/clear_refs) with a
budget. Prints `door  case  PASS/FAIL  detail` per case and door; exits 1 on any FAIL.

Importable: `run_probe(ProbeConfig(...))` returns the results; `start_server(...)` starts a server
(`python -m fish_worker.server`) with short deadlines for the probe (tests/test_hostile_probe.py).
"""

from __future__ import annotations

import argparse
import base64
import copy
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import ormsgpack
import soundfile as sf
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    RejectConnection,
    Request,
    TextMessage,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # --start writes a tiny checkpoint with fish_worker's devtools

# ---- payloads --------------------------------------------------------------------------------------

SURROGATE = "\ud800 hi there."
# msgpack cannot carry a lone surrogate as text: the marker's UTF-8 bytes are swapped for a surrogate's
# (CESU) bytes of the same length after packing, so the str header stays right.
_MSGPACK_MARKER = "\u2603\u2603\u2603 hi there."
_MARKER_BYTES = "\u2603\u2603\u2603".encode()
_SURROGATE_BYTES = "\ud800\ud800\ud800".encode("utf-8", "surrogatepass")
LONG_TEXT = " ".join(f"Probe sentence number {i} keeps the model busy for a good while." for i in range(12))


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def good_clip() -> bytes:
    """Two seconds of a modulated tone at 16 kHz: a reference any door accepts."""
    t = np.arange(32_000) / 16_000
    return wav_bytes(0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) / 1.5, 16_000)


def _constant_file(path: Path, seconds: int, rate: int, audio_format: str, subtype: str) -> bytes:
    if not path.exists():
        part = path.with_suffix(f".{os.getpid()}.part")  # several probes may fill one cache at once
        block = np.full(rate * 10, 0.25, dtype=np.float32)
        with sf.SoundFile(part, "w", rate, 1, format=audio_format, subtype=subtype) as out:
            for _ in range(seconds // 10):
                out.write(block)
        part.rename(path)
    return path.read_bytes()


def flac_bomb(cache: Path) -> bytes:
    """60 minutes of one value at 44.1 kHz: ~0.5 MB of FLAC, 159 M samples decoded."""
    return _constant_file(cache / "bomb-60min.flac", 3600, 44_100, "FLAC", "PCM_16")


def mp3_bomb(cache: Path, rate: int) -> bytes:
    """10 minutes of one value: ~0.8 MB of MP3 at 22.05 kHz (short mode), 2.4 MB at 44.1 kHz."""
    return _constant_file(cache / f"bomb-10min-{rate}.mp3", 600, rate, "MP3", "MPEG_LAYER_III")


def bad_clips(cache: Path, mp3_rate: int) -> dict[str, Callable[[], bytes]]:
    """Audio-field payloads by case name (made when first used)."""
    return {  # the smaller bomb first: memory the larger one leaves in the allocator would hide its growth
        "mp3-bomb": lambda: mp3_bomb(cache, mp3_rate),
        "flac-bomb": lambda: flac_bomb(cache),
        "empty-wav": lambda: wav_bytes(np.zeros(0, dtype=np.float32), 16_000),
        "wav-1-frame-96k": lambda: wav_bytes(np.full(1, 0.25, dtype=np.float32), 96_000),
    }


MEMORY_CASES = {"flac-bomb", "mp3-bomb"}


# ---- documents: nested dicts, set by path, encoded per door -------------------------------------------

PathT = tuple[str | int, ...]


def with_value(doc: dict[str, Any], path: PathT, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()  # JSON carries audio as base64 text
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def encode_json(doc: Any) -> bytes:
    return json.dumps(_jsonable(doc)).encode()  # ensure_ascii: a lone surrogate becomes the "\ud800" escape


def _marked(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(SURROGATE, _MSGPACK_MARKER)
    if isinstance(value, dict):
        return {k: _marked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_marked(v) for v in value]
    return value


def encode_msgpack(doc: Any) -> bytes:
    return ormsgpack.packb(_marked(doc)).replace(_MARKER_BYTES, _SURROGATE_BYTES)


def encode_multipart(doc: dict[str, Any], boundary: str) -> bytes:
    """Form fields (a list: one part each); bytes are files. Text is UTF-8, a lone surrogate as its raw bytes."""
    parts = []
    for name, values in doc.items():
        for value in values if isinstance(values, list) else [values]:
            if isinstance(value, bytes):
                head, data = f'name="{name}"; filename="clip.wav"\r\nContent-Type: application/octet-stream', value
            else:
                head, data = f'name="{name}"', str(value).encode("utf-8", "surrogatepass")
            parts.append(f"--{boundary}\r\nContent-Disposition: form-data; {head}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


@dataclass(frozen=True)
class Field:
    """A field of a door's document: where it is, which document it goes in, and names its error may use."""

    path: PathT
    base: str = "normal"  # key of Door.docs
    names: tuple[str, ...] = ()  # the error must mention one of these (default: the path's last name)

    @property
    def label(self) -> str:
        return ".".join(str(p) for p in self.path)

    def error_names(self) -> tuple[str, ...]:
        return self.names or (next(str(p) for p in reversed(self.path) if isinstance(p, str)),)


@dataclass(frozen=True)
class Door:
    """One way in. `docs` holds its documents: "normal" (small, fast), "long" (many seconds of audio,
    if it generates), "clip" (with a good reference clip, if it takes audio)."""

    name: str
    path: str
    encoding: str  # json | msgpack | multipart | ws
    docs: dict[str, dict[str, Any]]
    text_fields: tuple[Field, ...] = ()
    audio_fields: tuple[Field, ...] = ()
    streams: bool = False  # the answer is sent while it is generated
    answer: str = "http"  # http: the status says it | v2-sync: 200 with a RunPod status | v2-job: polled | ws
    abandon: str | None = None  # "hangup" or "cancel" (v2 run): how a client gives up a long request

    @property
    def generates(self) -> bool:
        return "long" in self.docs


V2 = "/v2/probe"  # RunPod's /v2/{endpoint_id}: any id is this server's one endpoint


def _seed(**extra: Any) -> dict[str, Any]:
    return {"input": {"message": "Hi there.", "max_tokens": 4, "seed": 1, **extra}}


def _seed_long(**extra: Any) -> dict[str, Any]:
    return {"input": {"message": LONG_TEXT, "max_tokens": 1000, "seed": 1, **extra}}


SEED_TEXT = tuple(
    Field(("input", name))
    for name in ("message", "reference_text", "voice_id", "conversation_id", "system_prompt", "audio_format", "mode")
) + (Field(("webhook",)),)  # RunPod's extras beside `input`: accepted and ignored, but text all the same
SEED_AUDIO = (Field(("input", "reference_audio"), base="clip"),)


def _fish(**extra: Any) -> dict[str, Any]:
    return {"text": "Hi there.", "format": "pcm", "max_new_tokens": 4, "temperature": 0.7, **extra}


FISH_TEXT = (
    Field(("text",)),
    Field(("reference_id",)),
    Field(("format",)),
    Field(("latency",)),
    Field(("references", 0, "text"), base="clip", names=("references", "text")),
)
FISH_AUDIO = (Field(("references", 0, "audio"), base="clip", names=("references", "audio")),)


def build_doors(clip: bytes) -> list[Door]:
    seed_docs = {"normal": _seed(), "clip": _seed(reference_audio=clip, reference_text="A steady tone.")}
    fish_docs = {
        "normal": _fish(),
        "long": _fish(text=LONG_TEXT, max_new_tokens=1000, chunk_length=100),
        "clip": _fish(references=[{"audio": clip, "text": "A steady tone."}]),
    }
    voice_message = {"input": {"audio": clip, "language": "en", "mode": "tts", "max_tokens": 4, "seed": 1}}
    live_docs = {name: {"request": {**doc, "text": ""}, "texts": [doc["text"]]} for name, doc in fish_docs.items()}
    openai = {
        "model": "tts-1",
        "input": "Hi there.",
        "voice": "alloy",
        "response_format": "wav",
        "max_tokens": 4,
        "seed": 1,
    }
    return [
        Door(
            "seed-run",
            "/run",
            "json",
            {**seed_docs, "long": _seed_long(audio_format="mp3")},
            SEED_TEXT,
            SEED_AUDIO,
            abandon="hangup",
        ),
        Door(
            "seed-run-stream",
            "/run",
            "json",
            {
                "normal": _seed(stream=True),
                "long": _seed_long(stream=True, audio_format="float"),
                "clip": {"input": {**seed_docs["clip"]["input"], "stream": True}},
            },
            SEED_TEXT,
            SEED_AUDIO,
            streams=True,
            abandon="hangup",
        ),
        Door(
            "seed-save-voice",
            "/run",
            "json",
            {
                "normal": {
                    "input": {
                        "action": "save_voice",
                        "voice_id": "probe-voice",
                        "reference_audio": clip,
                        "reference_text": "A steady tone.",
                        "overwrite": True,
                    }
                }
            },
            (Field(("input", "voice_id")), Field(("input", "reference_text"))),
            (Field(("input", "reference_audio")),),
        ),
        # Speech in (a voice message as the job's input, the transcribe action): the server has a tiny Whisper.
        Door(
            "seed-voice-message",
            "/run",
            "json",
            {"normal": voice_message, "clip": voice_message},
            (Field(("input", "language")), Field(("input", "mode"))),
            (Field(("input", "audio"), base="clip"),),
        ),
        Door(
            "seed-transcribe",
            "/run",
            "json",
            {"normal": {"input": {"action": "transcribe", "audio": clip, "language": "en"}}},
            (Field(("input", "language")),),
            (Field(("input", "audio")),),
        ),
        # The transcription doors (OpenAI's multipart form, Fish's ASRRequest in JSON and msgpack).
        Door(
            "openai-transcribe",
            "/v1/audio/transcriptions",
            "multipart",
            {
                "normal": {
                    "file": clip,
                    "model": "whisper-1",
                    "language": "en",
                    "response_format": "verbose_json",
                    "prompt": "A tone.",
                }
            },
            tuple(Field((name,)) for name in ("model", "language", "prompt", "response_format")),
            (Field(("file",)),),
        ),
        Door(
            "fish-asr-json",
            "/v1/asr",
            "json",
            {"normal": {"audio": clip, "language": "en"}},
            (Field(("language",)),),
            (Field(("audio",)),),
        ),
        Door(
            "fish-asr-msgpack",
            "/v1/asr",
            "msgpack",
            {"normal": {"audio": clip, "language": "en"}},
            (Field(("language",)),),
            (Field(("audio",)),),
        ),
        Door(
            "v2-runsync",
            f"{V2}/runsync",
            "json",
            {**seed_docs, "long": _seed_long(audio_format="mp3")},
            SEED_TEXT,
            SEED_AUDIO,
            answer="v2-sync",
        ),
        Door(
            "v2-run",
            f"{V2}/run",
            "json",
            {**seed_docs, "long": _seed_long(stream=True, audio_format="mp3")},
            SEED_TEXT,
            SEED_AUDIO,
            answer="v2-job",
            abandon="cancel",
        ),
        Door(
            "openai-speech",
            "/v1/audio/speech",
            "json",
            {"normal": openai, "long": {**openai, "input": LONG_TEXT, "max_tokens": 1000}},
            tuple(Field((name,)) for name in ("input", "voice", "model", "instructions", "response_format")),
            abandon="hangup",
        ),
        Door(
            "openai-speech-stream",
            "/v1/audio/speech",
            "json",
            {
                "normal": {**openai, "stream": True},
                "long": {**openai, "input": LONG_TEXT, "max_tokens": 1000, "stream": True, "response_format": "pcm"},
            },
            tuple(Field((name,)) for name in ("input", "voice", "model", "instructions")),
            streams=True,
            abandon="hangup",
        ),
        Door("fish-tts-json", "/v1/tts", "json", fish_docs, FISH_TEXT, FISH_AUDIO, streams=True, abandon="hangup"),
        Door(
            "fish-tts-msgpack", "/v1/tts", "msgpack", fish_docs, FISH_TEXT, FISH_AUDIO, streams=True, abandon="hangup"
        ),
        Door(
            "fish-model",
            "/model",
            "multipart",
            {
                "normal": {
                    "title": "probe voice",
                    "voices": [clip],
                    "texts": ["A steady tone."],
                    "description": "",
                    "tags": ["probe"],
                }
            },
            (Field(("title",)), Field(("texts", 0)), Field(("description",)), Field(("tags", 0))),
            (Field(("voices", 0), names=("voices",)),),
        ),
        Door(
            "fish-live",
            "/v1/tts/live",
            "ws",
            live_docs,
            tuple(Field(("request",) + f.path, f.base, f.names) for f in FISH_TEXT if f.path != ("format",))
            + (Field(("texts", 0), names=("text",)),),
            tuple(Field(("request",) + f.path, f.base, f.names) for f in FISH_AUDIO),
            streams=True,
            answer="ws",
        ),
    ]


DOOR_NAMES = tuple(door.name for door in build_doors(b""))


# ---- configuration and results -------------------------------------------------------------------


@dataclass
class ProbeConfig:
    base_url: str
    key: str
    pid: int | None = None  # the server's process: memory cases read its RSS
    log_path: Path | None = None  # the server's stderr: a traceback there fails the case
    short: bool = True
    send_timeout_s: float = 30.0  # the server's send deadline (FISH_SEND_TIMEOUT_S)
    slot_bound_s: float | None = None  # after a case, slots free within this (default: send deadline + 5 s)
    stop_bound_s: float = 4.0  # an abandoned request's generation stops within this
    # A client that stops reading is only noticed once the buffers between it and the server are full:
    # a never/slow reader's slot must be free within this long for them to fill + the slot bound.
    fill_s: float = 5.0
    memory_budget_mb: float = 100.0  # peak RSS growth allowed by one decompression bomb
    # ... by the concurrent maximal bodies, beyond what one alone left: 20 bodies to a server reading one
    # at a time (PROBE_SERVER_ENV's FISH_BODY_BUDGET_BYTES) measured +0-491 MB here, to one reading all
    # at once +223-1184 MB.
    bodies_budget_mb: float = 400.0
    max_body_bytes: int = -(-16 * 1024 * 1024 // 3) * 4 + 1024 * 1024  # FISH_MAX_BODY_BYTES (its default)
    concurrent_bodies: int | None = None  # default: 20 short, 30 long
    cache_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "fish-probe-payloads")
    doors: tuple[str, ...] = ()  # only these (default: all)
    cases: tuple[str, ...] = ()  # only cases whose name starts with one of these
    out: Callable[[str], None] = print

    @property
    def slot_bound(self) -> float:
        return self.slot_bound_s if self.slot_bound_s is not None else self.send_timeout_s + 5.0

    @property
    def host_port(self) -> tuple[str, int]:
        url = urlsplit(self.base_url)
        return url.hostname or "127.0.0.1", url.port or 80


@dataclass
class Outcome:
    ok: bool
    detail: str
    held: list[Any] = field(default_factory=list)  # sockets kept open through the slot check, closed after
    slot_bound_s: float | None = None  # this case's bound for the slot check (default: the config's)
    rss_before_kib: int | None = None  # a memory case's own baseline, taken after its warm-up


@dataclass(frozen=True)
class Result:
    door: str
    case: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{self.door:<21} {self.case:<42} {'PASS' if self.ok else 'FAIL'}  {self.detail}"


# ---- the server as seen from outside --------------------------------------------------------------


class ServerWatch:
    """The server's log (new lines since the last look) and memory (/proc)."""

    def __init__(self, pid: int | None, log_path: Path | None) -> None:
        self.pid, self.log_path = pid, log_path
        self._offset = log_path.stat().st_size if log_path and log_path.exists() else 0

    def new_log_problems(self) -> list[str]:
        if self.log_path is None or not self.log_path.exists():
            return []
        with open(self.log_path, "rb") as log:
            log.seek(self._offset)
            text = log.read().decode(errors="replace")
            self._offset = log.tell()
        return [
            line.strip() for line in text.splitlines() if "Traceback" in line or "Exception in ASGI application" in line
        ]

    def memory_kib(self) -> dict[str, int]:
        if self.pid is None:
            return {}
        with open(f"/proc/{self.pid}/status") as status:
            return {
                k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in status) if k in ("VmRSS", "VmHWM")
            }

    def reset_peak(self) -> int | None:
        """Reset VmHWM to the current RSS (Linux clear_refs); the current RSS in KiB, None without a pid."""
        if self.pid is None:
            return None
        with suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        return self.memory_kib().get("VmRSS")


# ---- clients ---------------------------------------------------------------------------------------


def http_request(door: Door, doc: Any, key: str, host: str, extra_headers: str = "") -> bytes:
    """The raw HTTP/1.1 request for `doc` on `door` (encoded its way)."""
    if door.encoding == "msgpack":
        body, content_type = encode_msgpack(doc), "application/msgpack"
    elif door.encoding == "multipart":
        boundary = uuid.uuid4().hex
        body, content_type = encode_multipart(doc, boundary), f"multipart/form-data; boundary={boundary}"
    else:
        body, content_type = (doc if isinstance(doc, bytes) else encode_json(doc)), "application/json"
    head = (
        f"POST {door.path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra_headers}Connection: close\r\n\r\n"
    )
    return head.encode() + body


def connect(cfg: ProbeConfig, rcvbuf: int | None = None, timeout: float = 30.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connect, so the window offered is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        # An Ethernet-sized MSS, as a client across a network has: on loopback (MSS 64 KiB) the server's
        # send buffer autotunes to ~4 MB, which can hold a whole stream before any send waits.
        with suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1460)
    sock.settimeout(timeout)
    sock.connect(cfg.host_port)
    return sock


_TCP_STATES = {1: "ESTABLISHED", 7: "CLOSE", 8: "CLOSE_WAIT"}
_SERVER_GONE = {"CLOSE", "CLOSE_WAIT"}  # reset by the server, or its FIN received


def tcp_state(sock: socket.socket) -> str:
    """The socket's TCP state from the kernel (Linux TCP_INFO: its first byte), e.g. ESTABLISHED."""
    try:
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
    except (OSError, AttributeError):
        return "unknown"
    return _TCP_STATES.get(state, str(state))


@dataclass
class HttpAnswer:
    status: int | None  # None: closed or reset before a status line
    body: bytes = b""
    error: str = ""

    def text(self) -> str:
        return self.body.decode(errors="replace")


def read_answer(sock: socket.socket, deadline: float, limit: int = 64 * 1024 * 1024) -> HttpAnswer:
    """Status and (de-chunked) body of the answer on `sock`, read until the server closes or the deadline."""
    data = b""
    try:
        while time.monotonic() < deadline and len(data) < limit:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            part = sock.recv(65536)
            if not part:
                break
            data += part
    except (socket.timeout, TimeoutError):
        return HttpAnswer(_status(data), _body(data), "timed out")
    except OSError as exc:
        return HttpAnswer(_status(data), _body(data), type(exc).__name__)
    return HttpAnswer(_status(data), _body(data))


def _status(data: bytes) -> int | None:
    if not data.startswith(b"HTTP/1.1 "):
        return None
    with suppress(ValueError):
        return int(data[9:12])
    return None


def _body(data: bytes) -> bytes:
    head, _, body = data.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" not in head.lower():
        return body
    out, rest = b"", body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2 :]
    return out


class LiveClient:
    """A WebSocket client on a raw socket (wsproto), so a test decides when, and whether, it reads."""

    def __init__(
        self, cfg: ProbeConfig, door: Door, rcvbuf: int | None = None, extra_headers: list[tuple[bytes, bytes]] = ()
    ) -> None:
        self.sock = connect(cfg, rcvbuf)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events: list[Any] = []
        self.rejected: int | None = None
        headers = [(b"authorization", f"Bearer {cfg.key}".encode()), *extra_headers]
        self.sock.sendall(self.ws.send(Request(host=cfg.host_port[0], target=door.path, extra_headers=headers)))

    def handshake(self, deadline: float) -> bool:
        while time.monotonic() < deadline:
            for event in self._pump(deadline):
                if isinstance(event, AcceptConnection):
                    return True
                if isinstance(event, RejectConnection):
                    self.rejected = event.status_code
                    return False
            if self.closed:
                return False
        return False

    closed = False

    def _pump(self, deadline: float) -> Iterator[Any]:
        self.sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return iter(())
        except OSError:
            data = b""
        if not data:
            self.closed = True
            self.ws.receive_data(None)
        else:
            self.ws.receive_data(data)
        return self.ws.events()

    def send(self, event: dict[str, Any], as_json: bool = False) -> None:
        message = TextMessage(data=encode_json(event).decode()) if as_json else BytesMessage(data=encode_msgpack(event))
        self.sock.sendall(self.ws.send(message))

    def send_raw(self, message: Message) -> None:
        self.sock.sendall(self.ws.send(message))

    def send_session(self, doc: dict[str, Any], as_json: bool = False) -> None:
        self.send({"event": "start", "request": doc["request"]}, as_json)
        for text in doc["texts"]:
            self.send({"event": "text", "text": text}, as_json)
        self.send({"event": "stop"}, as_json)

    def next_event(self, deadline: float) -> dict[str, Any] | None:
        """The server's next event, None once the socket closed or at the deadline."""
        pending: list[bytes | str] = []
        while time.monotonic() < deadline and not self.closed:
            for event in self._pump(deadline):
                if isinstance(event, Message):
                    pending.append(event.data)
                    if event.message_finished:
                        data = b"".join(p if isinstance(p, bytes) else p.encode() for p in pending)
                        with suppress(Exception):
                            return ormsgpack.unpackb(data)
                        with suppress(Exception):
                            return json.loads(data)
                        return {"event": "undecodable"}
                elif isinstance(event, CloseConnection):
                    with suppress(Exception):
                        self.sock.sendall(self.ws.send(event.response()))
                    self.closed = True
                    return None
        return None

    def close(self) -> None:
        with suppress(OSError):
            self.sock.close()


# ---- checks ----------------------------------------------------------------------------------------

REFUSALS = {400, 413, 422}


def _error_text(answer_text: str) -> str:
    with suppress(ValueError, AttributeError, TypeError):
        data = json.loads(answer_text)
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            return f"{error.get('param')}: {error.get('message')}"
        return str(error if error is not None else data.get("message", answer_text))
    return answer_text


class Probe:
    def __init__(self, cfg: ProbeConfig) -> None:
        self.cfg = cfg
        self.http = httpx.Client(base_url=cfg.base_url, timeout=30, headers={"Authorization": f"Bearer {cfg.key}"})
        self.watch = ServerWatch(cfg.pid, cfg.log_path)
        self.clips = bad_clips(cfg.cache_dir, 22_050 if cfg.short else 44_100)
        cfg.cache_dir.mkdir(parents=True, exist_ok=True)
        self.doors = build_doors(good_clip())

    # -- after every case

    def slots_free(self, bound: float) -> tuple[bool, str]:
        """Every generation slot idle and a small job admitted, within `bound` seconds."""
        deadline = time.monotonic() + bound
        last = "no answer"
        while True:
            try:
                running = self.running()
                if not running:  # 0, or a server whose /v2 health does not say: the small job decides
                    answer = self.http.post(
                        "/run",
                        json={"input": {"action": "list_voices", "limit": 1}},
                        timeout=max(1.0, deadline - time.monotonic()),
                    )
                    if answer.status_code == 200:
                        return True, ""
                    last = f"a small job got {answer.status_code}: {_error_text(answer.text)[:120]}"
                else:
                    last = f"{running} generation slot(s) still busy"
            except httpx.HTTPError as exc:
                last = f"list_voices failed: {type(exc).__name__}"
            if time.monotonic() >= deadline:
                return False, last
            time.sleep(0.2)

    def running(self) -> int | None:
        """Generation slots in use (RunPod's /v2 health `workers.running`), None if it cannot be read."""
        try:
            return int(self.http.get(f"{V2}/health", timeout=5).json()["workers"]["running"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None

    # -- answers

    def judge_refusal(
        self,
        door: Door,
        answer: HttpAnswer | dict[str, Any] | None,
        names: tuple[str, ...],
        allowed: set[int] = REFUSALS,
    ) -> tuple[bool, str]:
        """Refused cleanly (4xx / FAILED job / finish-error), naming one of `names` (if any)?"""
        if door.answer == "ws":
            if answer is None:
                return False, "session closed without a finish event"
            message = str(answer.get("message", ""))
            if answer.get("reason") != "error":
                return False, f"session accepted it (finish reason {answer.get('reason')!r})"
            return self._names(message, names)
        assert isinstance(answer, HttpAnswer)
        if answer.status is None:
            return False, f"no answer ({answer.error or 'closed'})"
        text = _error_text(answer.text())
        if door.answer in ("v2-sync", "v2-job") and answer.status == 200:
            with suppress(ValueError):
                data = json.loads(answer.body)
                if data.get("status") == "FAILED":
                    return self._names(str(data.get("error", "")), names)
                return False, f"accepted: job status {data.get('status')}"
        if answer.status not in allowed:
            return False, f"answered {answer.status}: {text[:150]}"
        return self._names(text, names, prefix=f"{answer.status} ")

    @staticmethod
    def _names(message: str, names: tuple[str, ...], prefix: str = "") -> tuple[bool, str]:
        if message.startswith("internal error"):
            return False, f"{prefix}{message[:150]}"
        if names and not any(n.lower() in message.lower() for n in names):
            return False, f"{prefix}does not name {'/'.join(names)}: {message[:150]}"
        return True, f"{prefix}{message[:110]}"

    def send_whole(
        self, door: Door, doc: Any, timeout: float = 60.0, as_json: bool = False
    ) -> HttpAnswer | dict[str, Any] | None:
        """Send `doc` and wait for the door's verdict: an HttpAnswer, or for the live door its finish event."""
        deadline = time.monotonic() + timeout
        if door.answer == "ws":
            client = LiveClient(self.cfg, door)
            try:
                if not client.handshake(deadline):
                    return {"event": "finish", "reason": f"handshake refused ({client.rejected})"}
                if isinstance(doc, Message):
                    client.send_raw(doc)
                else:
                    client.send_session(doc, as_json)
                while (event := client.next_event(deadline)) is not None:
                    if event.get("event") == "finish":
                        return event
                return None
            finally:
                client.close()
        sock = connect(self.cfg, timeout=timeout)
        try:
            sock.sendall(http_request(door, doc, self.cfg.key, self.cfg.host_port[0]))
            answer = read_answer(sock, deadline)
        finally:
            sock.close()
        if door.answer == "v2-job" and answer.status == 200:
            return self._polled(answer, deadline)
        return answer

    def _polled(self, answer: HttpAnswer, deadline: float) -> HttpAnswer:
        job_id = json.loads(answer.body)["id"]
        while time.monotonic() < deadline:
            status = self.http.get(f"{V2}/status/{job_id}")
            if status.status_code != 200 or status.json().get("status") in ("COMPLETED", "FAILED", "CANCELLED"):
                return HttpAnswer(status.status_code, status.content)
            time.sleep(0.2)
        return HttpAnswer(None, error=f"job {job_id} not final in time")

    # -- cases (each returns an Outcome; the runner adds the log, slot and memory checks)

    def case_normal(self, door: Door) -> Outcome:
        answer = self.send_whole(door, door.docs["normal"])
        if door.answer == "ws":
            ok = isinstance(answer, dict) and answer.get("reason") == "stop"
            return Outcome(ok, f"finish {answer.get('reason') if answer else 'missing'}")
        assert isinstance(answer, HttpAnswer)
        if answer.status != 200:
            return Outcome(False, f"answered {answer.status}: {_error_text(answer.text())[:150]}")
        if door.answer.startswith("v2"):
            status = json.loads(answer.body).get("status")
            return Outcome(status == "COMPLETED", f"job {status}")
        return Outcome(bool(answer.body), f"200, {len(answer.body)} bytes")

    def case_field(self, door: Door, fld: Field, value: Any, as_json: bool = False) -> Outcome:
        doc = with_value(door.docs[fld.base], fld.path, value)
        names = fld.error_names()
        if value == SURROGATE and door.encoding in ("msgpack", "multipart"):
            names += ("body",)  # there the surrogate is bytes that are not UTF-8: refusing the body is right
        answer = self.send_whole(door, doc, as_json=as_json)
        if (
            value == SURROGATE
            and door.encoding == "multipart"
            and isinstance(answer, HttpAnswer)
            and answer.status is not None
            and 200 <= answer.status < 300
        ):
            # Starlette reads a form field's bytes that are not UTF-8 as Latin-1 (as browsers' forms fall
            # back): the field holds valid, if garbled, text. Accepting it is not an escape.
            return Outcome(True, f"{answer.status}: read as Latin-1 text (Starlette's form decoding)")
        ok, detail = self.judge_refusal(door, answer, names)
        return Outcome(ok, detail)

    def case_nesting(self, door: Door, payload: bytes, binary: bool) -> Outcome:
        names = ("body", "json", "msgpack", "event")
        if door.answer == "ws":
            message = BytesMessage(data=payload) if binary else TextMessage(data=payload.decode())
            ok, detail = self.judge_refusal(door, self.send_whole(door, message), names)
        else:
            ok, detail = self.judge_refusal(door, self.send_whole(door, payload), names)
        return Outcome(ok, detail)

    def open_long(self, door: Door, rcvbuf: int | None = None) -> tuple[socket.socket | LiveClient, float]:
        """A long request sent, nothing read yet; with the time it was sent."""
        if door.answer == "ws":
            client = LiveClient(self.cfg, door, rcvbuf)
            if not client.handshake(time.monotonic() + 10):
                client.close()
                raise ConnectionError(f"handshake refused ({client.rejected})")
            client.send_session(door.docs["long"])
            return client, time.monotonic()
        sock = connect(self.cfg, rcvbuf)
        sock.sendall(http_request(door, door.docs["long"], self.cfg.key, self.cfg.host_port[0]))
        return sock, time.monotonic()

    def case_slow_reader(self, door: Door) -> Outcome:
        conn, _ = self.open_long(door, rcvbuf=4096)
        sock = conn.sock if isinstance(conn, LiveClient) else conn
        bound = self.cfg.slot_bound + self.cfg.fill_s  # the buffers fill, then the send deadline runs
        deadline, got = time.monotonic() + bound, 0
        try:
            while time.monotonic() < deadline:
                # What is already in our receive buffer takes ~an hour to read at this pace: the
                # kernel's TCP state tells at once whether the server has closed (FIN) or reset it.
                if (state := tcp_state(sock)) in _SERVER_GONE:
                    return Outcome(True, f"dropped by the server ({state}) after {got} bytes read")
                sock.settimeout(5)
                try:
                    byte = sock.recv(1)
                except (socket.timeout, TimeoutError):
                    continue
                except OSError as exc:
                    return Outcome(True, f"dropped ({type(exc).__name__}) after {got} bytes")
                if not byte:
                    return Outcome(True, f"closed by the server after {got} bytes")
                got += 1
                time.sleep(1.0)
            return Outcome(False, f"still connected after {bound:g} s ({got} bytes read, a byte a second)")
        finally:
            sock.close()

    def case_never_reader(self, door: Door) -> Outcome:
        conn, _ = self.open_long(door, rcvbuf=4096)
        # Held open and unread through the slot check: the server must give up on it by itself.
        return Outcome(True, "socket left unread", held=[conn], slot_bound_s=self.cfg.slot_bound + self.cfg.fill_s)

    def case_mid_stream_hangup(self, door: Door) -> Outcome:
        conn, _ = self.open_long(door)
        deadline = time.monotonic() + 60
        try:
            if isinstance(conn, LiveClient):
                while (event := conn.next_event(deadline)) is not None and event.get("event") != "audio":
                    pass
                if event is None:
                    return Outcome(False, "no audio event before the close / deadline")
                return Outcome(True, "closed after the first audio event")
            conn.settimeout(60)
            data = b""
            while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < 1024:
                part = conn.recv(65536)
                if not part:
                    return Outcome(False, f"closed before 1 kB of body: {data[:120]!r}")
                data += part
            return Outcome(_status(data) == 200, f"closed after {len(data)} bytes of a {_status(data)} answer")
        finally:
            conn.close()

    def case_abandoned(self, door: Door) -> Outcome:
        conn, sent = self.open_long(door)
        assert isinstance(conn, socket.socket)
        job_id = None
        if door.abandon == "cancel":
            job_id = json.loads(read_answer(conn, time.monotonic() + 10).body)["id"]
        time.sleep(max(0.0, sent + 1.0 - time.monotonic()))
        running = self.running()
        if door.abandon == "cancel":
            self.http.post(f"{V2}/cancel/{job_id}")
        conn.close()
        if running == 0:
            return Outcome(False, "inconclusive: nothing was generating 1 s in (is the long request too short?)")
        ok, why = self.slots_free(self.cfg.stop_bound_s)
        return Outcome(ok, "generation stopped" if ok else f"{self.cfg.stop_bound_s:g} s after the hang-up: {why}")

    def case_headers(self, door: Door, size: int) -> Outcome:
        filler = f"X-Probe-Padding: {'a' * size}\r\n"
        sock = connect(self.cfg, timeout=20)
        try:
            if door.answer == "ws":
                request = (
                    f"GET {door.path} HTTP/1.1\r\nHost: {self.cfg.host_port[0]}\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {self.cfg.key}\r\n{filler}\r\n"
                ).encode()
            else:
                request = http_request(door, door.docs["normal"], self.cfg.key, self.cfg.host_port[0], filler)
            sock.sendall(request)  # one write
            answer = read_answer(sock, time.monotonic() + 20, limit=4096)
        finally:
            sock.close()
        if answer.status in (400, 431):
            return Outcome(True, f"{answer.status}")
        if answer.status is None and answer.error != "timed out":
            return Outcome(True, f"refused without a status ({answer.error or 'closed'})")
        return Outcome(False, f"a {size // 1000} kB header: {answer.status or answer.error}")

    def case_big_bodies(self, door: Door) -> Outcome:
        count = self.cfg.concurrent_bodies or (20 if self.cfg.short else 30)
        size = self.cfg.max_body_bytes - 4096  # room for the rest of the document
        filler = b"\0" * (size // 4 * 3)  # base64 in JSON: just under the limit
        fld = door.audio_fields[0] if door.audio_fields else None
        if fld is not None:  # base64 text in JSON, bytes in msgpack and multipart
            doc = with_value(door.docs[fld.base], fld.path, filler if door.encoding == "json" else b"\0" * size)
        else:  # no audio field: the longest string field carries the bulk
            doc = with_value(door.docs["normal"], door.text_fields[0].path, "a" * size)
        request = http_request(door, doc, self.cfg.key, self.cfg.host_port[0])
        answers: list[HttpAnswer] = []
        # One body alone first, unmeasured: the heap grows once to what one body costs (the allocator
        # keeps it), so the peak measured next is what holding several at once adds to that.
        with connect(self.cfg, timeout=60) as sock:
            sock.sendall(request)
            alone = read_answer(sock, time.monotonic() + 60, limit=64 * 1024)
        before = self.watch.reset_peak()

        def one() -> None:
            try:
                sock = connect(self.cfg, timeout=60)
                sock.sendall(request)
                answers.append(read_answer(sock, time.monotonic() + 60, limit=64 * 1024))
                sock.close()
            except OSError as exc:
                answers.append(HttpAnswer(None, error=type(exc).__name__))

        threads = [threading.Thread(target=one) for _ in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        statuses = sorted(str(a.status or a.error) for a in answers)
        # A body refused unread (429, Connection: close) may reach the client as a reset: that is a refusal.
        # What fails: a 5xx, a hang, a close with no answer, or a plain door accepting such a body.
        bad = [
            a
            for a in answers
            if (a.status is None and a.error in ("", "timed out"))
            or (a.status or 0) >= 500
            or a.status == 200
            and door.answer == "http"
        ]
        summary = f"{count} x {len(request) / 1e6:.1f} MB: {', '.join(sorted(set(statuses)))} (alone: {alone.status})"
        return Outcome(not bad and len(answers) == count, summary, rss_before_kib=before)


# ---- the run ---------------------------------------------------------------------------------------

JSON_NESTING = b"[" * 100_000
MSGPACK_NESTING = b"\x91" * 100_000 + b"\xc0"  # 100000 one-element arrays, one inside the other


def plan(probe: Probe, door: Door) -> Iterator[tuple[str, Callable[[], Outcome], str | None]]:
    """(case name, run it, memory budget kind or None) for every case that applies to `door`."""
    yield "normal", lambda: probe.case_normal(door), None
    if door.streams:
        yield "slow-reader", lambda: probe.case_slow_reader(door), None
        yield "never-reader", lambda: probe.case_never_reader(door), None
        yield "mid-stream-hangup", lambda: probe.case_mid_stream_hangup(door), None
    if door.abandon:
        yield "abandoned", lambda: probe.case_abandoned(door), None
    for name, make in probe.clips.items():
        for fld in door.audio_fields:
            yield (
                f"{name}:{fld.label}",
                lambda fld=fld, make=make: probe.case_field(door, fld, make()),
                "bomb" if name in MEMORY_CASES else None,
            )
    if door.encoding in ("json", "ws"):
        yield "nesting:json", lambda: probe.case_nesting(door, JSON_NESTING, binary=False), None
    if door.encoding in ("msgpack", "ws"):
        yield "nesting:msgpack", lambda: probe.case_nesting(door, MSGPACK_NESTING, binary=True), None
    for fld in door.text_fields:
        yield (f"surrogate:{fld.label}", lambda fld=fld: probe.case_field(door, fld, SURROGATE, as_json=True), None)
    yield "headers-20k", lambda: probe.case_headers(door, 20_000), None
    yield "headers-100k", lambda: probe.case_headers(door, 100_000), None
    if door.encoding != "ws":
        yield "big-bodies", lambda: probe.case_big_bodies(door), "bodies"


def _bounded(run: Callable[[], Outcome], timeout: float) -> Outcome:
    """`run()`, or a FAIL once it has taken `timeout` seconds (a hang)."""
    box: list[Outcome | BaseException] = []
    thread = threading.Thread(target=lambda: box.append(_caught(run)), daemon=True)
    thread.start()
    thread.join(timeout)
    if not box:
        return Outcome(False, f"hang: no outcome within {timeout:g} s")
    result = box[0]
    if isinstance(result, BaseException):
        return Outcome(False, f"probe could not run it: {type(result).__name__}: {str(result)[:150]}")
    return result


def _caught(run: Callable[[], Outcome]) -> Outcome | BaseException:
    try:
        return run()
    except Exception as exc:  # reported as the case's failure, the probe goes on
        return exc


def run_probe(cfg: ProbeConfig) -> list[Result]:
    probe = Probe(cfg)
    results: list[Result] = []
    budgets = {"bomb": cfg.memory_budget_mb, "bodies": cfg.bodies_budget_mb}
    for door in probe.doors:
        if cfg.doors and door.name not in cfg.doors:
            continue
        for case, run, memory in plan(probe, door):
            if cfg.cases and not any(case.startswith(c) for c in cfg.cases):
                continue
            probe.watch.new_log_problems()  # what came before is not this case's
            before = probe.watch.reset_peak() if memory else None
            started = time.monotonic()
            outcome = _bounded(run, 180.0)
            ok, details = outcome.ok, [outcome.detail]
            if outcome.rss_before_kib is not None:
                before = outcome.rss_before_kib
            if memory and before is not None:
                grown_mb = (probe.watch.memory_kib().get("VmHWM", before) - before) / 1024
                if grown_mb > budgets[memory]:
                    ok = False
                    details.append(f"peak RSS +{grown_mb:.0f} MB > {budgets[memory]:g} MB budget")
                else:
                    details.append(f"peak RSS +{grown_mb:.0f} MB")
            bound = outcome.slot_bound_s or cfg.slot_bound
            free, why = probe.slots_free(bound)
            if not free:
                ok = False
                details.append(f"slot not freed within {bound:g} s: {why}")
            for held in outcome.held:
                held.close()
            if not free:  # give the server back its slots before the next case, so one leak is one FAIL
                recovered, _ = probe.slots_free(90.0)
                details.append("recovered after the client closed" if recovered else "NOT recovered in 90 s")
            problems = probe.watch.new_log_problems()
            if problems:
                ok = False
                details.append(f"server log: {problems[0][:120]} (+{len(problems) - 1} more)")
            details.append(f"{time.monotonic() - started:.1f} s")
            result = Result(door.name, case, ok, "; ".join(d for d in details if d))
            cfg.out(result.line())
            results.append(result)
    failed = sum(not r.ok for r in results)
    cfg.out(f"{len(results)} cases, {failed} failed")
    return results


# ---- a server to probe -----------------------------------------------------------------------------

# Short deadlines so every case ends in seconds. FISH_SEND_TIMEOUT_S and FISH_BODY_BUDGET_BYTES are the
# settings issue 23's fixes introduce; an older server ignores them (and fails the cases they fix).
PROBE_SERVER_ENV = {
    "FISH_MAX_CONCURRENCY": "1",
    "FISH_MAX_QUEUED_JOBS": "1",
    "FISH_MAX_QUEUED_JOBS_PER_TENANT": "1",
    "FISH_MAX_JOB_FRAMES": "1500",  # a long request: ~15 s of generation on 2 busy CPU cores
    "FISH_SEND_TIMEOUT_S": "2",
    "FISH_HEADER_TIMEOUT_S": "5",
    "FISH_BODY_TIMEOUT_S": "10",
    "FISH_LIVE_IDLE_TIMEOUT_S": "10",
    "FISH_LIVE_MAX_SESSION_S": "120",
    # One body at the default FISH_MAX_BODY_BYTES (23.4 MB) read and parsed at a time: ~100 MB of RSS.
    "FISH_BODY_BUDGET_BYTES": "24000000",
    "FISH_LOG_LEVEL": "WARNING",
    "MALLOC_ARENA_MAX": "2",
}


@dataclass
class StartedServer:
    process: subprocess.Popen
    base_url: str
    key: str
    log_path: Path

    def config(self, **overrides: Any) -> ProbeConfig:
        """A ProbeConfig for this server, its deadlines and limits as PROBE_SERVER_ENV set them."""
        return ProbeConfig(
            base_url=self.base_url,
            key=self.key,
            pid=self.process.pid,
            log_path=self.log_path,
            send_timeout_s=float(PROBE_SERVER_ENV["FISH_SEND_TIMEOUT_S"]),
            **overrides,
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    checkpoint: Path, workdir: Path, key: str = "probe-key", env: dict[str, str] | None = None, timeout_s: float = 240.0
) -> StartedServer:
    """`python -m fish_worker.server` on 127.0.0.1 with PROBE_SERVER_ENV; its stderr in workdir/server.log."""
    port = free_port()
    log_path = workdir / "server.log"
    env = dict(env or {})
    if "FISH_ASR_MODEL_DIR" not in env and "FISH_ASR_BASE_URL" not in env:  # speech in, for its doors
        from fish_worker.devtools.tiny_whisper import write_tiny_whisper

        env["FISH_ASR_MODEL_DIR"] = str(write_tiny_whisper(workdir / "tiny-whisper", seed=0))
    full_env = {
        **os.environ,
        **PROBE_SERVER_ENV,
        **env,
        "FISH_CHECKPOINT_DIR": str(checkpoint),
        "FISH_DEVICE": "cpu",
        "FISH_WARMUP": "false",
        "FISH_DOWNLOAD_MISSING": "false",
        "FISH_VOICES_DIR": str(workdir / "voices"),
        "FISH_HOST": "127.0.0.1",
        "FISH_PORT": str(port),
        "FISH_API_KEYS": f"probe:{key}",
        "TQDM_DISABLE": "1",
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "fish_worker.server"], cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
    server = StartedServer(process, f"http://127.0.0.1:{port}", key, log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        with suppress(httpx.HTTPError):
            if httpx.get(f"{server.base_url}/ping", timeout=2).status_code == 200:
                return server
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"server not ready within {timeout_s:g} s: {log_path.read_text()[-2000:]}")


@contextmanager
def local_server(checkpoint: Path | None = None) -> Iterator[StartedServer]:
    """A server on a tiny random checkpoint (written to a temporary folder unless given)."""
    with tempfile.TemporaryDirectory(prefix="fish-probe-") as tmp:
        workdir = Path(tmp)
        if checkpoint is None:
            from fish_worker.devtools.tiny_checkpoint import write_tiny_checkpoint

            checkpoint = write_tiny_checkpoint(workdir / "checkpoint", seed=0)
        server = start_server(checkpoint, workdir)
        try:
            yield server
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", help="the server to probe, e.g. http://127.0.0.1:8000")
    parser.add_argument("--key", help="one of its FISH_API_KEYS")
    parser.add_argument("--pid", type=int, help="the server's process id (memory cases read /proc/PID/status)")
    parser.add_argument("--log", type=Path, help="file the server's stderr goes to (tracebacks fail the case)")
    parser.add_argument("--start", action="store_true", help="start a server on a tiny checkpoint and probe it")
    parser.add_argument("--checkpoint", type=Path, help="with --start: this checkpoint instead of a tiny one")
    parser.add_argument("--short", action="store_true", help="the fast mode CI runs (smaller payloads)")
    parser.add_argument("--send-timeout-s", type=float, default=30.0, help="the server's FISH_SEND_TIMEOUT_S")
    parser.add_argument("--max-body-bytes", type=int, help="the server's FISH_MAX_BODY_BYTES")
    parser.add_argument(
        "--fill-s",
        type=float,
        default=5.0,
        help="extra bound for a never/slow reader: time for what is generated to fill the buffers",
    )
    parser.add_argument("--memory-budget-mb", type=float, default=100.0)
    parser.add_argument("--bodies-budget-mb", type=float, default=400.0)
    parser.add_argument("--doors", default="", help="comma-separated door names (default: all)")
    parser.add_argument("--cases", default="", help="comma-separated case name prefixes (default: all)")
    args = parser.parse_args(argv)
    choose = dict(
        short=args.short,
        doors=tuple(filter(None, args.doors.split(","))),
        cases=tuple(filter(None, args.cases.split(","))),
    )
    if args.start:
        with local_server(args.checkpoint) as server:
            results = run_probe(server.config(**choose))
    else:
        if not args.base_url or not args.key:
            parser.error("--base-url and --key (or --start)")
        extra = {"max_body_bytes": args.max_body_bytes} if args.max_body_bytes else {}
        results = run_probe(
            ProbeConfig(
                args.base_url,
                args.key,
                args.pid,
                args.log,
                send_timeout_s=args.send_timeout_s,
                fill_s=args.fill_s,
                memory_budget_mb=args.memory_budget_mb,
                bodies_budget_mb=args.bodies_budget_mb,
                **extra,
                **choose,
            )
        )
    return 1 if any(not r.ok for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
