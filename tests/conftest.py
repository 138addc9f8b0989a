"""Shared test helpers: the real-device corpus (skipped when absent) and temporary folders."""
from __future__ import annotations

import csv
import json
import os
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"

# One broker queue for this test session: test runs that share this machine's Redis never take each
# other's messages. Worker subprocesses inherit it through the environment.
os.environ.setdefault("MEDIASAN_QUEUE", f"mediasan-test-{uuid.uuid4().hex[:8]}")


def corpus_rows(kind: str | None = None, formats: tuple[str, ...] = ()) -> list[dict]:
    """Rows of ../shared/corpus/MANIFEST.tsv (empty when the corpus is absent)."""
    manifest = CORPUS / "MANIFEST.tsv"
    if not manifest.exists():
        return []
    with open(manifest) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [r for r in rows if (kind is None or r["kind"] == kind) and (not formats or r["format"] in formats)]


def corpus_params(kind: str | None = None, formats: tuple[str, ...] = ()):
    rows = corpus_rows(kind, formats)
    if not rows:
        return [pytest.param(None, marks=pytest.mark.skip(reason="../shared/corpus is absent"))]
    return [pytest.param(r, id=r["relative_path"]) for r in rows]


def corpus_oracle() -> dict[str, dict]:
    path = CORPUS / "oracle.json"
    if not path.exists():
        return {}
    return {e["SourceFile"]: e for e in json.loads(path.read_text())}


def expected_fix(row: dict) -> tuple[float, float] | None:
    """The manifest's fix, or None when it lists none (0,0 counts as none)."""
    if row["has_gps"] != "yes" or not row["gps_lat"]:
        return None
    lat, lon = float(row["gps_lat"]), float(row["gps_lon"])
    return None if (lat == 0 and lon == 0) else (lat, lon)


def build_and_sanitize(folder: Path, builders: dict) -> dict:
    """Build each fixture once (``builders``: file name -> (builder, anything)) and sanitize it once.
    Returns name -> (source, report): for module-scoped fixtures of slow-to-build media."""
    from worker.formats.base import Limits
    from worker.sanitizer import sanitize_file

    out = folder / "out"
    out.mkdir()
    results = {}
    for name, (builder, _) in builders.items():
        src = folder / name
        builder(src)
        results[name] = (src, sanitize_file(src, out / Path(name).stem, Limits()))
    return results


@pytest.fixture
def tool_runs(monkeypatch) -> list[list[str]]:
    """The argument list of every external tool started while the test runs (the tools still run:
    this records worker.tools.run_tool's calls, it replaces nothing)."""
    from worker import tools
    from worker.formats.av import av_rebuild

    started: list[list[str]] = []
    real = tools.run_tool

    def recording(args, *rest, **kwargs):
        started.append(list(args))
        return real(args, *rest, **kwargs)

    monkeypatch.setattr(tools, "run_tool", recording)
    monkeypatch.setattr(av_rebuild, "run_tool", recording)     # the remux imports it by name
    return started
