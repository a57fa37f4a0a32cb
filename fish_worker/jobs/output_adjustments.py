"""A job's `sample_rate`, `speed` and `volume`, applied to its speech as it is generated.

    adjustments = job_adjustments(request)             # JobInputError naming the field if impossible
    for event in adjusted_speech(events, adjustments):  # TextDelta passes through; SpeechChunk adjusted
        ...

Applied to the chunks before they are encoded, so every output shape (whole or streamed, any
audio_format, chat or tts) gets the same audio and reports the real rate in `sample_rate`.
One AudioPostProcessor runs across a sentence's streamed chunks, so they join seamlessly; it is
flushed and restarted at each sentence's end (the chunk that carries the sentence's codes), so
the time-stretch and resampler never hold a finished sentence's last ~20-65 ms back until the next
sentence is generated. Sentences are separate generations, so the restart leaves no seam.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TypeVar

import numpy as np

from fish_worker.audio.formats import FIXED_SAMPLE_RATES, OPUS_SAMPLE_RATE
from fish_worker.audio.postprocess import AudioAdjustments, AudioPostProcessor
from fish_worker.errors import JobInputError
from fish_worker.jobs.inputs import JobInput
from fish_worker.tts.requests import SpeechChunk


Event = TypeVar("Event")


def job_adjustments(request: JobInput) -> AudioAdjustments:
    """The job's output adjustments, checked against what its audio_format can carry."""
    return output_adjustments(request.audio_format, request.sample_rate, request.speed, request.volume)


def output_adjustments(
    audio_format: str, rate: int | None, speed: float = 1.0, volume_db: float = 0.0, *, ignore_opus_rate: bool = False
) -> AudioAdjustments:
    """Output adjustments checked against what `audio_format` can carry (JobInputError naming the field):
    the one rule for every door.

    Opus is always encoded at 48 kHz (its decoders output 48 kHz whatever the source was), so another
    `rate` with opus is refused, except where `ignore_opus_rate` says to drop it: the Fish doors, because
    Fish Audio's API ignores it and pipecat's Fish service sends its pipeline's rate with every format.
    """
    rates = FIXED_SAMPLE_RATES.get(audio_format)
    if rate is not None and rates is not None and rate not in rates:
        raise JobInputError("sample_rate", f"{audio_format} supports {', '.join(map(str, rates))}; got {rate}")
    if audio_format == "opus":
        if rate not in (None, OPUS_SAMPLE_RATE) and not ignore_opus_rate:
            raise JobInputError(
                "sample_rate",
                f"opus is always {OPUS_SAMPLE_RATE} Hz; leave sample_rate out or choose another audio_format",
            )
        rate = None
    return AudioAdjustments(sample_rate=rate, speed=speed, volume_db=volume_db)


def adjusted_speech(events: Iterator[Event], adjustments: AudioAdjustments) -> Iterator[Event]:
    """`events` with each SpeechChunk's audio adjusted (and its sample_rate the output's); the rest as is."""
    if adjustments.is_identity:
        yield from events
        return
    processor: AudioPostProcessor | None = None
    try:
        for event in events:
            if not isinstance(event, SpeechChunk):
                yield event
                continue
            if processor is None:
                processor = AudioPostProcessor(adjustments, event.sample_rate)
            audio = processor.process(event.audio)
            if event.codes is not None:  # the sentence's last chunk
                audio = np.concatenate([audio, processor.flush()])
                processor = None
            yield dataclasses.replace(event, audio=audio, sample_rate=adjustments.output_rate(event.sample_rate))
    finally:
        close = getattr(events, "close", None)
        if close is not None:  # a job abandoned mid-way stops its generation now, not at garbage collection
            close()
