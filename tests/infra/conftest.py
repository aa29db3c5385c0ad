"""One synthesis per test session (the first synth in a process costs ~10-20 s).

The app is synthesized with Q=3 shards, N=50 partitions, the load-test stack on and Lambda layer
bundling off (context ``bundle=false``: no pip, no Docker, no network). cdk-nag runs as it does for
``make synth``; a failed validation still writes the templates and the report, so every test can
look at them and the nag test reports the findings.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

SHARDS = 3
PARTITIONS = 50
CONTEXT = {
    "bundle": "false",
    "shards": str(SHARDS),  # strings, as `cdk -c shards=3` passes them
    "partitions": str(PARTITIONS),
    "loadtest": "true",
    "loadtestWorkers": "7",
    "stageName": "live",
}


@dataclass
class Synth:
    outdir: Path
    templates: dict[str, dict[str, Any]]
    report: dict[str, Any]
    error: str | None
    app: Any

    def resources(self, stack: str, type_: str) -> dict[str, dict[str, Any]]:
        return {k: r for k, r in self.templates[stack]["Resources"].items() if r["Type"] == type_}


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    from infra.cdk.app import build_app

    outdir = tmp_path_factory.mktemp("cdk.out")
    app = build_app(CONTEXT, outdir=str(outdir))
    error = None
    try:
        app.synth()
    except RuntimeError as exc:  # ValidationFailed: the report says why
        error = str(exc)
    templates = {
        p.name.removesuffix(".template.json"): json.loads(p.read_text())
        for p in outdir.glob("*.template.json")
    }
    report_file = outdir / "validation-report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {"pluginReports": []}
    return Synth(outdir=outdir, templates=templates, report=report, error=error, app=app)


@pytest.fixture(scope="session")
def fanout(synth: Synth) -> dict[str, Any]:
    return synth.templates["Fanout"]


@pytest.fixture(scope="session")
def template(fanout: dict[str, Any]) -> Any:
    from aws_cdk.assertions import Template

    return Template.from_json(fanout)
