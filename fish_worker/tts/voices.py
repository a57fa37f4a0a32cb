"""Saved voices: a speaker's codec tokens and transcript, stored once and reused by `voice_id`.

Each voice is one `<voice_id>.npz` file in the store's directory (which may be on a network
volume shared by several workers). A file is written under a temporary name and renamed into
place, so readers see either the old voice or the new one, never half of one, even after a crash.
"""

from __future__ import annotations

import builtins  # `list` below is also a method's name
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fish_worker.errors import shown
from fish_worker.tenancy import validate_tenant

# Starts with a letter or digit (so never ".", "..", a hidden or temporary file), then letters,
# digits, "_", "." or "-"; no "/" or "\" can appear, so an id can only name a file in the store.
VOICE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SUFFIX = ".npz"
_TEMP_PREFIX = ".tmp-"  # can't be a voice_id, so half-written files never show up as voices
_FORMAT_VERSION = 1
_TENANTS_DIR = "tenants"  # <root>/tenants/<tenant>/: not a voice id's shape, so never listed as one


class VoiceStoreFullError(RuntimeError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the voice store holds its limit of {limit} voices (FISH_MAX_VOICES); delete one with delete_voice first"
        )
        self.limit = limit


class VoiceNotFoundError(KeyError):
    def __init__(self, voice_id: str) -> None:
        super().__init__(voice_id)
        self.voice_id = voice_id

    def __str__(self) -> str:
        return f"no saved voice with voice_id {shown(self.voice_id)}"


def validate_voice_id(voice_id: Any) -> str:
    """Return `voice_id` if it is a safe voice id, else raise ValueError saying why."""
    if not isinstance(voice_id, str):
        raise ValueError(f"voice_id must be a string; got {type(voice_id).__name__}")
    if not VOICE_ID_PATTERN.fullmatch(voice_id) or ".." in voice_id:
        raise ValueError(
            f"invalid voice_id {shown(voice_id)}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit, without '..'"
        )
    return voice_id


@dataclass(frozen=True)
class VoiceInfo:
    voice_id: str
    text: str
    created_at: float  # Unix time, seconds
    num_codebooks: int
    num_frames: int
    title: str = ""  # a display name (the Fish API's voice title); "" for voices saved without one


@dataclass(frozen=True)
class SavedVoice:
    voice_id: str
    tokens: np.ndarray  # integer codec tokens, shape [num_codebooks, num_frames]
    text: str  # transcript of the reference audio the tokens came from
    created_at: float
    title: str = ""

    @property
    def info(self) -> VoiceInfo:
        num_codebooks, num_frames = self.tokens.shape
        return VoiceInfo(self.voice_id, self.text, self.created_at, num_codebooks, num_frames, title=self.title)


class VoiceStore:
    """Save, load, list and delete voices in one directory (created if missing).

    `max_voices` caps how many voices the directory may hold: saving a new voice_id beyond it raises
    VoiceStoreFullError (overwriting an existing one is always allowed). Workers sharing the
    directory each check the count before writing, so concurrent saves may pass it by a few.
    """

    def __init__(self, root: str | os.PathLike[str], max_voices: int | None = None) -> None:
        self.root = Path(root)
        self.max_voices = max_voices

    def for_tenant(self, tenant: str | None) -> "VoiceStore":
        """The tenant's own voices (`<root>/tenants/<tenant>/`); None: this store, the default namespace."""
        tenant = validate_tenant(tenant)
        return self if tenant is None else VoiceStore(self.root / _TENANTS_DIR / tenant, self.max_voices)

    def save(self, voice_id: str, tokens: Any, text: str, *, overwrite: bool = True, title: str = "") -> VoiceInfo:
        voice_id = validate_voice_id(voice_id)
        tokens = _checked_tokens(tokens)
        if not isinstance(text, str):
            raise ValueError(f"text must be a string; got {type(text).__name__}")
        path = self._path(voice_id)
        if not overwrite and path.exists():
            raise FileExistsError(f"a voice with voice_id {voice_id!r} already exists")
        if self.max_voices is not None and not path.exists() and len(self.voice_ids()) >= self.max_voices:
            raise VoiceStoreFullError(self.max_voices)
        voice = SavedVoice(voice_id, tokens, text, created_at=time.time(), title=title)
        self.root.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, voice)
        return voice.info

    def load(self, voice_id: str) -> SavedVoice:
        voice_id = validate_voice_id(voice_id)
        try:
            with np.load(self._path(voice_id), allow_pickle=False) as data:
                return SavedVoice(
                    voice_id=voice_id,
                    tokens=data["tokens"],
                    text=str(data["text"]),
                    created_at=float(data["created_at"]),
                    title=str(data["title"]) if "title" in data.files else "",  # older files have none
                )
        except FileNotFoundError:
            raise VoiceNotFoundError(voice_id) from None

    def exists(self, voice_id: str) -> bool:
        return self._path(validate_voice_id(voice_id)).is_file()

    def voice_ids(self) -> list[str]:
        """The saved voices' ids, sorted (read from the file names: no voice is opened)."""
        ids = (path.name[: -len(_SUFFIX)] for path in self.root.glob(f"*{_SUFFIX}"))
        # Skip what is not ours (e.g. a temporary file).
        return sorted(i for i in ids if VOICE_ID_PATTERN.fullmatch(i) and ".." not in i)

    def list(self) -> list[VoiceInfo]:
        """All saved voices, sorted by voice_id."""
        return self.page(limit=None)[0]

    def page(self, limit: int | None, after: str | None = None) -> tuple[builtins.list[VoiceInfo], str | None]:
        """Up to `limit` voices whose ids sort after `after`, and the cursor of the next page (None: last page)."""
        ids = [i for i in self.voice_ids() if after is None or i > after]
        more = limit is not None and len(ids) > limit
        voices = []
        for voice_id in ids[:limit] if limit is not None else ids:
            try:
                voices.append(self.load(voice_id).info)
            except VoiceNotFoundError:
                continue  # deleted by another worker while we listed
        return voices, (ids[limit - 1] if limit is not None and more else None)

    def delete(self, voice_id: str) -> None:
        try:
            self._path(validate_voice_id(voice_id)).unlink()
        except FileNotFoundError:
            raise VoiceNotFoundError(voice_id) from None

    def _path(self, voice_id: str) -> Path:
        return self.root / f"{voice_id}{_SUFFIX}"


def _checked_tokens(tokens: Any) -> np.ndarray:
    array = np.asarray(tokens)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"tokens must be integers; got dtype {array.dtype}")
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"tokens must have shape [num_codebooks, num_frames]; got {array.shape}")
    return array


def _write_atomically(path: Path, voice: SavedVoice) -> None:
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=_TEMP_PREFIX, suffix=_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as file:
            np.savez(
                file,
                format_version=np.int64(_FORMAT_VERSION),
                tokens=voice.tokens,
                text=np.str_(voice.text),
                created_at=np.float64(voice.created_at),
                title=np.str_(voice.title),
            )
            file.flush()
            os.fsync(file.fileno())  # the data must be on disk before the name points at it
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise
