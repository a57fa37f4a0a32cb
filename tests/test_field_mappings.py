"""Every door hands each of its fields to the service: the same request through two doors, same seed, same audio.

The RunPod job (run_job) is the reference; a door that drops or hard-codes a field (voice, seed, speed,
sample rate, format, sampling settings, reference transcript) gives other audio and fails here.
scripts/mutants.py breaks those mappings one line at a time to show these tests notice.
"""

from __future__ import annotations

import base64

import httpx
import ormsgpack
import pytest
from httpx_ws import connect_ws

from fish_worker.server import create_app
from fish_worker.server.fish_models import FishTTSRequest
from fish_worker.server.fish_synthesis import plan_speech
from helpers import asgi_call as call
from helpers import run_job, serve_app, wav_b64

TEXT = "Hello there. How are you?"
REFERENCE = wav_b64(seconds=1.0)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def app(runner, app_settings):
    # No keys, so no tenants: the doors see the voices run_job saves (tenancy is tested in test_server_doors).
    return create_app(runner, app_settings(auth_disabled=True))


@pytest.fixture(scope="module")
def saved_voice(runner) -> str:
    [saved] = run_job(
        runner,
        {
            "action": "save_voice",
            "voice_id": "mapper",
            "reference_audio": REFERENCE,
            "reference_text": "A voice to map.",
            "overwrite": True,
        },
    )
    assert saved["voice"]["voice_id"] == "mapper", saved
    return "mapper"


def job_pcm(runner, **fields) -> bytes:
    """What the RunPod job gives for these fields, as 16-bit PCM bytes (a streamed job's chunks joined)."""
    chunks = run_job(runner, {"message": TEXT, "max_tokens": 6, "audio_format": "pcm16", **fields})
    assert chunks and all("error" not in c for c in chunks), chunks
    return b"".join(base64.b64decode(c["audio"]) for c in chunks)


# ---- the RunPod job itself: fields the service must use -----------------------------------------------------


def test_job_reference_text_and_voice_id_reach_the_voice_prompt(runner, saved_voice):
    with_text = job_pcm(runner, seed=2, reference_audio=REFERENCE, reference_text="A voice to map.")
    without_text = job_pcm(runner, seed=2, reference_audio=REFERENCE)
    assert with_text != without_text  # the transcript is part of the prompt
    assert job_pcm(runner, seed=2, voice_id=saved_voice) == with_text  # the saved voice is that prompt
    assert job_pcm(runner, seed=2) not in (with_text, without_text)


def test_job_max_tokens_bounds_each_sentence(runner):
    [one] = run_job(runner, {"message": "Hello there.", "max_tokens": 3, "seed": 1})
    [four] = run_job(runner, {"message": "Hello there.", "max_tokens": 4, "seed": 1})
    assert len(one["audio"]) == 3 * 2048 and len(four["audio"]) == 4 * 2048


def test_job_audio_format_is_the_output_format_whole_and_streamed(runner):
    [whole] = run_job(runner, {"message": TEXT, "max_tokens": 4, "seed": 1, "audio_format": "wav"})
    streamed = run_job(runner, {"message": TEXT, "max_tokens": 4, "seed": 1, "audio_format": "wav", "stream": True})
    assert whole["audio_format"] == "wav" and base64.b64decode(whole["audio"])[:4] == b"RIFF"
    assert streamed[0]["audio_format"] == "wav" and base64.b64decode(streamed[0]["audio"])[:4] == b"RIFF"


# ---- OpenAI /v1/audio/speech ---------------------------------------------------------------------------------


def openai_pcm(app, **fields) -> bytes:
    body = {"model": "tts-1", "input": TEXT, "voice": "alloy", "response_format": "pcm", "max_tokens": 6, **fields}
    response = call(app, "POST", "/v1/audio/speech", json=body)
    assert response.status_code == 200, response.text
    return response.content


