#!/usr/bin/env python3
"""Break each door's field mapping one line at a time and check that a test notices.

    .venv/bin/python scripts/mutants.py                 # every mutant (one pytest run each, ~1 min apiece)
    .venv/bin/python scripts/mutants.py --list          # names, files, and whether each line is still there
    .venv/bin/python scripts/mutants.py openai-drops-voice_id service-hard-codes-sampling

Each mutant is (file, the exact original line, its replacement, the tests to run). The line is looked
up stripped of indentation and must occur exactly once; a line that has changed since the mutant was
written is reported as SKIPPED (pattern not found), so refresh the mutant, never the code. Mutants are
applied to a copy of the repository in a temporary folder, never to the working tree.

Exit status: 0 when every applicable mutant was killed, 1 when one survived, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("fish_worker", "tests", "pytest.ini", "handler.py")

MAPPINGS = "tests/test_field_mappings.py"


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    original: str  # one line, compared without its indentation
    replacement: str  # indented like the original
    tests: tuple[str, ...] = field(default=(MAPPINGS,))  # pytest arguments: files, node ids, -k ...


MUTANTS = [
    # -- the service: what every door ends in --
    Mutant(
        "job-drops-language",
        "fish_worker/jobs/inputs.py",
        "language=self.language,",
        "language=None,",
        ("tests/test_handler.py::test_the_jobs_language_decides_where_its_sentences_end",),
    ),
    Mutant(
        "service-ignores-language",
        "fish_worker/tts/service.py",
        "sentences = split_sentences(request.text, self.limits.sentence_max_chars, request.language)",
        "sentences = split_sentences(request.text, self.limits.sentence_max_chars)",
        ("tests/test_handler.py::test_the_jobs_language_decides_where_its_sentences_end",),
    ),
    # -- speech in: a voice message's language reaches the recognizer on every path --
    Mutant(
        "job-drops-audio-language",
        "fish_worker/jobs/runner.py",
        "heard = await transcribe(self.transcriber, request.audio, request.language)",
        "heard = await transcribe(self.transcriber, request.audio, None)",
        (f"{MAPPINGS}::test_job_audio_is_transcribed_in_its_language_and_the_transcript_spoken",),
    ),
    Mutant(
        "transcribe-action-drops-language",
        "fish_worker/jobs/transcription.py",
        "return transcript_output(await transcribe(transcriber, action.audio, action.language))",
        "return transcript_output(await transcribe(transcriber, action.audio, None))",
        (f"{MAPPINGS}::test_job_audio_is_transcribed_in_its_language_and_the_transcript_spoken",),
    ),
    Mutant(
        "transcriber-ignores-language",
        "fish_worker/asr/transcriber.py",
        "return self.recognizer.transcribe(audio, language=self._checked_language(language), stop=stop)",
        "return self.recognizer.transcribe(audio, language=None, stop=stop)",
        (f"{MAPPINGS}::test_job_audio_is_transcribed_in_its_language_and_the_transcript_spoken",),
    ),
    Mutant(
        "transcriber-skips-the-bcp47-reading",
        "fish_worker/asr/transcriber.py",
        'return whisper_language(language)  # the one reading on every door: "pt-BR" → "pt", "nb" → "no"',
        "return language",
        (f"{MAPPINGS}::test_a_bcp47_language_is_the_same_whisper_language_through_every_door",),
    ),
    Mutant(
        "openai-transcription-drops-language",
        "fish_worker/server/routers/openai_transcriptions.py",
        'transcript = await transcribe_request(request, limiter, transcriber, data, field="audio", language=language)',
        'transcript = await transcribe_request(request, limiter, transcriber, data, field="audio", language=None)',
        (f"{MAPPINGS}::test_a_transcript_and_its_language_are_the_same_through_every_door",),
    ),
    Mutant(
        "fish-asr-drops-language",
        "fish_worker/server/routers/fish_asr.py",
        'request, limiter, transcriber, asr_request.audio, field="audio", language=asr_request.language',
        'request, limiter, transcriber, asr_request.audio, field="audio", language=None',
        (f"{MAPPINGS}::test_a_transcript_and_its_language_are_the_same_through_every_door",),
    ),
    Mutant(
        "fish-asr-ignores-ignore_timestamps",
        "fish_worker/server/routers/fish_asr.py",
        "return fish_asr_response(transcript, timestamps=not asr_request.ignore_timestamps)",
        "return fish_asr_response(transcript, timestamps=True)",
        ("tests/test_transcription_doors.py::test_fish_sdk_asr_is_the_transcript_with_duration_in_ms",),
    ),
    Mutant(
        "job-speaks-the-audio-field-not-its-transcript",
        "fish_worker/jobs/inputs.py",
        'return self.model_copy(update={"message": transcript, "audio": None})',
        'return self.model_copy(update={"message": "Hello.", "audio": None})',
        (f"{MAPPINGS}::test_job_audio_is_transcribed_in_its_language_and_the_transcript_spoken",),
    ),
    Mutant(
        "service-hard-codes-sampling",
        "fish_worker/tts/service.py",
        "params = SamplingParams(request.temperature, request.top_p, request.repetition_penalty, budget)",
        "params = SamplingParams(0.7, 0.8, 1.1, budget)",
        ("tests/test_equivalence.py::test_tokens_and_audio_equal_fish_speech",),
    ),
    Mutant(
        "service-ignores-top_p",
        "fish_worker/tts/service.py",
        "params = SamplingParams(request.temperature, request.top_p, request.repetition_penalty, budget)",
        "params = SamplingParams(request.temperature, 0.8, request.repetition_penalty, budget)",
        ("tests/test_equivalence.py::test_tokens_and_audio_equal_fish_speech",),
    ),
    Mutant(
        "service-ignores-seed",
        "fish_worker/tts/service.py",
        "seed = request.seed if request.seed is not None else draw_seed()",
        "seed = draw_seed()",
        ("tests/test_handler.py::test_same_seed_same_audio_different_seed_different_audio",),
    ),
    Mutant(
        "service-ignores-voice_id",
        "fish_worker/tts/voice_resolver.py",
        "return self.saved_voice(voice.voice_id, store)",
        "return None",
        (f"{MAPPINGS}::test_job_reference_text_and_voice_id_reach_the_voice_prompt",),
    ),
    Mutant(
        "service-drops-reference_text",
        "fish_worker/tts/voice_resolver.py",
        "return VoicePrompt(text=clip.text, codes=codes)",
        'return VoicePrompt(text="", codes=codes)',
        (f"{MAPPINGS}::test_job_reference_text_and_voice_id_reach_the_voice_prompt",),
    ),
    Mutant(
        "service-ignores-max_tokens",
        "fish_worker/tts/service.py",
        "budget = min(request.frames_per_sentence, frames_left)",
        "budget = frames_left",
        (f"{MAPPINGS}::test_job_max_tokens_bounds_each_sentence",),
    ),
    # -- the RunPod job: jobs/runner.py, jobs/output_adjustments.py --
    Mutant(
        "job-drops-audio_format-whole",
        "fish_worker/jobs/runner.py",
        "output = whole_output(chunks, request.audio_format)",
        'output = whole_output(chunks, "float")',
        (f"{MAPPINGS}::test_job_audio_format_is_the_output_format_whole_and_streamed",),
    ),
    Mutant(
        "job-drops-audio_format-streamed",
        "fish_worker/jobs/runner.py",
        "streamed = StreamedOutput(request.audio_format)",
        'streamed = StreamedOutput("float")',
        (f"{MAPPINGS}::test_job_audio_format_is_the_output_format_whole_and_streamed",),
    ),
    Mutant(
        "job-ignores-tenant-voices",
        "fish_worker/jobs/runner.py",
        "speech = lambda stop: self.service.synthesize(synthesis, stop, voices=conversations.voices)  # noqa: E731",
        "speech = lambda stop: self.service.synthesize(synthesis, stop)  # noqa: E731",
        ("tests/test_server_doors.py::test_a_tenant_cannot_use_list_or_delete_anothers_voices",),
    ),
    Mutant(
        "job-drops-volume",
        "fish_worker/jobs/output_adjustments.py",
        "return output_adjustments(request.audio_format, request.sample_rate, request.speed, request.volume)",
        "return output_adjustments(request.audio_format, request.sample_rate, request.speed)",
        ("tests/test_audio_options.py::test_volume_scales_rms",),
    ),
    Mutant(
        "job-drops-speed",
        "fish_worker/jobs/output_adjustments.py",
        "return output_adjustments(request.audio_format, request.sample_rate, request.speed, request.volume)",
        "return output_adjustments(request.audio_format, request.sample_rate, volume_db=request.volume)",
        ("tests/test_audio_options.py::test_speed_changes_duration",),
    ),
    Mutant(
        "job-drops-sample_rate",
        "fish_worker/jobs/output_adjustments.py",
        "return output_adjustments(request.audio_format, request.sample_rate, request.speed, request.volume)",
        "return output_adjustments(request.audio_format, None, request.speed, request.volume)",
        ("tests/test_audio_options.py::test_sample_rate_resamples_and_is_reported",),
    ),
    # -- OpenAI /v1/audio/speech --
    Mutant(
        "openai-drops-voice_id",
        "fish_worker/server/routers/openai_speech.py",
        "voice=SavedVoiceRef(voice_id) if voice_id is not None else None,",
        "voice=None,",
        (f"{MAPPINGS}::test_openai_speech_is_the_job_with_the_same_voice_seed_speed_and_rate",),
    ),
    Mutant(
        "openai-drops-seed",
        "fish_worker/server/routers/openai_speech.py",
        "seed=body.seed,",
        "seed=None,",
        (f"{MAPPINGS}::test_openai_speech_is_the_job_with_the_same_voice_seed_speed_and_rate",),
    ),
    Mutant(
        "openai-drops-max_tokens",
        "fish_worker/server/routers/openai_speech.py",
        "frames = body.max_tokens if body.max_tokens is not None else SynthesisRequest.frames_per_sentence",
        "frames = SynthesisRequest.frames_per_sentence",
        (f"{MAPPINGS}::test_openai_speech_is_the_job_with_the_same_voice_seed_speed_and_rate",),
    ),
    Mutant(
        "openai-drops-speed",
        "fish_worker/server/routers/openai_speech.py",
        "return output_adjustments(audio_format, rate, body.speed)",
        "return output_adjustments(audio_format, rate)",
        (f"{MAPPINGS}::test_openai_speech_is_the_job_with_the_same_voice_seed_speed_and_rate",),
    ),
    Mutant(
        "openai-ignores-sample_rate",
        "fish_worker/server/routers/openai_speech.py",
        "rate = body.sample_rate",
        "rate = None",
        (f"{MAPPINGS}::test_openai_speech_is_the_job_with_the_same_voice_seed_speed_and_rate",),
    ),
    Mutant(
        "openai-ignores-response_format",
        "fish_worker/server/routers/openai_speech.py",
        "audio_format = _FORMATS[body.response_format]",
        'audio_format = "mp3"',
        (f"{MAPPINGS}::test_openai_response_format_is_the_file_format",),
    ),
    # -- Fish Audio /v1/tts and the live socket: server/fish_synthesis.py, fish_models.py, routers/fish_tts.py --
    Mutant(
        "fish-hard-codes-temperature",
        "fish_worker/server/fish_synthesis.py",
        "temperature=request.temperature,",
        "temperature=0.7,",
        (f"{MAPPINGS}::test_fish_request_fields_reach_the_synthesis_plan",),
    ),
    Mutant(
        "fish-hard-codes-top_p",
        "fish_worker/server/fish_synthesis.py",
        "top_p=request.top_p,",
        "top_p=0.8,",
        (f"{MAPPINGS}::test_fish_request_fields_reach_the_synthesis_plan",),
    ),
    Mutant(
        "fish-hard-codes-repetition_penalty",
        "fish_worker/server/fish_synthesis.py",
        "repetition_penalty=request.repetition_penalty,",
        "repetition_penalty=1.1,",
        (f"{MAPPINGS}::test_fish_request_fields_reach_the_synthesis_plan",),
    ),
    Mutant(
        "fish-ignores-max_new_tokens",
        "fish_worker/server/fish_synthesis.py",
        "max_tokens = request.max_new_tokens",
        "max_tokens = 0",
        (f"{MAPPINGS}::test_fish_request_fields_reach_the_synthesis_plan",),
    ),
    Mutant(
        "fish-ignores-reference_id",
        "fish_worker/server/fish_synthesis.py",
        "voice = resolver.saved_voice(voice_id, voices)",
        "voice = None",
        (f"{MAPPINGS}::test_fish_request_fields_reach_the_synthesis_plan",),
    ),
    Mutant(
        "fish-drops-reference-text",
        "fish_worker/server/fish_synthesis.py",
        "prompts.append(resolver.encode_reference(ReferenceClip(ref.audio, ref.text)))",
        "prompts.append(resolver.encode_reference(ReferenceClip(ref.audio)))",
        (f"{MAPPINGS}::test_fish_references_keep_their_transcripts",),
    ),
    Mutant(
        "fish-drops-prosody-volume",
        "fish_worker/server/fish_models.py",
        "self.audio_format, self.sample_rate, prosody.speed, prosody.volume, ignore_opus_rate=True",
        "self.audio_format, self.sample_rate, prosody.speed, 0.0, ignore_opus_rate=True",
        (f"{MAPPINGS}::test_fish_request_fields_reach_the_synthesis_plan",),
    ),
    Mutant(
        "fish-ignores-sample_rate",
        "fish_worker/server/fish_models.py",
        "self.audio_format, self.sample_rate, prosody.speed, prosody.volume, ignore_opus_rate=True",
        "self.audio_format, None, prosody.speed, prosody.volume, ignore_opus_rate=True",
        (f"{MAPPINGS}::test_fish_tts_audio_follows_format_and_sample_rate",),
    ),
    Mutant(
        "fish-ignores-format",
        "fish_worker/server/fish_synthesis.py",
        "return FishAudioEncoder(self.request.audio_format, self.adjustments, model_rate, self.request.bitrate_kbps)",
        'return FishAudioEncoder("wav", self.adjustments, model_rate, self.request.bitrate_kbps)',
        (f"{MAPPINGS}::test_fish_tts_audio_follows_format_and_sample_rate",),
    ),
    # -- seed /run and RunPod /v2 --
    Mutant(
        "seed-run-never-streams",
        "fish_worker/server/routers/seed.py",
        "if job.streamed:",
        "if False:",
        (f"{MAPPINGS}::test_seed_run_is_the_job",),
    ),
    Mutant(
        "seed-run-drops-tenant",
        "fish_worker/server/routers/seed.py",
        "job = Job(id=job_id, input=body.input, tenant=tenant, result_route=None)",
        "job = Job(id=job_id, input=body.input, tenant=None, result_route=None)",
        ("tests/test_server_doors.py::test_a_tenant_cannot_use_list_or_delete_anothers_voices",),
    ),
    Mutant(
        "v2-runsync-drops-tenant",
        "fish_worker/server/routers/runpod_v2.py",
        "tenant = tenant_of(request)",
        "tenant = None",
        (f"{MAPPINGS}::test_a_tenants_saved_voice_speaks_through_every_door",),
    ),
    Mutant(
        "v2-run-drops-tenant",
        "fish_worker/server/routers/runpod_v2.py",
        'return await jobs.submit(body.input, route="run", tenant=tenant_of(request))',
        'return await jobs.submit(body.input, route="run", tenant=None)',
        ("tests/test_server_doors.py::test_a_tenant_cannot_read_stream_cancel_or_purge_anothers_jobs",),
    ),
    Mutant(
        "openai-drops-tenant",
        "fish_worker/server/routers/openai_speech.py",
        "tenant = tenant_of(request)",
        "tenant = None",
        (f"{MAPPINGS}::test_a_tenants_saved_voice_speaks_through_every_door",),
    ),
    Mutant(
        "fish-drops-tenant",
        "fish_worker/server/routers/fish_tts.py",
        "plan = await _plan(fish_request, service.voices, service.voices.store.for_tenant(tenant), settings)",
        "plan = await _plan(fish_request, service.voices, service.voices.store, settings)",
        (f"{MAPPINGS}::test_a_tenants_saved_voice_speaks_through_every_door",),
    ),
    # -- one home per rule, every door through it (docs/limits.md "One rule, one message, on every door") --
    Mutant(
        "temperature-ceiling-dropped",
        "fish_worker/engine/sampling_rules.py",
        'Temperature = Annotated[float, Field(ge=0.0, le=1.0, description="Sampling temperature, 0 to 1 (0: near-greedy).")]',
        'Temperature = Annotated[float, Field(ge=0.0, description="Sampling temperature, 0 to 1 (0: near-greedy).")]',
        (f"{MAPPINGS}::test_a_sampling_value_out_of_range_is_the_same_error_on_every_door",),
    ),
    Mutant(
        "top_p-zero-refused",
        "fish_worker/engine/sampling_rules.py",
        'TopP = Annotated[float, Field(ge=0.0, le=1.0, description="Nucleus sampling, 0 to 1 (0: the likeliest token).")]',
        'TopP = Annotated[float, Field(gt=0.0, le=1.0, description="Nucleus sampling, 0 to 1 (0: the likeliest token).")]',
        (f"{MAPPINGS}::test_the_sampling_range_ends_are_accepted_on_every_door",),
    ),
    Mutant(
        "opus-rate-rule-flipped",
        "fish_worker/jobs/output_adjustments.py",
        "if rate not in (None, OPUS_SAMPLE_RATE) and not ignore_opus_rate:",
        "if rate not in (None, OPUS_SAMPLE_RATE) and ignore_opus_rate:",
        (f"{MAPPINGS}::test_a_sample_rate_with_opus_is_refused_alike_and_ignored_by_the_fish_doors",),
    ),
    Mutant(
        "fish-refuses-opus-rate",
        "fish_worker/server/fish_models.py",
        "self.audio_format, self.sample_rate, prosody.speed, prosody.volume, ignore_opus_rate=True",
        "self.audio_format, self.sample_rate, prosody.speed, prosody.volume, ignore_opus_rate=False",
        (f"{MAPPINGS}::test_a_sample_rate_with_opus_is_refused_alike_and_ignored_by_the_fish_doors",),
    ),
    Mutant(
        "fish-skips-text-check",
        "fish_worker/server/fish_synthesis.py",
        "check_text(request.text, settings, sentence_chars=request.chunk_length)",
        "pass",
        (f"{MAPPINGS}::test_text_over_a_limit_is_the_same_error_on_every_door",),
    ),
    Mutant(
        "text-check-counts-no-sentences",
        "fish_worker/tts/requests.py",
        "if sentences > settings.max_sentences:",
        "if False:",
        (f"{MAPPINGS}::test_text_over_a_limit_is_the_same_error_on_every_door",),
    ),
    Mutant(
        "validation-message-keeps-value-error",
        "fish_worker/errors.py",
        'problem = str(first["msg"]).removeprefix("Value error, ")',
        'problem = str(first["msg"])',
        (f"{MAPPINGS}::test_text_over_a_limit_is_the_same_error_on_every_door",),
    ),
    # Engine and codec (real size round): batched codec rows, the short prefill cache, chat prompts.
    Mutant(
        "codec-batch-mixes-rows",
        "fish_worker/engine/codec_batching.py",
        "for request, audio in zip(batch, self._decode_many([r.codes for r in batch]), strict=True):",
        "                    for request, audio in zip(batch, self._decode_many([r.codes for r in batch])[::-1], strict=True):",
        ("tests/test_codec_batching.py",),
    ),
    Mutant(
        "codec-batch-keeps-padding",
        "fish_worker/engine/codec.py",
        "return [audio[row, : n * self.samples_per_frame].copy() for row, n in enumerate(lengths)]",
        "        return [audio[row].copy() for row, n in enumerate(lengths)]",
        ("tests/test_codec_batching.py",),
    ),
    Mutant(
        "prefill-cache-not-restored",
        "fish_worker/engine/generation.py",
        "model.max_seq_len = full_length",
        "        model.max_seq_len = length",
        ("tests/test_batching.py", "tests/test_equivalence.py"),
    ),  # test_a_short_prefill_gives_... kills it
    Mutant(
        "chat-prompt-reads-control-tokens",
        "fish_worker/dialogue/chat_template.py",
        'return _encode_guarded(tokenizer, pieces, control) if injected else encoded["input_ids"]',
        '    return encoded["input_ids"]',
        ("tests/test_chat_prompt_injection.py",),
    ),
]


def locate(text: str, mutant: Mutant) -> tuple[int | None, str]:
    """The index of the mutant's line in `text`'s lines, or None and why not."""
    lines = text.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.strip() == mutant.original.strip()]
    if not hits:
        return None, "pattern not found (the line has changed: refresh this mutant)"
    if len(hits) > 1:
        return None, f"pattern ambiguous ({len(hits)} lines match: make it unique)"
    return hits[0], ""


def mutate(text: str, mutant: Mutant, index: int) -> str:
    lines = text.splitlines(keepends=True)
    line = lines[index]
    indent = line[: len(line) - len(line.lstrip())]
    newline = "\n" if line.endswith("\n") else ""
    lines[index] = indent + mutant.replacement.strip() + newline
    return "".join(lines)


def copy_repository(target: Path) -> None:
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif source.exists():
            shutil.copy2(source, target / name)


def run_mutant(mutant: Mutant, copy: Path, timeout_s: int) -> tuple[str, str]:
    target = copy / mutant.path
    original = target.read_text()
    index, why = locate(original, mutant)
    if index is None:
        return "SKIPPED", why
    target.write_text(mutate(original, mutant, index))
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutant.tests]
    try:
        result = subprocess.run(
            command,
            cwd=copy,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
    except subprocess.TimeoutExpired:
        return "KILLED", f"the tests timed out after {timeout_s} s"
    finally:
        target.write_text(original)
    summary = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
    if result.returncode == 0:
        return "SURVIVED", summary
    if result.returncode in (1,):  # a test failed
        return "KILLED", summary
    return "ERROR", f"pytest exit {result.returncode}: {summary}"  # collection error, usage: not a real kill


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="run only these mutants (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and whether each still applies")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per mutant's test run (default 600)")
    args = parser.parse_args()

    known = {m.name for m in MUTANTS}
    unknown = [n for n in args.names if n not in known]
    if unknown:
        print(f"unknown mutant(s): {', '.join(unknown)}; see --list", file=sys.stderr)
        return 2
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]

    if args.list:
        for m in chosen:
            index, why = locate((ROOT / m.path).read_text(), m)
            where = f"line {index + 1}" if index is not None else why
            print(f"{m.name:40} {m.path}: {where}")
        return 0

    results: dict[str, list[str]] = {"KILLED": [], "SURVIVED": [], "SKIPPED": [], "ERROR": []}
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        copy = Path(tmp)
        copy_repository(copy)
        for m in chosen:
            started = time.monotonic()
            outcome, detail = run_mutant(m, copy, args.timeout)
            results[outcome].append(m.name)
            print(f"{outcome:8} {m.name:40} {time.monotonic() - started:5.0f} s  {detail}", flush=True)
    print()
    for outcome, names in results.items():
        print(f"{outcome.lower():8} {len(names)}" + (f": {', '.join(names)}" if names and outcome != "KILLED" else ""))
    return 1 if results["SURVIVED"] or results["ERROR"] else 0


if __name__ == "__main__":
    sys.exit(main())
