"""The playground page at `/`, in a real headless Chromium (Debian's, driven by playwright) against a
real uvicorn on 127.0.0.1 with the tiny checkpoint and the tiny chat model.

The page exposes what it received in its DOM (#output's data-state, data-samples, data-first-audio-ms)
and each test checks it, plus the <audio> element's decoded duration. Skipped, with the reason, where
chromium or playwright is not installed (.ci/run installs both).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import shutil
import subprocess

import httpx
import pytest

from helpers import serve_app, wav_b64
from fish_worker.server import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

KEY = "playground-key"
TENANT = "playground"  # the key's tenant: voices saved from the page are its own
FRAMES = 8  # codec frames per sentence (and chat reply tokens): keeps the tiny model quick
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def transcriber(tiny_whisper_dir):
    from fish_worker.asr.transcriber import Transcriber
    from fish_worker.asr.whisper import WhisperRecognizer

    return Transcriber(WhisperRecognizer.load(tiny_whisper_dir, device="cpu"), max_seconds=30.0, max_bytes=1 << 22)


@pytest.fixture(scope="module")
def chat_runner(service, settings, tiny_chat_model_dir, transcriber):
    from fish_worker.dialogue.llm import ChatModel
    from fish_worker.dialogue.turns import ConversationService
    from fish_worker.conversations.memory_store import MemoryConversationStore
    from fish_worker.jobs.runner import JobRunner
    from fish_worker.settings import ChatSettings

    chat_settings = settings.model_copy(
        update={"chat": ChatSettings(model_dir=tiny_chat_model_dir, frames_per_sentence=FRAMES)}
    )
    chat = ChatModel.load(tiny_chat_model_dir, device="cpu")
    store = MemoryConversationStore(ttl_s=60, max_conversations=10)
    return JobRunner(
        service,
        chat_settings,
        ConversationService(service, store, chat=chat, settings=chat_settings),
        transcriber=transcriber,
    )


@pytest.fixture(scope="module")
def base_url(chat_runner, app_settings):
    with serve_app(create_app(chat_runner, app_settings(api_keys=f"{TENANT}:{KEY}"))) as (host, port):
        yield f"http://{host}:{port}"


@pytest.fixture(scope="module")
def playwright():
    with sync_api.sync_playwright() as running:  # one per thread: both browsers below come from it
        yield running


@pytest.fixture(scope="module")
def browser(playwright):
    # Debian's chromium, not a downloaded build; launch() gives it a fresh --user-data-dir.
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
    yield chromium
    chromium.close()


@pytest.fixture
def page(browser, base_url):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(60_000)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)
    page.goto(base_url + "/")
    page.problems = problems
    yield page
    context.close()


def enter_key(page, key=KEY):
    page.fill("#api-key", key)
    page.dispatch_event("#api-key", "change")


def play_and_wait(page) -> dict:
    page.click("#play")
    page.wait_for_selector('#output[data-state="done"], #output[data-state="error"]')
    return page.eval_on_selector(
        "#output", "el => ({...el.dataset, error: document.getElementById('error').textContent})"
    )


def audio_element_duration(page) -> float:
    page.wait_for_function("document.getElementById('result-audio').readyState >= 1")
    return page.eval_on_selector("#result-audio", "el => el.duration")


def test_page_streams_speech_into_web_audio(page, tmp_path):
    enter_key(page)
    page.fill("#text", "Hello there. How are you today?")
    page.click("#advanced summary")
    page.fill("#max-tokens", str(FRAMES))
    page.fill("#seed", "3")
    page.fill("#speed", "1.25")
    status = play_and_wait(page)
    assert status["state"] == "done", status
    assert int(status["samples"]) > 0 and int(status["chunks"]) >= 2
    # Audio arrived while the rest was still being generated, not all at the end.
    assert 0 < int(status["firstAudioMs"]) < int(status["totalMs"]) and page.inner_text("#first-audio").endswith(" ms")
    assert page.locator("#sentences li").all_inner_texts() == ["Hello there.", "How are you today?"]
    # The whole file was handed to an <audio> element, which decoded its length.
    assert audio_element_duration(page) == pytest.approx(int(status["samples"]) / 44100, abs=0.01)
    page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)
    # Web Audio played it: its clock passed both sentences' scheduled audio.
    page.wait_for_selector("#sentences li:nth-child(2).spoken", state="attached", timeout=15_000)
    assert page.locator("#sentences li.spoken").count() == 2
    print(f"screenshot: {tmp_path / 'playground.png'}")
    assert not page.problems, page.problems


@pytest.mark.parametrize("fmt, rate, media", [("wav", 16000, "audio/wav"), ("mp3", 24000, "audio/mpeg")])
def test_format_and_sample_rate_choices(page, fmt, rate, media):
    enter_key(page)
    page.fill("#text", "Good morning.")
    page.click("#advanced summary")
    page.fill("#max-tokens", str(FRAMES))
    page.select_option("#format", fmt)
    page.select_option("#sample-rate", str(rate))
    status = play_and_wait(page)
    assert status["state"] == "done", status
    assert int(status["samples"]) > 0
    assert page.eval_on_selector("#download", "a => a.download") == f"speech.{'wav' if fmt == 'wav' else 'mp3'}"
    assert audio_element_duration(page) > 0
    assert not page.problems, page.problems


def test_upload_save_and_speak_in_a_voice(page, service):
    enter_key(page)
    page.click("#upload summary")
    clip = base64.b64decode(wav_b64(1.0))
    page.set_input_files("#clip", files=[{"name": "anna.wav", "mimeType": "audio/wav", "buffer": clip}])
    page.wait_for_selector('#voice option[value="clip"]', state="attached")
    page.fill("#clip-text", "A short tone.")
    page.fill("#clip-title", "Anna from the playground")
    page.click("#save-voice")
    page.locator("#voice option", has_text="Anna from the playground").wait_for(state="attached")
    assert page.eval_on_selector("#voice", "select => select.selectedOptions[0].text") == "Anna from the playground"
    saved = [v for v in service.voices.store.for_tenant(TENANT).list() if v.title == "Anna from the playground"]
    assert len(saved) == 1 and saved[0].text == "A short tone."
    page.fill("#text", "Speaking in the saved voice.")
    page.click("#advanced summary")
    page.fill("#max-tokens", str(FRAMES))
    status = play_and_wait(page)
    assert status["state"] == "done" and int(status["samples"]) > 0, status
    # The clip itself, unsaved, as the reference of one request.
    page.select_option("#voice", "clip")
    status = play_and_wait(page)
    assert status["state"] == "done" and int(status["samples"]) > 0, status
    assert not page.problems, page.problems


def test_chat_mode_shows_the_reply_as_it_is_written(page):
    enter_key(page)
    page.check("input[name=mode][value=chat]")
    page.fill("#text", "Tell me something.")
    page.click("#advanced summary")
    page.fill("#max-tokens", "12")
    page.fill("#seed", "1")
    status = play_and_wait(page)
    assert status["state"] == "done", status
    assert page.inner_text("#reply").strip() and page.is_visible("#reply-box")
    assert not page.problems, page.problems


def test_a_wrong_key_is_shown_not_thrown(page):
    enter_key(page, "not-the-key")
    page.fill("#text", "Hello.")
    status = play_and_wait(page)
    assert status["state"] == "error" and "API key" in status["error"]
    assert not [p for p in page.problems if p.startswith("page error")], page.problems


def test_page_is_public_and_locked_down(base_url):
    page = httpx.get(base_url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text  # no external CDN
    script = httpx.get(base_url + "/playground/app.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "http://" not in script.text and "https://" not in script.text
    assert httpx.get(base_url + "/playground/secret.txt").status_code == 404
    assert httpx.get(base_url + "/playground/..%2Fapp.py").status_code == 404
    assert (
        httpx.post(base_url + "/run", json={"input": {"message": "Hi."}}).status_code == 401
    )  # the API still needs a key


def test_playground_can_be_turned_off(runner, app_settings):
    app = create_app(runner, app_settings(api_keys=KEY, playground=False))

    async def get():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.get("/")

    # On its own thread: playwright's sync API keeps an event loop running on this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # Without the page, "/" is one more path behind the key: 401 before routing.
        assert pool.submit(asyncio.run, get()).result().status_code == 401


# ---- the microphone: a recording becomes the job's `audio` ------------------------------------------------


@pytest.fixture(scope="module")
def spoken_wav(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng; .ci/run installs it)")
    path = tmp_path_factory.mktemp("mic") / "question.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "What is the weather like today?"], check=True, timeout=60)
    return path


@pytest.fixture(scope="module")
def mic_browser(playwright, spoken_wav):
    # Chromium's fake microphone plays the espeak-ng file (looped); the fake UI grants it without asking.
    args = LAUNCH_ARGS + [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={spoken_wav}",
    ]
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
    yield chromium
    chromium.close()


@pytest.mark.parametrize("mode", ["tts", "chat"])
def test_microphone_records_a_voice_message_shows_its_transcript_and_plays_the_reply(
    mic_browser, base_url, transcriber, mode
):
    context = mic_browser.new_context(permissions=["microphone"])
    page = context.new_page()
    page.set_default_timeout(60_000)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    sent: list[dict] = []
    page.on("request", lambda r: sent.append(json.loads(r.post_data)["input"]) if r.url.endswith("/run") else None)
    try:
        page.goto(base_url + "/")
        enter_key(page)
        page.check(f"input[name=mode][value={mode}]")
        page.click("#advanced summary")
        page.fill("#max-tokens", str(FRAMES))
        page.fill("#seed", "2")
        page.click("#record")
        page.wait_for_selector('#record[data-recording="true"]')
        page.wait_for_timeout(2500)  # about the clip's length
        page.click("#record")
        page.wait_for_selector('#output[data-state="done"], #output[data-state="error"]')
        status = page.eval_on_selector(
            "#output", "el => ({...el.dataset, error: document.getElementById('error').textContent})"
        )
        assert status["state"] == "done", status
        # What the page sent: the recording (WebM/Opus from Chromium) as `audio`, no text.
        [job] = sent
        assert "message" not in job and job["mode"] == mode
        recording = base64.b64decode(job["audio"])
        assert recording[:4] == b"\x1aE\xdf\xa3"  # an EBML (WebM) header
        # The transcript shown is the server recognizer's for that recording.
        transcript = transcriber.transcribe_bytes(recording)
        heard = transcript.text
        assert 1.5 < transcript.duration_s < 6  # what was recorded between the two clicks
        assert heard and page.inner_text("#transcript") == heard and page.is_visible("#transcript-box")
        if mode == "tts":  # the transcript spoken back
            assert " ".join(page.locator("#sentences li").all_inner_texts()).split() == heard.split()
        else:
            assert page.inner_text("#reply").strip()
        # The reply's audio was played: Web Audio's clock passed its sentences, the <audio> element has it.
        assert int(status["samples"]) > 0 and audio_element_duration(page) > 0
        page.wait_for_selector("#sentences li.spoken", state="attached", timeout=15_000)
        assert not problems, problems
    finally:
        context.close()