def test_openai_speech_is_the_job_with_the_same_voice_seed_speed_and_rate(app, runner, saved_voice):
    # OpenAI's pcm is 24 kHz; voice is a saved voice id; speed and seed carry over. The door streams
    # unless told `stream: false`, as the job does with `stream: true`.
    same = dict(seed=4, sample_rate=24_000, mode="tts", stream=True)
    assert openai_pcm(app, seed=4, stream=False) == job_pcm(runner, **{**same, "stream": False})
    assert openai_pcm(app, seed=4) == job_pcm(runner, **same)
    assert openai_pcm(app, seed=4, voice=saved_voice) == job_pcm(runner, **same, voice_id=saved_voice)
    assert openai_pcm(app, seed=4, speed=1.5) == job_pcm(runner, **same, speed=1.5)
    assert openai_pcm(app, seed=4, sample_rate=16_000) == job_pcm(runner, **{**same, "sample_rate": 16_000})
    assert openai_pcm(app, seed=4, max_tokens=3) == job_pcm(runner, **same, max_tokens=3)
    assert openai_pcm(app, seed=4, voice=saved_voice) != openai_pcm(app, seed=4)


def test_openai_response_format_is_the_file_format(app):
    response = call(
        app,
        "POST",
        "/v1/audio/speech",
        json={"input": TEXT, "voice": "alloy", "response_format": "wav", "max_tokens": 4, "seed": 1},
    )
    assert response.status_code == 200 and response.content[:4] == b"RIFF"
    assert response.headers["content-type"] == "audio/wav"


# ---- seed /run and RunPod /v2: the job input as given ----------------------------------------------------------


def test_seed_run_is_the_job(app, runner, saved_voice):
    fields = {
        "message": TEXT,
        "max_tokens": 6,
        "seed": 7,
        "audio_format": "pcm16",
        "voice_id": saved_voice,
        "speed": 1.25,
        "volume": -3.0,
        "sample_rate": 22050,
        "temperature": 0.4,
        "top_p": 0.5,
        "repetition_penalty": 1.5,
    }
    response = call(app, "POST", "/run", json={"input": fields})
    assert response.status_code == 200, response.text
    assert response.json()["output"] == run_job(runner, fields)[0]
    streamed = call(app, "POST", "/run", json={"input": {**fields, "stream": True}})
    assert streamed.headers["content-type"].startswith("application/x-ndjson")


def test_v2_runsync_is_the_job(app, runner, saved_voice):
    fields = {
        "message": TEXT,
        "max_tokens": 6,
        "seed": 8,
        "audio_format": "pcm16",
        "voice_id": saved_voice,
        "speed": 0.8,
        "temperature": 0.4,
    }
    response = call(app, "POST", "/v2/ep/runsync", json={"input": fields})
    assert response.json()["status"] == "COMPLETED", response.text
    assert response.json()["output"] == run_job(runner, fields)[0]


# ---- Fish Audio /v1/tts: the request's fields in the plan the service runs --------------------------------------


def test_fish_request_fields_reach_the_synthesis_plan(service, settings, saved_voice):
    request = FishTTSRequest.model_validate(
        {
            "text": TEXT,
            "temperature": 0.35,
            "top_p": 0.45,
            "repetition_penalty": 1.55,
            "max_new_tokens": 17,
            "format": "wav",
            "sample_rate": 16_000,
            "prosody": {"speed": 1.3, "volume": -4.0},
            "reference_id": saved_voice,
        }
    )
    plan = plan_speech(request, service.voices, service.voices.store, settings)
    assert (plan.speech.temperature, plan.speech.top_p, plan.speech.repetition_penalty) == (0.35, 0.45, 1.55)
    assert plan.speech.frames_per_sentence == 17
    assert (plan.adjustments.sample_rate, plan.adjustments.speed, plan.adjustments.volume_db) == (16_000, 1.3, -4.0)
    saved = service.voices.saved_voice(saved_voice)
    assert plan.speech.voice.text == saved.text and plan.speech.voice.codes.equal(saved.codes)


def test_fish_references_keep_their_transcripts(service, settings):
    request = FishTTSRequest.model_validate(
        {
            "text": TEXT,
            "references": [{"audio": REFERENCE, "text": "First clip."}, {"audio": REFERENCE, "text": "Second clip."}],
        }
    )
    plan = plan_speech(request, service.voices, service.voices.store, settings)
    assert plan.speech.voice.text == "First clip. Second clip."


def test_fish_tts_audio_follows_format_and_sample_rate(app, service):
    body = {"text": "Hello there.", "format": "pcm", "max_new_tokens": 4, "sample_rate": 22050, "chunk_length": 100}
    response = call(app, "POST", "/v1/tts", json=body)
    assert response.status_code == 200 and response.headers["content-type"].startswith("audio/")
    assert not response.content.startswith(b"RIFF")  # raw PCM, no header
    samples = len(response.content) // 2
    assert abs(samples - 4 * service.codec.samples_per_frame / 2) <= 16, samples  # 4 frames at half the rate


# ---- every door: the caller's tenant reaches the service (its saved voices) -----------------------------------


def test_a_tenants_saved_voice_speaks_through_every_door(runner, app_settings):
    app = create_app(runner, app_settings(api_keys="carol:carol-key"))
    carol = {"Authorization": "Bearer carol-key"}
    saved = call(
        app,
        "POST",
        "/run",
        headers=carol,
        json={
            "input": {
                "action": "save_voice",
                "voice_id": "carols",
                "reference_audio": REFERENCE,
                "reference_text": "Carol.",
            }
        },
    )
    assert saved.status_code == 200, saved.text
    job = {"message": "Hi.", "voice_id": "carols", "max_tokens": 3, "seed": 1, "audio_format": "pcm16"}

    seed_run = call(app, "POST", "/run", headers=carol, json={"input": job})
    assert seed_run.status_code == 200, seed_run.text
    runsync = call(app, "POST", "/v2/ep/runsync", headers=carol, json={"input": job})
    assert runsync.json()["status"] == "COMPLETED", runsync.text
    assert runsync.json()["output"] == seed_run.json()["output"]
    openai = call(
        app,
        "POST",
        "/v1/audio/speech",
        headers=carol,
        json={"input": "Hi.", "voice": "carols", "response_format": "wav", "max_tokens": 3, "seed": 1},
    )
    assert openai.status_code == 200, openai.text
    fish = call(
        app,
        "POST",
        "/v1/tts",
        headers=carol,
        json={"text": "Hi.", "reference_id": "carols", "format": "wav", "max_new_tokens": 3},
    )
    assert fish.status_code == 200, fish.text


# ---- one rule, one message: the same bad value through every door ---------------------------------------------


@pytest.mark.parametrize("fmt, rate", [("mp3", 9000), ("mp3", 96000)])
def test_a_rate_the_format_cannot_carry_is_the_same_error_on_every_door(app, runner, fmt, rate):
    [job] = run_job(runner, {"message": "Hi.", "audio_format": fmt, "sample_rate": rate})
    seed = call(app, "POST", "/run", json={"input": {"message": "Hi.", "audio_format": fmt, "sample_rate": rate}})
    openai = call(app, "POST", "/v1/audio/speech", json={"input": "Hi.", "response_format": fmt, "sample_rate": rate})
    fish = call(app, "POST", "/v1/tts", json={"text": "Hi.", "format": fmt, "sample_rate": rate})
    assert (seed.status_code, openai.status_code, fish.status_code) == (400, 400, 400)
    messages = {job["error"], seed.json()["error"], openai.json()["error"]["message"], fish.json()["message"]}
    assert len(messages) == 1, messages
    assert job["error"].startswith("sample_rate: ")


# Each door, its name for the text field, and the error it answers for a job input's fields (the text in
# `message`), read where the door puts it. The job doors share the job input, so their field names are the
# job's; OpenAI's text is `input`, Fish's `text` (on both Fish doors: the live `start` event's TTSRequest too).
JOB_DOORS = ("job", "seed /run", "/v2 runsync")


def job_door_error(app, runner, door: str, fields: dict) -> str:
    if door == "job":
        [out] = run_job(runner, fields)
        return out["error"]
    if door == "seed /run":
        response = call(app, "POST", "/run", json={"input": fields})
        assert response.status_code == 400, response.text
        return response.json()["error"]
    response = call(app, "POST", "/v2/ep/runsync", json={"input": fields})
    assert response.json()["status"] == "FAILED", response.text
    return response.json()["error"]


def openai_error(app, body: dict) -> str:
    response = call(app, "POST", "/v1/audio/speech", json={"voice": "alloy", **body})
    assert response.status_code == 400, response.text
    return response.json()["error"]["message"]


def fish_error(app, body: dict) -> str:
    response = call(app, "POST", "/v1/tts", json=body)
    assert response.status_code == 400, response.text
    return response.json()["message"]


@pytest.fixture(scope="module")
def live_url(app):
    with serve_app(app) as (host, port):
        yield f"http://{host}:{port}"


def live_error(live_url, request: dict) -> str:
    """The finish event's message when a live session starts with `request`."""
    with httpx.Client(base_url=live_url) as http, connect_ws("/v1/tts/live", client=http) as ws:
        ws.send_bytes(ormsgpack.packb({"event": "start", "request": request}))
        finish = ormsgpack.unpackb(ws.receive_bytes(timeout=60))
    assert finish["event"] == "finish" and finish["reason"] == "error", finish
    return finish["message"]


MANY_SENTENCES = "Hello there. " * 101  # 101 sentences at any sentence length (FISH_MAX_SENTENCES: 100)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("x" * 2001, "is 2001 characters, the limit is 2000"),
        (MANY_SENTENCES, "has 101 sentences, the limit is 100 (FISH_MAX_SENTENCES)"),
        ("   ", "must contain text"),
    ],
)
def test_text_over_a_limit_is_the_same_error_on_every_door(app, runner, live_url, text, problem):
    errors = {door: job_door_error(app, runner, door, {"message": text}) for door in JOB_DOORS}
    assert errors == dict.fromkeys(JOB_DOORS, f"message: {problem}")
    assert openai_error(app, {"input": text}) == f"input: {problem}"
    assert fish_error(app, {"text": text}) == f"text: {problem}"
    if text.strip():  # a live start may carry no text (it comes in events)
        assert live_error(live_url, {"text": text}) == f"text: {problem}"


@pytest.mark.parametrize(
    "field, value, problem",
    [
        ("temperature", 1.5, "Input should be less than or equal to 1"),
        ("temperature", -0.1, "Input should be greater than or equal to 0"),
        ("top_p", 1.01, "Input should be less than or equal to 1"),
        ("top_p", -0.5, "Input should be greater than or equal to 0"),
        ("repetition_penalty", 2.0, "Input should be less than 2"),
        ("repetition_penalty", 0.0, "Input should be greater than 0"),
    ],
)
def test_a_sampling_value_out_of_range_is_the_same_error_on_every_door(app, runner, live_url, field, value, problem):
    # One range on every door (engine/sampling_rules.py); the OpenAI door has no sampling fields.
    errors = {door: job_door_error(app, runner, door, {"message": "Hi.", field: value}) for door in JOB_DOORS}
    assert errors == dict.fromkeys(JOB_DOORS, f"{field}: {problem}")
    assert fish_error(app, {"text": "Hi.", field: value}) == f"{field}: {problem}"
    assert live_error(live_url, {"text": "Hi.", field: value}) == f"{field}: {problem}"


def test_the_sampling_range_ends_are_accepted_on_every_door(app, runner):
    ends = {"temperature": 0.0, "top_p": 0.0, "repetition_penalty": 1.99}
    [job] = run_job(runner, {"message": "Hi.", "max_tokens": 2, "seed": 1, **ends})
    assert "error" not in job, job
    fish = call(app, "POST", "/v1/tts", json={"text": "Hi.", "format": "wav", "max_new_tokens": 2, **ends})
    assert fish.status_code == 200, fish.text


OPUS_AT_16K = "sample_rate: opus is always 48000 Hz; leave sample_rate out or choose another audio_format"


