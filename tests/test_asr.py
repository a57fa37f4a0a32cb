"""Speech in (fish_worker/asr/): the tiny Whisper in the released layout, the local recognizer against
transformers' own generate, the Transcriber's decoding and limits on real speech from espeak-ng, and
the batcher under random concurrent schedules."""

from __future__ import annotations

import base64
import io
import json
import random
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest
import soundfile

from fish_worker.asr.backend import (
    ASR_SAMPLE_RATE,
    SpeechRecognizer,
    Transcript,
    TranscriptionStopped,
    TranscriptSegment,
)
from fish_worker.asr.batching import Batcher, BatchInterrupted
from fish_worker.asr.transcriber import Transcriber
from fish_worker.errors import JobInputError
from helpers import DecoderSteps

pytestmark = pytest.mark.timeout(240)


def espeak(text: str, tmp_path_factory: pytest.TempPathFactory, voice: str = "en") -> bytes:
    """A WAV of `text` spoken by espeak-ng (22.05 kHz mono): real speech, made here."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng; .ci/run installs it)")
    path = tmp_path_factory.mktemp("espeak") / "speech.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, timeout=60)
    return path.read_bytes()


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return espeak("Hello, what is the weather like in Paris today?", tmp_path_factory)


@pytest.fixture(scope="module")
def recognizer(tiny_whisper_dir):
    from fish_worker.asr.whisper import WhisperRecognizer

    return WhisperRecognizer.load(tiny_whisper_dir, device="cpu", max_batch=4)


@pytest.fixture(scope="module")
def transcriber(recognizer) -> Transcriber:
    return Transcriber(recognizer, max_seconds=40.0, max_bytes=4 * 1024 * 1024)


def samples_of(wav: bytes) -> np.ndarray:
    from fish_worker.audio.reference import decode_audio_file

    return decode_audio_file(wav, ASR_SAMPLE_RATE, 120.0)


# ---- the tiny checkpoint's layout -------------------------------------------------------------------


def test_tiny_whisper_has_the_released_layout(tiny_whisper_dir):
    names = {p.name for p in tiny_whisper_dir.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
        "vocab.json",
        "merges.txt",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    } <= names
    generation = json.loads((tiny_whisper_dir / "generation_config.json").read_text())
    assert generation["lang_to_id"]["<|en|>"] == generation["decoder_start_token_id"] + 1
    assert generation["task_to_id"]["transcribe"] > generation["lang_to_id"]["<|yue|>"]
    # Whisper's order after the text tokens: <|endoftext|>, <|startoftranscript|>, the languages,
    # translate, transcribe, startoflm, startofprev, nospeech, then <|notimestamps|>.
    text_tokens = len(json.loads((tiny_whisper_dir / "vocab.json").read_text()))
    assert generation["eos_token_id"] == text_tokens
    assert generation["no_timestamps_token_id"] == text_tokens + 2 + len(generation["lang_to_id"]) + 5
    preprocessor = json.loads((tiny_whisper_dir / "preprocessor_config.json").read_text())
    assert preprocessor["feature_extractor_type"] == "WhisperFeatureExtractor"
    assert preprocessor["sampling_rate"] == ASR_SAMPLE_RATE


def test_the_tokenizer_knows_whisper_special_and_timestamp_tokens(tiny_whisper_dir):
    from transformers import WhisperProcessor

    tokenizer = WhisperProcessor.from_pretrained(tiny_whisper_dir, local_files_only=True).tokenizer
    first_timestamp = tokenizer.convert_tokens_to_ids("<|0.00|>")
    assert first_timestamp == tokenizer.convert_tokens_to_ids("<|notimestamps|>") + 1
    assert tokenizer.all_special_ids[-1] + 1 == first_timestamp  # what WhisperTokenizer's offsets rely on
    assert tokenizer.convert_tokens_to_ids("<|30.00|>") == first_timestamp + 1500
    text = "Hello, how are you? Ça va."
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text  # byte-level: any text round-trips


# ---- the local recognizer equals transformers' own generate ---------------------------------------


def reference_transcript(recognizer, audio: np.ndarray, language: str | None) -> tuple[str, str]:
    """(text, language) as transformers gives them for this clip alone: its own detect_language and generate."""
    import torch

    model, processor = recognizer.model, recognizer.processor
    features = processor(audio, sampling_rate=ASR_SAMPLE_RATE, return_tensors="pt").input_features
    with torch.inference_mode():
        if language is None:
            token = int(model.detect_language(features)[0])
            language = processor.tokenizer.convert_ids_to_tokens(token).strip("<|>")
        tokens = model.generate(features, language=language, task="transcribe", return_timestamps=True)[0]
    eos = processor.tokenizer.eos_token_id
    text = processor.tokenizer.decode([int(t) for t in tokens if int(t) < eos]).strip()
    return text, language


def test_transcripts_equal_transformers_generate_alone_and_batched(recognizer, speech_wav, tmp_path_factory):
    clips = [
        samples_of(speech_wav),
        samples_of(espeak("Good morning to you all.", tmp_path_factory)),
        samples_of(espeak("Bonjour tout le monde.", tmp_path_factory, voice="fr")),
    ]
    languages = [None, "en", "fr"]
    expected = [reference_transcript(recognizer, clip, lang) for clip, lang in zip(clips, languages)]
    assert any(text for text, _ in expected)  # the random model does write something

    alone = [recognizer.transcribe(clip, language=lang) for clip, lang in zip(clips, languages)]
    assert [(t.text, t.language) for t in alone] == expected

    batches_before = recognizer.batches
    results: list[Transcript | None] = [None] * len(clips)
    gate = threading.Barrier(len(clips))

    def run(i: int) -> None:
        gate.wait()
        results[i] = recognizer.transcribe(clips[i], language=languages[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clips))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert [(t.text, t.language) for t in results if t is not None] == expected
    batches, requests = (a - b for a, b in zip(recognizer.batches, batches_before))
    assert requests == len(clips) and batches < len(clips)  # at least two clips shared a batch


def test_transcript_segments_are_timed_within_the_clip(recognizer, speech_wav):
    audio = samples_of(speech_wav)
    transcript = recognizer.transcribe(audio, language="en")
    assert transcript.duration_s == pytest.approx(audio.size / ASR_SAMPLE_RATE, abs=1e-3)
    assert transcript.segments, "Whisper's timestamp tokens give at least one segment"
    for segment in transcript.segments:
        assert 0.0 <= segment.start_s <= segment.end_s <= transcript.duration_s
        assert segment.text and segment.text in transcript.text
    starts = [s.start_s for s in transcript.segments]
    assert starts == sorted(starts)


def test_a_clip_over_30_seconds_runs_through_the_long_form_loop(recognizer, speech_wav):
    audio = np.concatenate([samples_of(speech_wav)] * 14)
    assert audio.size > 30 * ASR_SAMPLE_RATE
    transcript = recognizer.transcribe(audio, language="en")
    assert transcript.duration_s > 30
    assert all(s.end_s <= transcript.duration_s for s in transcript.segments)


def test_the_local_recognizer_meets_the_protocol(recognizer):
    assert isinstance(recognizer, SpeechRecognizer)
    assert "local Whisper" in recognizer.description


# ---- the Transcriber: one decoder, limits, errors naming the field -----------------------------------


def encode(wav: bytes, fmt: str, codec: str | None = None) -> bytes:
    import av

    audio, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    out = io.BytesIO()
    with av.open(out, "w", format=fmt) as container:
        stream = container.add_stream(codec or fmt, rate=48_000 if codec in ("libopus", "opus") else rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray((audio * 32767).astype(np.int16)[None, :], format="s16", layout="mono")
        frame.sample_rate = rate
        resampler = av.AudioResampler(format=stream.codec_context.format, layout="mono", rate=stream.rate)
        for piece in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(piece):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


@pytest.mark.parametrize(
    "fmt,codec", [("flac", None), ("mp3", "libmp3lame"), ("ogg", "libopus"), ("webm", "libopus"), ("ipod", "aac")]
)
def test_any_common_format_is_transcribed_like_the_wav(transcriber, speech_wav, fmt, codec):
    wav_transcript = transcriber.transcribe_bytes(speech_wav, language="en")
    other = transcriber.transcribe_bytes(encode(speech_wav, fmt, codec), language="en")
    assert other.language == "en"
    assert other.duration_s == pytest.approx(wav_transcript.duration_s, abs=0.2)  # codec padding


def test_base64_with_line_breaks_and_data_uris_are_accepted(transcriber, speech_wav):
    expected = transcriber.transcribe_bytes(speech_wav, language="en")
    wrapped = base64.encodebytes(speech_wav).decode()  # 76 columns, as `base64 file.wav` writes it
    assert "\n" in wrapped.strip()
    assert transcriber.transcribe_bytes(wrapped, language="en") == expected
    uri = "data:audio/wav;base64," + base64.b64encode(speech_wav).decode()
    assert transcriber.transcribe_bytes(uri, language="en") == expected


def test_language_names_and_codes_mean_the_same(transcriber, speech_wav):
    by_code = transcriber.transcribe_bytes(speech_wav, language="de")
    assert transcriber.transcribe_bytes(speech_wav, language="German") == by_code
    assert by_code.language == "de"
    assert transcriber.transcribe_bytes(speech_wav, language="auto").language is not None


def silent_wav(seconds: float) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, np.zeros(int(seconds * ASR_SAMPLE_RATE), np.float32), ASR_SAMPLE_RATE, format="WAV")
    return out.getvalue()


@pytest.mark.parametrize(
    "data,field,problem",
    [
        (b"not audio at all", "audio", "is not a readable audio file"),
        ("!!! not base64", "audio", "is not valid base64"),
        (b"", "audio", "is empty"),
        (silent_wav(1.0), "file", "is silent"),
    ],
)
def test_bad_audio_is_a_bad_input_naming_the_field(transcriber, data, field, problem):
    with pytest.raises(JobInputError) as caught:
        transcriber.transcribe_bytes(data, field=field)
    assert caught.value.field == field and problem in str(caught.value)


def test_limits_name_the_field_and_the_limit(recognizer, speech_wav):
    short = Transcriber(recognizer, max_seconds=1.0, max_bytes=10 * 1024 * 1024)
    with pytest.raises(JobInputError, match=r"^audio: is .*the limit is 1 s|^audio: is longer than the limit of 1 s"):
        short.transcribe_bytes(speech_wav)
    small = Transcriber(recognizer, max_seconds=60.0, max_bytes=1024 * 1024)
    with pytest.raises(JobInputError, match=r"^audio: is larger than 1 MB"):
        small.transcribe_bytes(speech_wav + b"\0" * (1024 * 1024))


@pytest.mark.parametrize("language", ["klingon", "x" * 1000, 5])
def test_an_unknown_language_is_a_bad_input_naming_language(transcriber, speech_wav, language):
    with pytest.raises(JobInputError) as caught:
        transcriber.transcribe_bytes(speech_wav, language=language)
    assert caught.value.field == "language"
    assert len(str(caught.value)) <= 300


def test_make_transcriber_is_none_without_a_model_and_loads_the_local_one(tiny_whisper_dir, settings):
    from fish_worker.asr.make_backend import make_transcriber
    from fish_worker.settings import AsrSettings

    assert make_transcriber(settings.model_copy(update={"asr": AsrSettings()})) is None
    configured = settings.model_copy(update={"asr": AsrSettings(model_dir=tiny_whisper_dir, max_seconds=12.5)})
    transcriber = make_transcriber(configured)
    assert transcriber is not None and transcriber.max_seconds == 12.5
    assert "local Whisper" in transcriber.description


def test_asr_settings_take_one_backend(tmp_path):
    from pydantic import ValidationError

    from fish_worker.settings import AsrSettings

    with pytest.raises(ValidationError, match="not both"):
        AsrSettings(model_dir=tmp_path, base_url="http://localhost:1/v1")
    with pytest.raises(ValidationError, match="http"):
        AsrSettings(base_url="localhost:1")
    assert AsrSettings(model_dir="", base_url="").model_dir is None


# ---- the batcher under random schedules ----------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", range(5))
def test_batcher_stress_every_request_ends_with_its_own_result(seed):
    rng = random.Random(seed)
    calls: list[list[int]] = []
    calls_lock = threading.Lock()

    def run_many(items, stops):
        with calls_lock:
            calls.append(list(items))
        time.sleep(rng.random() * 0.003)
        if any(item % 7 == 0 for item in items):  # a bad request fails only itself (retried alone)
            if len(items) == 1:
                raise ValueError(f"bad {items[0]}")
            raise ValueError("a bad item in the batch")
        return [item * 10 for item in items]

    batcher: Batcher[int, int] = Batcher(
        run_many, max_batch=rng.randint(1, 6), fits=lambda batch, item: (item % 5 == 0) == (batch[0] % 5 == 0)
    )
    outcomes: dict[int, object] = {}

    def client(first: int) -> None:
        for item in range(first, first + 20):
            time.sleep(rng.random() * 0.002)
            try:
                outcomes[item] = batcher.run(item)
            except ValueError as exc:
                outcomes[item] = str(exc)

    threads = [threading.Thread(target=client, args=(i * 100,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads)
    for i in range(8):
        for item in range(i * 100, i * 100 + 20):
            assert outcomes[item] == (f"bad {item}" if item % 7 == 0 else item * 10)
    assert all(len(batch) <= batcher.max_batch for batch in calls)
    assert all(len({item % 5 == 0 for item in batch}) == 1 for batch in calls)  # `fits` kept apart


def test_an_interrupted_batch_fails_its_requests_instead_of_leaving_them_waiting():
    started = threading.Event()
    release = threading.Event()

    def run_many(items, stops):
        if 1 in items:
            started.set()
            release.wait(10)
            raise KeyboardInterrupt  # not an Exception: not retried
        return list(items)

    batcher: Batcher[int, int] = Batcher(run_many, max_batch=4)
    errors: list[BaseException] = []

    def first() -> None:
        try:
            batcher.run(1)
        except BaseException as exc:  # noqa: BLE001 - the interrupt, caught in its own thread
            errors.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    assert started.wait(10)
    waiting = threading.Thread(target=lambda: errors.append(RuntimeError(str(batcher.run(2)))))
    waiting.start()
    time.sleep(0.05)
    release.set()
    thread.join(10)
    waiting.join(10)
    assert not thread.is_alive() and not waiting.is_alive()
    assert isinstance(errors[0], KeyboardInterrupt) or isinstance(errors[1], KeyboardInterrupt)
    assert any(str(e) == "2" for e in errors)  # the later request ran in its own batch


def test_transcript_types_are_frozen_values():
    segment = TranscriptSegment(start_s=0.0, end_s=1.0, text="hi")
    transcript = Transcript(text="hi", language="en", duration_s=1.0, segments=(segment,))
    with pytest.raises(AttributeError):
        transcript.text = "changed"  # type: ignore[misc]
    assert transcript == Transcript(text="hi", language="en", duration_s=1.0, segments=(segment,))
    assert BatchInterrupted.__mro__[1] is RuntimeError


@pytest.mark.timeout(300)
def test_concurrent_transcriptions_on_random_schedules_each_get_their_own_transcript(
    recognizer, speech_wav, tmp_path_factory
):
    """Clips of different lengths and languages (one over 30 s, which runs alone), sent from threads at
    random moments: every call ends, with the transcript its clip gets alone."""
    base = samples_of(speech_wav)
    other = samples_of(espeak("Good morning to you all.", tmp_path_factory))
    clips = [
        (base, "en"),
        (other, None),
        (base[: base.size // 2], "de"),
        (np.concatenate([other] * 20), "en"),
        (other[::-1].copy(), "fr"),
    ]
    expected = [recognizer.transcribe(audio, language=lang) for audio, lang in clips]
    rng = random.Random(7)
    schedule = [rng.randrange(len(clips)) for _ in range(14)]
    results: dict[int, Transcript | BaseException] = {}

    def run(slot: int, clip: int, delay: float) -> None:
        time.sleep(delay)
        try:
            results[slot] = recognizer.transcribe(clips[clip][0], language=clips[clip][1])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            results[slot] = exc

    threads = [
        threading.Thread(target=run, args=(slot, clip, rng.random() * 0.5)) for slot, clip in enumerate(schedule)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(240)
    assert not any(t.is_alive() for t in threads)
    assert [results[slot] for slot in range(len(schedule))] == [expected[clip] for clip in schedule]


def test_languages_by_code_and_name():
    from fish_worker.asr.languages import language_code, language_name

    assert language_code("English") == "en" and language_code(" de ") == "de" and language_code("castilian") == "es"
    assert language_code("klingon") is None
    assert language_name("en") == "english" and language_name("xx") is None


@pytest.mark.parametrize(
    "tag, code",
    [
        ("de-DE", "de"),
        ("pt_BR", "pt"),
        ("zh-Hant-TW", "zh"),
        ("zh-yue", "yue"),
        ("yue-HK", "yue"),
        ("cmn-Hans", "zh"),
        ("nb-NO", "no"),
        ("nn", "nn"),
        ("no", "no"),
        ("jv", "jw"),
        ("jw", "jw"),
        ("fil-PH", "tl"),
        ("iw", "he"),
        ("he", "he"),
        ("in", "id"),
        ("ji", "yi"),
        ("mo", "ro"),
        ("sr-Latn-RS", "sr"),
        ("haw", "haw"),
        ("English", "en"),
        ("haitian creole", "ht"),
        ("xx-YY", "xx"),
    ],
)
def test_bcp47_tags_read_as_whisper_languages(tag, code):
    from fish_worker.asr.languages import language_name, whisper_language

    assert whisper_language(tag) == code
    assert code == "xx" or language_name(code) is not None  # a code Whisper's table has


# ---- stopping a transcription (its client left) --------------------------------------------------------


def test_a_stopped_transcription_ends_at_its_next_decoding_step(recognizer, speech_wav):
    """A long clip (the long-form loop over 30 s windows) stopped after a few decoder steps: the call
    raises TranscriptionStopped at once, long before the steps the whole call takes."""
    audio = np.concatenate([samples_of(speech_wav)] * 14)
    with DecoderSteps(recognizer.model) as whole:
        recognizer.transcribe(audio, language="en")
    assert whole.count > 20

    stop = threading.Event()
    outcome: list[BaseException | Transcript] = []

    def run() -> None:
        try:
            outcome.append(recognizer.transcribe(audio, language="en", stop=stop))
        except BaseException as exc:  # noqa: BLE001 - asserted below
            outcome.append(exc)

    with DecoderSteps(recognizer.model, delay_s=0.02) as steps:
        thread = threading.Thread(target=run)
        thread.start()
        at_stop = steps.wait_for(3)
        stop.set()
        thread.join(60)
        assert not thread.is_alive()
    assert isinstance(outcome[0], TranscriptionStopped) and outcome[0].field == "audio"
    assert steps.count - at_stop <= 2  # the step running when it was stopped, and no other
    assert recognizer.idle


def test_stopping_one_row_of_a_batch_leaves_the_others_transcripts_unchanged(recognizer, speech_wav, tmp_path_factory):
    from fish_worker.asr.whisper import _Clip

    kept = samples_of(espeak("Good morning to you all.", tmp_path_factory))
    alone = recognizer.transcribe(kept, language="en")
    stopped, never = threading.Event(), threading.Event()
    with DecoderSteps(recognizer.model, delay_s=0.01) as steps:
        stopper = threading.Thread(target=lambda: (steps.wait_for(2), stopped.set()))
        stopper.start()
        # One batch of two rows, as the batcher would run it: the first row stopped at its second step.
        results = recognizer._transcribe_many(
            [_Clip(samples_of(speech_wav), "en"), _Clip(kept, "en")], [stopped, never]
        )
        stopper.join(10)
    assert stopped.is_set()
    assert results[1] == alone  # the stopping criterion changes nothing for a row that is not stopped
    # Stopped when every row has: the whole call ends.
    with pytest.raises(TranscriptionStopped):
        recognizer._transcribe_many([_Clip(kept, "en")], [stopped])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", range(2))
def test_transcriptions_stopped_at_random_moments_all_end_and_the_others_are_unchanged(
    recognizer, speech_wav, tmp_path_factory, seed
):
    """Random schedules: concurrent calls (batched together, one clip over 30 s alone), some stopped at a
    random moment (before they start, while waiting for a batch, while decoding). Every call ends; an
    unstopped one with its solo transcript; a stopped one with its transcript or TranscriptionStopped;
    afterwards nothing is running or waiting."""
    base = samples_of(speech_wav)
    other = samples_of(espeak("Good morning to you all.", tmp_path_factory))
    clips = [(base, "en"), (other, None), (base[: base.size // 2], "de"), (np.concatenate([other] * 20), "en")]
    expected = [recognizer.transcribe(audio, language=lang) for audio, lang in clips]
    rng = random.Random(seed)
    schedule = [(rng.randrange(len(clips)), rng.random() < 0.5, rng.random() * 0.6) for _ in range(12)]
    stops = [threading.Event() for _ in schedule]
    results: dict[int, Transcript | BaseException] = {}

    def run(slot: int) -> None:
        clip, _, _ = schedule[slot]
        time.sleep(rng.random() * 0.3)
        try:
            results[slot] = recognizer.transcribe(clips[clip][0], language=clips[clip][1], stop=stops[slot])
        except BaseException as exc:  # noqa: BLE001 - asserted below
            results[slot] = exc

    with DecoderSteps(recognizer.model, delay_s=0.003):
        threads = [threading.Thread(target=run, args=(slot,)) for slot in range(len(schedule))]
        for thread in threads:
            thread.start()
        for slot, (_, stopped, when) in sorted(enumerate(schedule), key=lambda s: s[1][2]):
            if stopped:
                threading.Timer(when, stops[slot].set).start()
        for thread in threads:
            thread.join(240)
    assert not any(t.is_alive() for t in threads)
    for slot, (clip, stopped, _) in enumerate(schedule):
        if stopped and isinstance(results[slot], TranscriptionStopped):
            continue
        assert results[slot] == expected[clip], (slot, stopped)
    assert any(isinstance(r, TranscriptionStopped) for r in results.values())
    assert recognizer.idle
