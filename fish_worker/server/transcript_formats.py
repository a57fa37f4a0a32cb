"""A Transcript in the shapes the transcription doors answer: OpenAI's json / verbose_json / text / srt / vtt,
and Fish Audio's ASRResponse.

SRT and WebVTT are written by the `srt` and `webvtt-py` libraries (timestamps, numbering, the WEBVTT
header); a segment's text is made one line without "-->" first, since both formats end a cue at an empty
line and read "-->" as a timing line (webvtt-py refuses such text).
"""

from __future__ import annotations

import datetime
import math
from typing import Any

import srt
import webvtt
from webvtt.models import Timestamp

from fish_worker.asr.backend import Transcript, TranscriptSegment


def openai_json(transcript: Transcript) -> dict[str, Any]:
    return {"text": transcript.text, "usage": _usage(transcript)}


def openai_verbose_json(transcript: Transcript) -> dict[str, Any]:
    """OpenAI's verbose_json. A segment has id, seek, start, end, text, tokens and temperature; the
    decoder statistics OpenAI adds (avg_logprob, compression_ratio, no_speech_prob) are not computed here,
    so they are left out rather than made up."""
    return {
        "task": "transcribe",
        "language": language_name(transcript.language),
        "duration": transcript.duration_s,
        "text": transcript.text,
        "segments": [
            {"id": i, "seek": 0, "start": s.start_s, "end": s.end_s, "text": s.text, "tokens": [], "temperature": 0.0}
            for i, s in enumerate(cues(transcript))
        ],
        "usage": _usage(transcript),
    }


def srt_text(transcript: Transcript) -> str:
    # Numbered here, not re-indexed by srt: its re-indexing drops a cue that ends where it starts, and
    # Whisper does give those (a word at a timestamp token's boundary); its text stays in the file.
    return srt.compose(
        [
            srt.Subtitle(i + 1, _delta(s.start_s), _delta(s.end_s), _one_line(s.text))
            for i, s in enumerate(cues(transcript))
        ],
        reindex=False,
    )


def vtt_text(transcript: Transcript) -> str:
    captions = [
        webvtt.Caption(start=_vtt_time(s.start_s), end=_vtt_time(s.end_s), text=_one_line(s.text))
        for s in cues(transcript)
    ]
    return webvtt.WebVTT(captions=captions).content


def fish_asr_response(transcript: Transcript, *, timestamps: bool) -> dict[str, Any]:
    """Fish Audio's ASRResponse: duration in milliseconds, segments' start and end in seconds."""
    segments = [{"text": s.text, "start": s.start_s, "end": s.end_s} for s in cues(transcript)] if timestamps else []
    return {"text": transcript.text, "duration": transcript.duration_s * 1000.0, "segments": segments}


def cues(transcript: Transcript) -> tuple[TranscriptSegment, ...]:
    """The timed segments; a recognizer that gives none but some text gets one over the whole clip."""
    if transcript.segments or not transcript.text:
        return transcript.segments
    return (TranscriptSegment(0.0, transcript.duration_s, transcript.text),)


def language_name(code: str | None) -> str | None:
    """OpenAI's verbose_json names the language ("english"); Whisper's own table maps a code to its name."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return None if code is None else LANGUAGES.get(code, code)


def _usage(transcript: Transcript) -> dict[str, Any]:
    return {"type": "duration", "seconds": math.ceil(transcript.duration_s)}  # as OpenAI bills whisper-1


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("-->", "->")


def _delta(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=max(0.0, seconds))


def _vtt_time(seconds: float) -> str:
    return str(Timestamp.from_seconds(max(0.0, float(seconds))))