def test_a_sample_rate_with_opus_is_refused_alike_and_ignored_by_the_fish_doors(app, runner):
    # The one rule (jobs/output_adjustments.py), its Fish leniency explicit there: pipecat sends its
    # pipeline's rate with every format, and Fish Audio's API ignores it with opus.
    errors = {
        door: job_door_error(app, runner, door, {"message": "Hi.", "audio_format": "opus", "sample_rate": 16_000})
        for door in JOB_DOORS
    }
    assert errors == dict.fromkeys(JOB_DOORS, OPUS_AT_16K)
    assert openai_error(app, {"input": "Hi.", "response_format": "opus", "sample_rate": 16_000}) == OPUS_AT_16K
    fish = call(
        app, "POST", "/v1/tts", json={"text": "Hi.", "format": "opus", "sample_rate": 16_000, "max_new_tokens": 2}
    )
    assert fish.status_code == 200 and fish.content[:4] == b"OggS", fish.text


def test_an_unknown_format_names_each_doors_field_and_its_formats(app, runner):
    # Each door has its own formats (and name for the field), said by the one reading of a pydantic error.
    [job] = run_job(runner, {"message": "Hi.", "audio_format": "ogg"})
    for door in JOB_DOORS:
        assert job_door_error(app, runner, door, {"message": "Hi.", "audio_format": "ogg"}) == job["error"]
    assert job["error"] == ("audio_format: Input should be 'float', 'pcm16', 'wav', 'flac', 'mp3', 'opus' or 'aac'")
    assert openai_error(app, {"input": "Hi.", "response_format": "ogg"}) == (
        "response_format: Input should be 'mp3', 'opus', 'aac', 'flac', 'wav' or 'pcm'"
    )
    assert fish_error(app, {"text": "Hi.", "format": "ogg"}) == "format: Input should be 'wav', 'pcm', 'mp3' or 'opus'"


# ---- speech in: a voice message's transcript and language reach the job -------------------------------------


@pytest.fixture(scope="module")
def asr_runner(service, settings, tiny_whisper_dir):
    from fish_worker.asr.transcriber import Transcriber
    from fish_worker.asr.whisper import WhisperRecognizer
    from fish_worker.jobs.runner import JobRunner

    recognizer = WhisperRecognizer.load(tiny_whisper_dir, device="cpu")
    return JobRunner(service, settings, transcriber=Transcriber(recognizer, max_seconds=30.0, max_bytes=1 << 22))


def test_job_audio_is_transcribed_in_its_language_and_the_transcript_spoken(runner, asr_runner, app_settings):
    transcriber = asr_runner.transcriber
    heard = transcriber.transcribe_bytes(REFERENCE, language="de")
    assert heard.text and heard.text != transcriber.transcribe_bytes(REFERENCE).text  # detection says otherwise
    fields = {"audio": REFERENCE, "language": "de", "mode": "tts", "max_tokens": 6, "seed": 3, "audio_format": "pcm16"}
    [out] = run_job(asr_runner, fields)
    assert out["transcript"] == heard.text  # the job's language reached the recognizer
    assert base64.b64decode(out["audio"]) == job_pcm(runner, message=heard.text, language="de", mode="tts", seed=3)
    [action] = run_job(asr_runner, {"action": "transcribe", "audio": REFERENCE, "language": "de"})
    assert (action["transcript"], action["language"]) == (heard.text, "de")
    seed_run = call(create_app(asr_runner, app_settings(auth_disabled=True)), "POST", "/run", json={"input": fields})
    assert seed_run.status_code == 200 and seed_run.json()["output"] == out


SILENT_WAV = base64.b64decode(wav_b64(seconds=1.0, amplitude=0.0))


