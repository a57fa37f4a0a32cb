"""Each door's wire model becomes the service's SynthesisRequest in one place, every field carried over.

No model is loaded here: these are the hand-offs alone (the doors' audio is tested elsewhere).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from fish_worker.errors import ErrorKind, JobInputError
from fish_worker.jobs.inputs import JobInput
from fish_worker.settings import Settings
from fish_worker.tts.requests import ReferenceClip, SavedVoiceRef, SynthesisRequest

SETTINGS = Settings(max_tokens_limit=2048)


def test_a_job_carries_every_synthesis_field():
    job = JobInput(
        message="Hi there.",
        temperature=0.5,
        top_p=0.6,
        repetition_penalty=1.3,
        max_tokens=77,
        seed=9,
        stream=True,
        voice_id="anna",
    )
    assert job.to_synthesis() == SynthesisRequest(
        text="Hi there.",
        temperature=0.5,
        top_p=0.6,
        repetition_penalty=1.3,
        frames_per_sentence=77,
        seed=9,
        stream=True,
        voice=SavedVoiceRef("anna"),
    )


def test_a_job_reference_clip_is_its_voice():
    job = JobInput(message="Hi.", reference_audio="UklGRg==", reference_text="hello")
    assert job.to_synthesis().voice == ReferenceClip(b"RIFF", "hello")  # base64 decoded once, at validation
    assert JobInput(message="Hi.").to_synthesis().voice is None


def test_chat_turn_keeps_reply_tokens_apart_from_frames_per_sentence():
    job = JobInput(message="Hi.", max_tokens=40, seed=2, system_prompt="Be brief.", conversation_id="c-1")
    chat = job.to_turn("chat", chat_frames_per_sentence=300)
    assert (chat.reply_tokens, chat.speech.frames_per_sentence) == (40, 300)
    assert (chat.message, chat.system_prompt, chat.conversation_id, chat.speech.seed) == ("Hi.", "Be brief.", "c-1", 2)
    tts = job.to_turn("tts", chat_frames_per_sentence=300)
    assert tts.speech.frames_per_sentence == 40  # tts mode: max_tokens is frames per sentence


def test_openai_speech_request_carries_text_voice_seed_frames_and_streaming():
    from fish_worker.server.routers.openai_speech import SpeechRequest, adjustments, synthesis_request

    body = SpeechRequest(input="Hello there.", voice="narrator", seed=5, max_tokens=33, stream=True, speed=1.5)
    assert synthesis_request(body, SETTINGS, "narrator") == SynthesisRequest(
        text="Hello there.", frames_per_sentence=33, seed=5, stream=True, voice=SavedVoiceRef("narrator")
    )
    assert synthesis_request(SpeechRequest(input="Hi.", stream_format="sse"), SETTINGS, None).stream
    assert synthesis_request(SpeechRequest(input="Hi."), SETTINGS, None).voice is None
    assert adjustments(body, "mp3").speed == 1.5
    assert adjustments(SpeechRequest(input="Hi.", response_format="pcm"), "pcm16").sample_rate == 24_000


@pytest.mark.parametrize(
    "fields, field", [({"input": "  "}, "message"), ({"input": "Hi.", "max_tokens": 4096}, "max_tokens")]
)
def test_openai_speech_request_refuses_what_the_service_would(fields, field):
    from fish_worker.server.routers.openai_speech import SpeechRequest, synthesis_request

    with pytest.raises(JobInputError) as caught:
        synthesis_request(SpeechRequest(**fields), SETTINGS, None)
    assert (caught.value.kind, caught.value.field) == (ErrorKind.BAD_INPUT, field)


def test_the_hand_off_types_do_not_import_torch():
    code = (
        "import sys, fish_worker.tts.requests, fish_worker.dialogue.requests, fish_worker.jobs.outputs, "
        "fish_worker.jobs.output_adjustments; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"
