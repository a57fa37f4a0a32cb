"""The hostile-client probe (scripts/probe_server.py) on every door of a real `python -m fish_worker.server`.

The gate for a door (issue 23): slow and never-reading clients, hang-ups, decompression bombs, nesting
bombs, lone surrogates, oversized headers and concurrent maximal bodies must each end in a clean answer,
with no 5xx, no traceback in the server's log, every slot back within a bound and memory within a budget.
The server runs as a subprocess (its own RSS and stderr) with the short deadlines of PROBE_SERVER_ENV.
Select with `-m probe` (`pytest -m probe tests/test_hostile_probe.py`); see docs/development.md.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _probe_module():
    """scripts/probe_server.py, imported from its file (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("probe_server", ROOT / "scripts" / "probe_server.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


probe = _probe_module()
pytestmark = pytest.mark.probe


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    started = probe.start_server(tiny_checkpoint, tmp_path_factory.mktemp("probe-server"))
    yield started
    started.stop()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("door", probe.DOOR_NAMES)
def test_door_survives_hostile_clients(server, door):
    lines: list[str] = []
    results = probe.run_probe(server.config(short=True, doors=(door,), out=lines.append))
    assert results, f"no case ran on {door}"
    failed = [r.line() for r in results if not r.ok]
    assert not failed, f"{len(failed)} of {len(results)} cases failed:\n" + "\n".join(failed)