@pytest.mark.parametrize(
    "audio, language, field",
    [
        (b"this is not an audio file", None, "audio"),
        (SILENT_WAV, None, "audio"),
        (base64.b64decode(REFERENCE), "xx", "language"),
    ],
    ids=["undecodable", "silent", "unknown-language"],
)
def test_bad_speech_in_is_the_same_error_through_every_door(asr_runner, app_settings, audio, language, field):
    import ormsgpack

    b64 = base64.b64encode(audio).decode()
    given = {"language": language} if language is not None else {}
    [job] = run_job(asr_runner, {"audio": b64, "mode": "tts", **given})
    [action] = run_job(asr_runner, {"action": "transcribe", "audio": b64, **given})
    app = create_app(asr_runner, app_settings(auth_disabled=True))
    openai = call(app, "POST", "/v1/audio/transcriptions", files={"file": ("clip.wav", audio)}, data=given)
    fish = call(
        app,
        "POST",
        "/v1/asr",
        content=ormsgpack.packb({"audio": audio, **given}),
        headers={"Content-Type": "application/msgpack"},
    )
    fish_json = call(app, "POST", "/v1/asr", json={"audio": b64, **given})
    assert job["error"].startswith(f"{field}: ") and action["error"] == job["error"]
    # OpenAI's form calls the audio `file`: the same problem, in that door's own name for the field.
    door_field = "file" if field == "audio" else field
    assert openai.status_code == 400 and openai.json()["error"]["param"] == door_field
    assert openai.json()["error"]["message"] == door_field + job["error"].removeprefix(field)
    assert fish.status_code == fish_json.status_code == 400
    assert fish.json() == fish_json.json() == {"status": 400, "message": job["error"]}


def test_a_transcript_and_its_language_are_the_same_through_every_door(asr_runner, app_settings):
    import ormsgpack

    audio = base64.b64decode(REFERENCE)
    [action] = run_job(asr_runner, {"action": "transcribe", "audio": REFERENCE, "language": "de"})
    assert action["transcript"] != run_job(asr_runner, {"action": "transcribe", "audio": REFERENCE})[0]["transcript"]
    app = create_app(asr_runner, app_settings(auth_disabled=True))
    openai = call(
        app,
        "POST",
        "/v1/audio/transcriptions",
        files={"file": ("clip.wav", audio)},
        data={"language": "de", "response_format": "verbose_json"},
    ).json()
    fish = call(
        app,
        "POST",
        "/v1/asr",
        content=ormsgpack.packb({"audio": audio, "language": "de"}),
        headers={"Content-Type": "application/msgpack"},
    ).json()
    segments = [(s["start_s"], s["end_s"], s["text"]) for s in action["segments"]]
    assert (openai["text"], openai["language"], openai["duration"]) == (
        action["transcript"],
        "german",
        action["duration_s"],
    )
    assert [(s["start"], s["end"], s["text"]) for s in openai["segments"]] == segments
    assert (fish["text"], fish["duration"]) == (action["transcript"], action["duration_s"] * 1000)
    assert [(s["start"], s["end"], s["text"]) for s in fish["segments"]] == segments


@pytest.mark.parametrize(
    "tag, whisper",
    [("nb", "no"), ("jv", "jw"), ("zh-Hant", "zh"), ("pt-BR", "pt"), ("sr-Latn", "sr"), ("fil", "tl")],
)
def test_a_bcp47_language_is_the_same_whisper_language_through_every_door(asr_runner, app_settings, tag, whisper):
    """A BCP 47 tag Whisper spells differently (or with a region or script) reaches the recognizer as the
    same Whisper language on every door: the job's `audio`, the transcribe action, OpenAI's and Fish's."""
    import ormsgpack

    from fish_worker.asr.languages import language_name

    audio = base64.b64decode(REFERENCE)
    expected = asr_runner.transcriber.transcribe_bytes(REFERENCE, language=whisper)
    assert expected.language == whisper
    [job] = run_job(asr_runner, {"audio": REFERENCE, "language": tag, "mode": "tts", "max_tokens": 2})
    [action] = run_job(asr_runner, {"action": "transcribe", "audio": REFERENCE, "language": tag})
    app = create_app(asr_runner, app_settings(auth_disabled=True))
    openai = call(
        app,
        "POST",
        "/v1/audio/transcriptions",
        files={"file": ("clip.wav", audio)},
        data={"language": tag, "response_format": "verbose_json"},
    ).json()
    fish = call(
        app,
        "POST",
        "/v1/asr",
        content=ormsgpack.packb({"audio": audio, "language": tag}),
        headers={"Content-Type": "application/msgpack"},
    ).json()
    assert job["transcript"] == expected.text, job
    assert (action["transcript"], action["language"]) == (expected.text, whisper)
    assert (openai["text"], openai["language"]) == (expected.text, language_name(whisper))
    assert fish["text"] == expected.text
