"""The documentation cannot rot: every shell block in README.md and docs/*.md is run, or says why not,
and docs/configuration.md lists every variable the code reads, with its default; every relative link
(file and heading) resolves.

Each fenced bash/sh block is preceded by a marker, `<!-- commands: KIND -->`:

    here                  this test runs it (tiny checkpoint, CPU)
    serve                 this test starts it, waits for GET /ping to answer 200, then runs the
                          file's `with-server` blocks against it and stops it
    with-server           run against the file's `serve` block (localhost:8000 becomes its port)
    ci                    each command is a line of .ci/run
    tests/<file>.py       that test runs it (each script the block names is named in the file)
    needs-gpu, needs-network, needs-deployment   not runnable on a CPU machine without network
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
NOT_RUNNABLE = {"needs-gpu", "needs-network", "needs-deployment"}
MARKER = re.compile(r"^\s*<!--\s*commands:\s*(\S+)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    kind: str | None  # the marker before it; None: unmarked
    text: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    def commands(self) -> list[str]:
        """One entry per command: continuation lines joined, comments and blank lines left out."""
        joined = re.sub(r"\\\n\s*", "", self.text)
        lines = (re.sub(r"\s+#\s.*$", "", line).strip() for line in joined.splitlines())
        return [line for line in lines if line and not line.startswith("#")]


def shell_blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        if opening.group(2) in SHELL_LANGUAGES:
            before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            marker = MARKER.match(before)
            indent = len(opening.group(1))
            body = "\n".join(line[indent:] for line in lines[i + 1 : end])
            blocks.append(Block(path, i + 1, marker.group(1) if marker else None, body))
        i = end + 1
    return blocks


BLOCKS = [block for path in DOCS for block in shell_blocks(path)]


def blocks_of(kind: str) -> list[Block]:
    return [block for block in BLOCKS if block.kind == kind]


def test_every_shell_block_is_run_or_says_why_not():
    known = {"here", "serve", "with-server", "ci"} | NOT_RUNNABLE
    unaccounted = [
        f"{b.name} ({b.kind or 'no marker'})"
        for b in BLOCKS
        if b.kind not in known and not (b.kind or "").startswith("tests/")
    ]
    assert not unaccounted, (
        "shell blocks nothing runs: put <!-- commands: here|serve|with-server|ci|tests/<file>.py|"
        f"needs-gpu|needs-network|needs-deployment --> before each (see {Path(__file__).name}): {unaccounted}"
    )
    assert blocks_of("here") and blocks_of("ci")  # the parser found the README's and the docs' blocks


def test_ci_runs_every_ci_command():
    ci_lines = {line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()}
    for block in blocks_of("ci"):
        missing = [command for command in block.commands() if command not in ci_lines]
        assert not missing, f"{block.name}: not in .ci/run: {missing}"


@pytest.mark.parametrize("block", [b for b in BLOCKS if (b.kind or "").startswith("tests/")], ids=lambda b: b.name)
def test_the_named_test_runs_the_blocks_scripts(block):
    test_file = ROOT / block.kind
    assert test_file.is_file(), f"{block.name}: no such test file {block.kind}"
    source = test_file.read_text()
    scripts = {
        word
        for command in block.commands()
        for word in command.split()
        if re.fullmatch(r"[\w./-]+\.(py|mjs|js|sh)", word)
    }
    assert scripts, f"{block.name}: names no script for {block.kind} to run"
    for script in scripts:
        assert Path(script).name in source, f"{block.name}: {block.kind} never mentions {script}"


# Paths the docs use for what the quick start writes, here the session's tiny checkpoint and temp dirs.
@pytest.fixture
def substitutions(tiny_checkpoint, tmp_path):
    return {
        "checkpoints/tiny": str(tiny_checkpoint),
        "/tmp/tiny-chat": str(tmp_path / "tiny-chat"),
        "/tmp/tiny-checkpoint": str(tmp_path / "tiny-checkpoint"),
        "/tmp/tiny-whisper": str(tmp_path / "tiny-whisper"),
        "/tmp/hello.wav": str(tmp_path / "hello.wav"),
        ".venv/bin/python": sys.executable,
    }


def substituted(text: str, substitutions: dict[str, str]) -> str:
    for old, new in substitutions.items():
        text = text.replace(old, new)
    return text


def doc_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "FISH_WARMUP": "false", "FISH_DEVICE": "cpu", **extra}
    env.pop("RUNPOD_WEBHOOK_GET_JOB", None)  # handler.py runs the given job, not the queue
    return env


@pytest.mark.timeout(300)
@pytest.mark.parametrize("block", blocks_of("here"), ids=lambda b: b.name)
def test_here_block_runs(block, substitutions):
    script = "set -euo pipefail\n" + substituted(block.text, substitutions)
    result = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, env=doc_env(), capture_output=True, text=True, timeout=280
    )
    assert result.returncode == 0, f"{block.name} failed:\n{result.stdout[-1500:]}\n{result.stderr[-3000:]}"
    assert '"error"' not in result.stdout[-2000:], f"{block.name}: {result.stdout[-1500:]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(url: str, process: subprocess.Popen, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited with {process.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer 200 within {deadline_s} s")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("block", blocks_of("serve"), ids=lambda b: b.name)
def test_served_block_answers(block, substitutions, tmp_path):
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        ["bash", "-c", substituted(block.text, substitutions)],
        cwd=ROOT,
        env=doc_env(PORT=str(port), FISH_HOST="127.0.0.1"),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/ping", server, deadline_s=240)
        for client in [b for b in blocks_of("with-server") if b.path == block.path]:
            script = "set -euo pipefail\n" + substituted(
                client.text, {**substitutions, "localhost:8000": f"127.0.0.1:{port}"}
            )
            result = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
            assert result.returncode == 0 and '"status":"success"' in result.stdout.replace(" ", ""), (
                f"{client.name}: {result.stdout[-1000:]} {result.stderr[-1000:]}"
            )
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the group this test started: bash and the server
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def test_every_with_server_block_has_a_server():
    served = {b.path for b in blocks_of("serve")}
    assert all(b.path in served for b in blocks_of("with-server"))


# ---- docs/configuration.md ---------------------------------------------------------------------------


def env_names(settings_class: type[BaseSettings]) -> dict[str, object]:
    """Every variable a settings class reads (sections included) → its default."""
    names: dict[str, object] = {}
    prefix = settings_class.model_config.get("env_prefix", "")
    for field_name, field in settings_class.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseSettings):
            names.update(env_names(field.annotation))
            continue
        alias = field.validation_alias
        choices = [c for c in getattr(alias, "choices", [alias] if alias else []) if isinstance(c, str)]
        spelled = [c.upper() for c in choices if c.upper() == c] or [f"{prefix}{field_name}".upper()]
        names[spelled[0]] = field.get_default(call_default_factory=True)
    return names


def documented_defaults() -> dict[str, str]:
    """`NAME` (or `NAME` (or `OTHER`)) → the default cell of its row in docs/configuration.md."""
    rows = {}
    for line in (ROOT / "docs" / "configuration.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 3:
            for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0]):
                rows[name] = cells[1]
    return rows


def rendered(default: object) -> str:
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    if isinstance(default, Path) and default.is_relative_to(Path.home()):  # a per-user default
        return f"~/{default.relative_to(Path.home())}"
    return str(default)


def test_configuration_lists_every_variable_with_its_default():
    from fish_worker.settings import Settings

    rows = documented_defaults()
    variables = env_names(Settings)  # the one Settings, its sections included
    missing = sorted(set(variables) - set(rows))
    assert not missing, f"docs/configuration.md does not list {missing}"
    for name, default in variables.items():
        cell = rows[name]
        if default in (None, ""):
            assert cell.startswith("none") or "a short" in cell, f"{name}: default is unset, the docs say {cell!r}"
        elif len(rendered(default)) <= 60:  # not the chat system prompt
            assert f"`{rendered(default)}`" in cell, f"{name}: default {rendered(default)!r}, the docs say {cell!r}"


LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors for a file's headings: lowercased, punctuation dropped, spaces become hyphens."""
    anchors, in_fence = set(), False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and (m := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)):
            text = re.sub(r"[`*_]", "", m.group(1)).lower()
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text)))
    return anchors


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_something(doc):
    """Links between the docs (and to files of the repository) resolve, anchors included."""
    broken = []
    for number, line in enumerate(doc.read_text().splitlines(), 1):
        for match in LINK.finditer(line):
            target = match.group(1) or match.group(2)
            if re.match(r"^[a-z]+:", target):  # http(s):, mailto: ... (not checked: no network in tests)
                continue
            file, _, anchor = target.partition("#")
            path = (doc.parent / file).resolve() if file else doc
            if not path.is_relative_to(ROOT):  # exists on one machine, not in a clone
                broken.append(f"{doc.name}:{number}: {target} (outside the repository)")
            elif not path.exists():
                broken.append(f"{doc.name}:{number}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in heading_anchors(path):
                broken.append(f"{doc.name}:{number}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind not in NOT_RUNNABLE], ids=lambda b: b.name)
def test_commands_name_the_interpreter_a_reader_needs(block):
    # A fresh clone's system python has neither torch nor httpx: commands run with the project's venv.
    bare = [
        command for command in block.commands() if re.search(r"(^|[\s;&|=])(python3?|pip3?)\s", command.split("#")[0])
    ]
    assert not bare, f"{block.name}: use .venv/bin/python (the venv the quick start makes): {bare}"
