"""Speech in through the job API, on the tiny checkpoint, the tiny chat model and the tiny Whisper:
a voice message (`audio`) answered in chat mode and spoken back in tts mode, the transcript first in a
streamed job and stored as the user's turn, the transcribe action, and the errors naming `audio`."""

from __future__ import annotations

import base64
import shutil
import subprocess

import pytest

from fish_worker.asr.transcriber import Transcriber
from fish_worker.asr.whisper import WhisperRecognizer
from fish_worker.conversations import MemoryConversationStore
from fish_worker.dialogue.llm import ChatModel
from fish_worker.dialogue.turns import ConversationService
from fish_worker.jobs.runner import JobRunner
from fish_worker.jobs.transcription import NOT_CONFIGURED
from fish_worker.settings import ChatSettings
from helpers import FRAMES, DecoderSteps, expected_audio, expected_reply, run_job, wav_b64

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def voice_message(tmp_path_factory) -> str:
    """Base64 (wrapped at 76 columns, as `base64 file.wav` writes it) of real speech from espeak-ng."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng; .ci/run installs it)")
    path = tmp_path_factory.mktemp("voice") / "question.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "What is the weather like today?"], check=True, timeout=60)
    return base64.encodebytes(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def transcriber(tiny_whisper_dir) -> Transcriber:
    return Transcriber(
        WhisperRecognizer.load(tiny_whisper_dir, device="cpu"), max_seconds=30.0, max_bytes=4 * 1024 * 1024
    )


@pytest.fixture(scope="module")
def heard(transcriber, voice_message) -> str:
    """What the tiny Whisper hears in the voice message (gibberish, but a fixed one)."""
    text = transcriber.transcribe_bytes(voice_message, language="en").text
    assert text.strip()
    return text


@pytest.fixture(scope="module")
def chat_model(tiny_chat_model_dir):
    return ChatModel.load(tiny_chat_model_dir, device="cpu")


@pytest.fixture(scope="module")
def chat_settings(settings, tiny_chat_model_dir):
    return settings.model_copy(update={"chat": ChatSettings(model_dir=tiny_chat_model_dir, frames_per_sentence=FRAMES)})


@pytest.fixture
def store():
    return MemoryConversationStore(ttl_s=60, max_conversations=10)


@pytest.fixture
def chat_runner(service, chat_settings, chat_model, store, transcriber) -> JobRunner:
    return JobRunner(
        service,
        chat_settings,
        ConversationService(service, store, chat=chat_model, settings=chat_settings),
        transcriber=transcriber,
    )


@pytest.fixture
def tts_runner(service, settings, transcriber) -> JobRunner:
    return JobRunner(service, settings, transcriber=transcriber)


def test_a_voice_message_is_answered_in_chat_mode(
    chat_runner, chat_model, chat_settings, service, heard, voice_message, store
):
    [out] = run_job(
        chat_runner, {"audio": voice_message, "language": "en", "max_tokens": 20, "seed": 3, "conversation_id": "v-1"}
    )
    assert out["transcript"] == heard
    reply = expected_reply(chat_model, chat_settings, [{"role": "user", "content": heard}], seed=3, max_tokens=20)
    assert out["text"] == reply
    assert out["audio"] == expected_audio(service, reply, seed=3, voice=None)
    # The conversation keeps the transcript as the user's turn.
    assert store.get("v-1").history()[0] == {"role": "user", "content": heard}


def test_a_streamed_voice_message_sends_its_transcript_first(chat_runner, heard, voice_message):
    chunks = run_job(
        chat_runner, {"audio": voice_message, "language": "en", "max_tokens": 20, "seed": 4, "stream": True}
    )
    assert chunks[0] == {"transcript": heard}
    assert any("text_delta" in c for c in chunks[1:]) and any("audio" in c for c in chunks[1:])
    assert not any("error" in c for c in chunks)


def test_in_tts_mode_the_transcript_is_spoken_back(tts_runner, service, heard, voice_message):
    [out] = run_job(
        tts_runner, {"audio": voice_message, "language": "en", "mode": "tts", "seed": 2, "max_tokens": FRAMES}
    )
    assert out["transcript"] == heard
    assert out["audio"] == expected_audio(service, heard, seed=2, voice=None)


def test_the_transcribe_action_returns_the_transcript_with_timed_segments(tts_runner, transcriber, voice_message):
    [out] = run_job(tts_runner, {"action": "transcribe", "audio": voice_message, "language": "english"})
    expected = transcriber.transcribe_bytes(voice_message, language="en")
    assert out["transcript"] == expected.text and out["language"] == "en"
    assert out["duration_s"] == expected.duration_s
    assert out["segments"] == [{"start_s": s.start_s, "end_s": s.end_s, "text": s.text} for s in expected.segments]
    assert all(0 <= s["start_s"] <= s["end_s"] <= out["duration_s"] for s in out["segments"])


@pytest.mark.parametrize(
    "job_input,error",
    [
        ({"audio": "AAAA", "message": "hi"}, "message: give either message or audio (a voice message), not both"),
        ({}, "message: Field required"),
        ({"audio": "   "}, "audio: is empty"),
        ({"audio": "!!"}, "audio: is not valid base64"),
        ({"audio": base64.b64encode(b"not audio").decode()}, "audio: is not a readable audio file"),
        ({"audio": wav_b64(seconds=1.0, amplitude=0.0)}, "audio: is silent"),
        ({"audio": wav_b64(seconds=40.0)}, "audio: is 40.0 s long, the limit is 30 s"),
        ({"audio": 5}, "audio: Input should be a valid string"),
        ({"action": "transcribe"}, "audio: Field required"),
        ({"action": "transcribe", "audio": wav_b64(), "language": "klingon"}, "language: 'klingon' is not a language"),
        ({"action": "transcribe", "audio": wav_b64(), "extra": 1}, "extra: unknown field"),
        ({"action": "transcribe", "audio": "!!"}, "audio: is not valid base64"),
    ],
)
def test_bad_voice_messages_are_refused_naming_the_field(tts_runner, job_input, error):
    [out] = run_job(tts_runner, job_input)
    assert out["error"].startswith(error), out


@pytest.mark.parametrize("job_input", [{"audio": wav_b64()}, {"action": "transcribe", "audio": wav_b64()}])
def test_a_worker_without_speech_recognition_says_how_to_configure_it(runner, job_input):
    [out] = run_job(runner, job_input)
    assert out == {"error": f"audio: {NOT_CONFIGURED}"}


def test_an_unknown_action_lists_transcribe(runner):
    [out] = run_job(runner, {"action": "dance"})
    assert "transcribe" in out["error"]


def test_a_transcript_is_held_to_the_message_limits(settings):
    from fish_worker.errors import JobInputError
    from fish_worker.jobs.inputs import parse_job_input

    request = parse_job_input({"audio": "AAAA", "mode": "tts"}, settings)
    with pytest.raises(JobInputError, match=r"^audio: contains no recognisable speech"):
        request.with_transcript("  ", settings)
    with pytest.raises(
        JobInputError,
        match=rf"^audio: has a transcript that is 5000 characters, the limit is "
        rf"{settings.max_text_chars}",
    ):
        request.with_transcript("a" * 5000, settings)
    heard = request.with_transcript("Hello there.", settings)
    assert (heard.message, heard.audio, heard.mode) == ("Hello there.", None, "tts")


@pytest.mark.timeout(600)
def test_the_worker_starts_with_speech_in_and_warms_it_up(settings, tiny_whisper_dir, voice_message, heard, caplog):
    from fish_worker.settings import AsrSettings
    from fish_worker.worker import build_runner

    configured = settings.model_copy(
        update={"warmup": True, "asr": AsrSettings(model_dir=tiny_whisper_dir, max_seconds=30.0)}
    )
    with caplog.at_level("INFO", logger="fish_worker"):
        runner = build_runner(configured)
    assert runner.transcriber is not None and runner.transcriber.recognizer.batches[1] == 1  # the warm-up clip
    assert any("speech in: local Whisper" in r.getMessage() for r in caplog.records)
    [out] = run_job(runner, {"action": "transcribe", "audio": voice_message, "language": "en"})
    assert out["transcript"] == heard


def test_a_job_cancelled_while_its_voice_message_is_transcribed_stops_the_recognizer(tts_runner, transcriber):
    """Cancelling a job mid-transcription stops Whisper at its next decoding step, and the cancellation
    returns only once the recognizer has ended (so a slot freed after it is really free)."""
    import asyncio

    from fish_worker.jobs.job import Job

    recognizer = transcriber.recognizer
    clip = wav_b64(seconds=25.0)
    with DecoderSteps(recognizer.model) as whole:
        transcriber.transcribe_bytes(clip, language="en")

    async def cancel_mid_way(steps: DecoderSteps) -> int:
        job = Job(id="voice-1", input={"audio": clip, "language": "en", "mode": "tts"})
        task = asyncio.ensure_future(tts_runner.result(job))
        await asyncio.to_thread(steps.wait_for, 3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return steps.count

    with DecoderSteps(recognizer.model, delay_s=0.05) as steps:
        after_cancel = asyncio.run(cancel_mid_way(steps))
        assert recognizer.idle  # the recognizer had ended when the cancellation returned
        assert steps.count == after_cancel < whole.count
