"""Saved voices through the job API: save, use by voice_id, list, delete, bad ids."""

from __future__ import annotations

from helpers import run_job, wav_b64

REFERENCE = wav_b64(seconds=1.2, sample_rate=22050)
JOB = {"message": "Speak as the saved voice.", "max_tokens": 6, "seed": 9}


def test_saved_voice_speaks_like_its_reference_audio(runner):
    [saved] = run_job(
        runner,
        {
            "action": "save_voice",
            "voice_id": "anna",
            "reference_audio": REFERENCE,
            "reference_text": "Hello from Anna.",
        },
    )
    assert saved["voice"]["voice_id"] == "anna" and saved["voice"]["num_frames"] > 0

    [by_id] = run_job(runner, {**JOB, "voice_id": "anna"})
    [by_audio] = run_job(runner, {**JOB, "reference_audio": REFERENCE, "reference_text": "Hello from Anna."})
    [plain] = run_job(runner, JOB)
    assert by_id["audio"] == by_audio["audio"] != plain["audio"]


def test_list_and_delete(runner):
    run_job(runner, {"action": "save_voice", "voice_id": "bob-1", "reference_audio": REFERENCE})
    [listed] = run_job(runner, {"action": "list_voices"})
    assert "bob-1" in [v["voice_id"] for v in listed["voices"]]
    assert run_job(runner, {"action": "delete_voice", "voice_id": "bob-1"}) == [{"deleted": "bob-1"}]
    [listed] = run_job(runner, {"action": "list_voices"})
    assert "bob-1" not in [v["voice_id"] for v in listed["voices"]]
    [out] = run_job(runner, {"action": "delete_voice", "voice_id": "bob-1"})
    assert out == {"error": "voice_id: no saved voice named 'bob-1'"}


def test_unknown_voice_and_bad_inputs_are_clear_errors(runner):
    cases = [
        ({**JOB, "voice_id": "nobody"}, "voice_id: no saved voice named 'nobody'"),
        ({**JOB, "voice_id": "../etc/passwd"}, "voice_id: invalid voice_id"),
        ({**JOB, "voice_id": "x", "reference_audio": REFERENCE}, "voice_id: give either voice_id or reference_audio"),
        ({"action": "save_voice", "voice_id": "../up", "reference_audio": REFERENCE}, "voice_id: invalid voice_id"),
        ({"action": "save_voice", "voice_id": "c"}, "reference_audio: Field required"),
        ({"action": "save_voice", "voice_id": "c", "reference_audio": "not base64!"}, "reference_audio: "),
        ({"action": "list_voices", "extra": 1}, "extra: unknown field"),
    ]
    for job_input, expected in cases:
        [out] = run_job(runner, job_input)
        assert out.keys() == {"error"} and out["error"].startswith(expected), (job_input, out)


def test_save_without_overwrite_keeps_the_existing_voice(runner):
    run_job(runner, {"action": "save_voice", "voice_id": "keep", "reference_audio": REFERENCE})
    [out] = run_job(
        runner, {"action": "save_voice", "voice_id": "keep", "reference_audio": REFERENCE, "overwrite": False}
    )
    assert out["error"].startswith("voice_id: a voice named 'keep' exists")


def test_list_voices_is_paginated_and_save_stops_at_the_cap(runner, service, monkeypatch):
    for name in ("page-a", "page-b", "page-c"):
        run_job(runner, {"action": "save_voice", "voice_id": name, "reference_audio": REFERENCE})
    [first] = run_job(runner, {"action": "list_voices", "limit": 2, "cursor": "page-"})
    assert [v["voice_id"] for v in first["voices"]] == ["page-a", "page-b"] and first["next_cursor"] == "page-b"
    [rest] = run_job(runner, {"action": "list_voices", "limit": 2, "cursor": first["next_cursor"]})
    assert [v["voice_id"] for v in rest["voices"]][:1] == ["page-c"]
    [bad] = run_job(runner, {"action": "list_voices", "limit": 101})
    assert bad["error"] == "limit: Input should be less than or equal to 100"

    monkeypatch.setattr(service.voices.store, "max_voices", len(service.voices.store.voice_ids()))
    [full] = run_job(runner, {"action": "save_voice", "voice_id": "one-too-many", "reference_audio": REFERENCE})
    assert full["error"].startswith("voice_id: cannot save a new voice: the voice store holds its limit of")
    [kept] = run_job(runner, {"action": "save_voice", "voice_id": "page-a", "reference_audio": REFERENCE})
    assert kept["voice"]["voice_id"] == "page-a"  # overwriting stays possible when full
