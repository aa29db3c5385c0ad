"""The local stack's modules that every worker process or test imports stay standard library only:
the worker (imported before each function's handler, so any heavier import adds to every cold
start), the event shapes and the log format."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("module", ["infra.local.runtime_worker", "infra.local.events", "infra.local.logs"])
def test_module_imports_only_the_standard_library(module: str) -> None:
    # Given a fresh interpreter, When it imports the module
    code = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        f"import {module}\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    # Then everything it brought in is the project's own package path or the standard library
    assert module in loaded
    foreign = [
        m
        for m in loaded
        if m.split(".")[0] not in sys.stdlib_module_names
        and m.split(".")[0] != "infra"
        and m != "_distutils_hack"
    ]
    assert foreign == []
    assert [m for m in loaded if m.startswith("infra.") and m not in ("infra.local", module)] == []
