"""fish_worker's imports form layers: no cycle between modules, and every import runs downward.

Read from the source (every `import`, also those inside functions), so nothing is imported or run.

    entry points   worker.py, server/__main__.py           may import anything
    server/        the HTTP routers and their plumbing
    jobs/          the RunPod job runner, its wire input and outputs
    dialogue/      chat turns, the chat model, spoken replies
    tts/           the speech service, voices, caches
    conversations/ storage/ asr/
    engine/ audio/ text/
    errors settings tenancy async_bridge                      (the base: imports no other layer)

A module imports its own package or a lower layer, never a higher one nor another package of its own
layer; only the base's single modules may import each other (settings uses tenancy's name pattern; the
cycle check still applies). devtools/ (dev-only writers of tiny models and stress tools) is imported
only by entry points and itself imports only tts/ or below; devtools/quickstart.py is itself an entry
point (`python -m`, the quick start's last step: it runs the worker's own local-job path), and so is
devtools/chat_stress.py (`python -m`, it stresses dialogue/'s chat batcher).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "fish_worker"

LAYERS: dict[str, int] = {
    "server": 6,
    "jobs": 5,
    "dialogue": 4,
    "tts": 3,
    "conversations": 2,
    "storage": 2,
    "asr": 2,
    "engine": 1,
    "audio": 1,
    "text": 1,
    "errors": 0,
    "settings": 0,
    "tenancy": 0,
    "async_bridge": 0,
}
ENTRY_POINTS = {
    "fish_worker.worker",
    "fish_worker.server.__main__",
    "fish_worker.devtools.quickstart",
    "fish_worker.devtools.chat_stress",
}
DEVTOOLS = "devtools"
DEVTOOLS_MAY_IMPORT_UP_TO = LAYERS["tts"]

# Upward imports that are known and being removed, each with the reason it is still here. The test
# fails once one has gone, so the exception cannot outlive its cause: delete the entry then.
KNOWN_UPWARD: dict[tuple[str, str], str] = {}


def module_files() -> dict[str, Path]:
    modules = {}
    for path in (ROOT / PACKAGE).rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The fish_worker modules `module` imports; `from pkg import name` counts as pkg.name if that is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {name for name in found if name in modules and name != module}


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {module: imports_of(module, path, modules) for module, path in modules.items()}


def group(module: str) -> str | None:
    """The top-level package or loose module under fish_worker; None for fish_worker itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules around it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        source = group(module)
        for target in sorted(targets):
            to = group(target)
            if module in ENTRY_POINTS or to is None or to == source or (module, target) in KNOWN_UPWARD:
                continue
            if to == DEVTOOLS:
                problems.append(f"{module} imports {target}: only entry points may import devtools")
            elif source == DEVTOOLS:
                if LAYERS.get(to, 99) > DEVTOOLS_MAY_IMPORT_UP_TO:
                    problems.append(f"{module} imports {target}: devtools sits below jobs/dialogue/server")
            elif source in LAYERS and to in LAYERS and LAYERS[to] >= LAYERS[source] and LAYERS[to] > 0:
                problems.append(
                    f"{module} ({source}, layer {LAYERS[source]}) imports {target} "
                    f"({to}, layer {LAYERS[to]}): imports must run downward"
                )
            elif source not in LAYERS or to not in LAYERS:
                problems.append(
                    f"{module} imports {target}: put {source if source not in LAYERS else to} "
                    "in a layer (LAYERS in this test)"
                )
    return problems


def test_there_is_no_import_cycle_between_fish_worker_modules():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_every_import_runs_down_the_layers():
    assert layer_violations(import_graph()) == []


def test_known_upward_imports_still_exist_so_none_outlives_its_cause():
    graph = import_graph()
    gone = [f"{source} -> {target}" for source, target in KNOWN_UPWARD if target not in graph.get(source, set())]
    assert gone == [], f"remove these from KNOWN_UPWARD, they are fixed: {gone}"


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"a2"}, "a2": {"a2b"}, "a2b": {"a2"}}, ["a2", "a2b", "a2"]),
    ],
)
def test_the_cycle_finder_finds_cycles_and_only_cycles(graph, expected):
    assert find_cycle(graph) == expected


def test_the_layer_check_flags_upward_and_devtools_imports():
    graph = {
        "fish_worker.engine.codec": {"fish_worker.jobs.runner"},
        "fish_worker.tts.service": {"fish_worker.devtools.download", "fish_worker.engine.codec"},
        "fish_worker.devtools.tiny_checkpoint": {"fish_worker.server.app", "fish_worker.engine.codec"},
        "fish_worker.worker": {"fish_worker.devtools.download", "fish_worker.server.app"},
        "fish_worker.audio.formats": {"fish_worker.engine.codec"},
    }
    problems = layer_violations(graph)
    assert len(problems) == 4, problems
    assert any(
        p.startswith("fish_worker.engine.codec (engine, layer 1) imports fish_worker.jobs.runner") for p in problems
    )
    assert any("only entry points may import devtools" in p for p in problems)
    assert any("devtools sits below" in p for p in problems)
    assert any(p.startswith("fish_worker.audio.formats (audio, layer 1) imports fish_worker.engine") for p in problems)


# The app's shared objects are built and kept by create_app; routes get them as typed dependencies.
APP_STATE_READERS = {"fish_worker.server.app", "fish_worker.server.dependencies"}


def test_only_the_app_factory_and_the_dependencies_touch_app_state():
    touching = sorted(
        module
        for module, path in module_files().items()
        if "app.state" in path.read_text() and module not in APP_STATE_READERS
    )
    assert touching == [], f"read these through server/dependencies.py instead: {touching}"
