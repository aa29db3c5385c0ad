"""cdk-nag (AwsSolutions) and cfn-lint on the synthesized app."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.infra.conftest import Synth

pytestmark = pytest.mark.slow


def test_cdk_nag_has_no_unacknowledged_findings(synth: Synth) -> None:
    findings = [
        f"{v['ruleName']} at {c['constructPath']}: {v['description']}"
        for report in synth.report["pluginReports"]
        for v in report["violations"]
        for c in v["violatingConstructs"]
    ]
    assert not findings, "\n".join(findings)
    assert synth.error is None


def test_every_acknowledgment_has_a_reason(synth: Synth) -> None:
    from aws_cdk import Validations

    acknowledged: dict[str, str] = {}
    for construct in synth.app.node.find_all():
        for entry in construct.node.metadata:
            if entry.type == Validations.ACKNOWLEDGED_RULES_METADATA_KEY:
                for rule, reason in entry.data.items():
                    acknowledged[f"{construct.node.path}: {rule}"] = reason
    rules = " ".join(acknowledged)
    for expected in ("AwsSolutions-IAM5[Resource::*]", "AwsSolutions-APIG4", "AwsSolutions-SMG4"):
        assert expected in rules
    for where, reason in acknowledged.items():
        assert len(str(reason)) >= 40, where


@pytest.mark.parametrize("stack", ["Fanout", "FanoutLoadTest"])
def test_cfn_lint_reports_no_errors(synth: Synth, stack: str) -> None:
    from cfnlint.api import ManualArgs, lint_file

    matches = lint_file(
        Path(synth.outdir / f"{stack}.template.json"), config=ManualArgs(regions=["us-east-1", "eu-west-1"])
    )
    errors = [f"{m.rule.id} {m.message} ({m.path})" for m in matches if m.rule.id.startswith("E")]
    assert not errors, "\n".join(errors)
