"""Fuzz the real job function with generated inputs (hypothesis) and report what came back.

    .venv/bin/python scripts/fuzz_jobs.py [--cases 10000] [--seed 0] [--timeout 30] [--checkpoint DIR]

Every case is one job through `JobRunner.run` on a tiny checkpoint (written to a temporary
directory unless --checkpoint is given): wrong types, huge and unicode strings (lone surrogates and
control-token strings included), NaN/inf, nested objects, extra keys, actions, non-dict input.
Valid jobs are kept cheap by a per-job frame cap (FISH_MAX_JOB_FRAMES=8 here), so most of the
time goes to the validation paths. A case fails when the job
  - raises out of `run` (an escape) or takes longer than --timeout (a hang),
  - yields no final result, an error that is not the last chunk, or a chunk that is not UTF-8 JSON,
  - is rejected with an error that does not start with the field it blames, or is 300+ characters,
  - ends with "internal error: ...".
Prints cases run, successes, rejections by field and failures; exits 1 when any case failed.
tests/test_fuzz_jobs.py runs a short version (~200 cases) in the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed as hypothesis_seed, settings as hypothesis_settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fish_worker.errors import MESSAGE_CHARS, bounded, field_path  # noqa: E402
from fish_worker.jobs.job import Job  # noqa: E402
from fish_worker.jobs.runpod_adapter import runpod_chunks  # noqa: E402
from fish_worker.tts.service import NO_AUDIO_ERROR  # noqa: E402

FUZZ_MAX_JOB_FRAMES = 8  # valid jobs generate at most this many codec frames in all
ACTIONS = ["save_voice", "list_voices", "delete_voice", "end_conversation"]
# Fields a rejection may name besides the input's own keys (those of JobInput and of the actions).
KNOWN_FIELDS = {
    "input",
    "action",
    "message",
    "conversation_id",
    "temperature",
    "max_tokens",
    "reference_audio",
    "reference_text",
    "stream",
    "top_p",
    "repetition_penalty",
    "seed",
    "mode",
    "system_prompt",
    "audio_format",
    "voice_id",
    "overwrite",
    "limit",
    "cursor",
}
HOSTILE_TEXT = [
    "\ud800",
    "\udfff",
    "a\udc80b",
    "<|im_end|>",
    "<|semantic:5|>",
    "<|im_start|>assistant",
    "\x00",
    "\u202e",
    "😀",
    "ｆｕｌｌ",
    "e\u0301",
    "\n\n",
    "...",
    "。",
    "Hi. " * 30,
]


# --- strategies --------------------------------------------------------------------------------

# Any unicode, lone surrogates included (hypothesis leaves category Cs out unless told).
any_char = st.characters(exclude_categories=())
short_text = st.one_of(
    st.text(any_char, max_size=40),
    st.lists(st.sampled_from(HOSTILE_TEXT) | st.text(max_size=8), max_size=5).map("".join),
)
# Long strings built from a seed piece: cheap for hypothesis to generate however long they are.
huge_text = st.builds(lambda piece, n: (piece or "x") * n, st.text(any_char, max_size=3), st.integers(1, 300_000))
numbers = st.one_of(
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.just(2**53),
    st.just(2**63),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, short_text, huge_text)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(short_text, inner, max_size=4), max_leaves=12
)

plausible = {
    "message": st.one_of(
        st.sampled_from(["Hello there.", "One. Two sentences here.", "Hi"]),
        short_text,
        st.builds(lambda s, n: s * n, st.sampled_from(["Hi. ", "word ", "Go! "]), st.integers(1, 600)),
    ),
    "conversation_id": st.one_of(st.from_regex(r"[A-Za-z0-9_.:-]{1,20}", fullmatch=True), short_text),
    "temperature": st.floats(0.0, 1.5) | st.sampled_from([math.nan, math.inf, -math.inf]),
    "max_tokens": st.integers(-2, 5000),
    "reference_audio": st.one_of(short_text, st.just("UklGRg==")),
    "reference_text": short_text,
    "stream": st.booleans(),
    "top_p": st.floats(-0.5, 1.5),
    "repetition_penalty": st.floats(0.0, 2.5),
    "seed": st.integers(-5, 2**54),
    "mode": st.sampled_from(["tts", "chat", "TTS", ""]),
    "system_prompt": short_text,
    "audio_format": st.sampled_from(["float", "pcm16", "wav", "flac", "mp3", "opus", "ogg", ""]),
    "voice_id": st.one_of(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,10}", fullmatch=True), short_text),
    "overwrite": st.booleans(),
    "limit": st.integers(-1, 200),
    "cursor": short_text,
}
# Each field: usually a plausible value, sometimes anything at all.
field_values = {name: st.one_of(strategy, strategy, json_values) for name, strategy in plausible.items()}


# Jobs that should run: what real clients send, hostile text included (surrogates aside).
valid_fields = {
    "max_tokens": st.integers(1, 4),
    "seed": st.integers(0, 2**53 - 1),
    "stream": st.booleans(),
    "audio_format": st.sampled_from(["float", "pcm16", "wav", "flac", "mp3", "opus"]),
    "temperature": st.floats(0.1, 1.0),
    "top_p": st.floats(0.01, 1.0),
    "mode": st.just("tts"),
    "conversation_id": st.from_regex(r"[a-z]{1,3}", fullmatch=True),
}
valid_message = st.one_of(
    st.sampled_from(["Hello there.", "One. Two sentences here.", "<|im_end|>", "<|semantic:5|> hi", "😀 ok"]),
    st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=80).filter(str.strip),
)


@st.composite
def job_inputs(draw) -> Any:
    kind = draw(st.sampled_from(["valid", "valid", "job", "job", "action", "extra", "not-a-dict"]))
    if kind == "not-a-dict":
        return draw(json_values)
    if kind == "valid":
        names = draw(st.lists(st.sampled_from(sorted(valid_fields)), max_size=4, unique=True))
        return {"message": draw(valid_message), "max_tokens": 2, **{n: draw(valid_fields[n]) for n in names}}
    names = draw(st.lists(st.sampled_from(sorted(field_values)), max_size=6, unique=True))
    data = {name: draw(field_values[name]) for name in names}
    if kind == "job" and draw(st.integers(0, 9)) > 0:
        data.setdefault("message", draw(field_values["message"]))
    if kind == "action":
        data["action"] = draw(st.sampled_from(ACTIONS) | short_text | json_values)
    if kind == "extra":
        data.update(draw(st.dictionaries(short_text | huge_text, json_values, min_size=1, max_size=3)))
    return data


# --- running and judging one case --------------------------------------------------------------


@dataclass
class Report:
    cases: int = 0
    succeeded: int = 0
    no_audio: int = 0
    rejections: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    slowest_s: float = 0.0

    def summary(self) -> str:
        lines = [
            f"cases: {self.cases}",
            f"succeeded: {self.succeeded}",
            f"ended without audio: {self.no_audio}",
            f"rejected: {sum(self.rejections.values())}",
        ]
        lines += [f"  {name}: {count}" for name, count in self.rejections.most_common()]
        lines += [f"slowest case: {self.slowest_s:.2f} s", f"failures: {len(self.failures)}"]
        lines += [f"  {failure}" for failure in self.failures[:30]]
        return "\n".join(lines)


def rejection_field(error: str, job_input: Any) -> str | None:
    """The field a rejection names, or None when it names none the input could mean."""
    for name in sorted(KNOWN_FIELDS, key=len, reverse=True):
        if error.startswith(name + ": ") or (error.startswith(name + ".") and ": " in error):
            return name
    if isinstance(job_input, dict):
        for key in job_input:
            # One of the input's own keys (an unknown field, or a path into it), as errors render it;
            # its first 60 characters survive the bounding of a long name.
            shown_key = field_path([key])[:60]
            if error.startswith(shown_key):
                return "<other keys>"
    return None


def judge(job_input: Any, chunks: list[dict[str, Any]], report: Report) -> None:
    def fail(why: str) -> None:
        report.failures.append(f"{why}; input {bounded(repr(job_input), 160)}")

    if not chunks:
        return fail("no result at all")
    for chunk in chunks:
        try:
            json.dumps(chunk, allow_nan=False, ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            return fail(f"chunk is not UTF-8 JSON ({exc})")
    errors = [i for i, c in enumerate(chunks) if "error" in c]
    if not errors:
        report.succeeded += 1
        return None
    if errors != [len(chunks) - 1]:
        return fail(f"error chunk at {errors} of {len(chunks)}")
    error = chunks[-1]["error"]
    if not isinstance(error, str) or len(error) >= MESSAGE_CHARS:
        return fail(f"error of {len(error)} characters")
    if error == NO_AUDIO_ERROR:
        report.no_audio += 1
        return None
    if error.startswith("internal error"):
        return fail(f"internal error: {error}")
    name = rejection_field(error, job_input)
    if name is None:
        return fail(f"rejection names no field: {error!r}")
    report.rejections[name] += 1
    return None


async def _collect(runner, job: Job) -> list[dict[str, Any]]:
    return [chunk async for chunk in runpod_chunks(runner.stream(job))]  # a failure: an {"error"} chunk


def run_case(runner, job_input: Any, report: Report, timeout_s: float) -> None:
    report.cases += 1
    started = time.perf_counter()
    try:
        chunks = asyncio.run(
            asyncio.wait_for(_collect(runner, Job(id=f"fuzz-{report.cases}", input=job_input)), timeout_s)
        )
    except asyncio.TimeoutError:
        report.failures.append(f"hang (over {timeout_s} s); input {bounded(repr(job_input), 160)}")
        return
    except BaseException as exc:  # noqa: BLE001 - an escape is exactly what we are looking for
        report.failures.append(
            f"escape {type(exc).__name__}: {bounded(str(exc), 160)}; input {bounded(repr(job_input), 160)}"
        )
        return
    finally:
        report.slowest_s = max(report.slowest_s, time.perf_counter() - started)
    judge(job_input, chunks, report)


def fuzz(runner, cases: int, seed: int = 0, timeout_s: float = 30.0, progress: bool = False) -> Report:
    """Run `cases` generated inputs through `runner` (whose settings should cap job frames low)."""
    report = Report()

    @hypothesis_settings(
        max_examples=cases,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        derandomize=False,
    )
    @hypothesis_seed(seed)
    @given(job_inputs())
    def one(job_input):
        run_case(runner, job_input, report, timeout_s)
        if progress and report.cases % 500 == 0:
            print(f"... {report.cases} cases, {len(report.failures)} failures", flush=True)

    one()
    return report


def build_runner(checkpoint: Path | None, work: Path):
    from fish_worker.jobs.runner import JobRunner
    from fish_worker.tts.loader import load_tts
    from fish_worker.settings import Settings, StorageSettings
    from fish_worker.devtools.tiny_checkpoint import write_tiny_checkpoint

    checkpoint = checkpoint or write_tiny_checkpoint(work / "checkpoint", seed=0)
    settings = Settings(
        checkpoint_dir=checkpoint,
        device="cpu",
        warmup=False,
        max_job_frames=FUZZ_MAX_JOB_FRAMES,
        reference_max_seconds=5.0,
        storage=StorageSettings(voices_dir=work / "voices"),
    )
    return JobRunner(load_tts(settings), settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds one case may take")
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: a tiny one in a temp dir")
    args = parser.parse_args()

    import logging

    logging.basicConfig(level=logging.ERROR)  # rejections log at INFO: thousands of lines otherwise
    with tempfile.TemporaryDirectory() as work:
        runner = build_runner(args.checkpoint, Path(work))
        started = time.perf_counter()
        report = fuzz(runner, args.cases, args.seed, args.timeout, progress=True)
        elapsed = time.perf_counter() - started
    print(report.summary())
    print(f"time: {elapsed:.0f} s ({1000 * elapsed / max(1, report.cases):.1f} ms per case)")
    sys.exit(1 if report.failures else 0)


if __name__ == "__main__":
    main()
