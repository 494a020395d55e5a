"""The committed gRPC stubs (src/dispatcher/v1) are exactly what scripts/gen_protos.py
generates from protos/ now, so they can never go stale. To fix a failure, run
``python scripts/gen_protos.py`` and commit the result."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def files_under(folder: Path) -> set[Path]:
    return {
        p.relative_to(folder)
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_committed_stubs_match_the_protos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # protoc finds the mypy-protobuf plugins (protoc-gen-mypy*) on PATH: the venv's bin.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    load_generator().generate(tmp_path)

    generated = files_under(tmp_path)
    assert generated, "gen_protos.generate() wrote nothing"
    packages = {f.parent for f in generated}
    committed = {pkg / f for pkg in packages for f in files_under(SRC / pkg)}

    assert sorted(map(str, committed - generated)) == [], "committed but no longer generated"
    assert sorted(map(str, generated - committed)) == [], "generated but not committed"
    stale = sorted(
        str(f) for f in generated if (tmp_path / f).read_bytes() != (SRC / f).read_bytes()
    )
    assert stale == [], "committed stubs differ; run python scripts/gen_protos.py"
