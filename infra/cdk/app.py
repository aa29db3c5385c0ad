"""Entry point: ``python -m infra.cdk.app`` (``make synth``; ``cdk.json`` runs it for ``cdk deploy``).

Writes the cloud assembly to ``cdk.out/`` with no AWS account and no Docker. cdk-nag's AwsSolutions
pack runs as a policy-validation plugin: synth fails on any unacknowledged finding.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import aws_cdk as cdk
import cdk_nag

from infra.cdk.config import FanoutConfig
from infra.cdk.loadtest_stack import LoadTestStack
from infra.cdk.stack import FanoutStack

BUNDLING_STACKS = "aws:cdk:bundling-stacks"


def build_app(context: Mapping[str, Any] | None = None, outdir: str | None = None) -> cdk.App:
    """The app with both stacks; ``context`` as ``-c`` would give it (tests pass a dict)."""
    context = dict(context or {})
    if os.environ.get("FANOUT_CDK_BUNDLE", "").lower() == "false":
        context.setdefault("bundle", "false")
    app = cdk.App(context=context, outdir=outdir)
    # -c bundle=false (or FANOUT_CDK_BUNDLE=false): skip the dependencies layer build, CDK's own way.
    if str(app.node.try_get_context("bundle") or "true").lower() == "false":
        app.node.set_context(BUNDLING_STACKS, [])
    config = FanoutConfig.from_context(app.node)
    env = cdk.Environment(
        account=os.environ.get("CDK_DEFAULT_ACCOUNT"), region=os.environ.get("CDK_DEFAULT_REGION")
    )
    stack = FanoutStack(app, config.stack_name, config=config, env=env)
    if config.loadtest:
        LoadTestStack(
            app,
            f"{config.stack_name}LoadTest",
            config=stack.config,
            websocket_url=stack.websocket.url,
            token_secret=stack.token_secret,
            env=env,
        )
    cdk.Tags.of(app).add("project", "fanout")
    cdk.Validations.of(app).add_plugins(cdk_nag.AwsSolutionsChecks(app))
    return app


def main() -> None:
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    # Run by the cdk CLI, CDK_OUTDIR is set; run directly (make synth), write ./cdk.out like it would.
    build_app(outdir=os.environ.get("CDK_OUTDIR") or "cdk.out").synth()


if __name__ == "__main__":
    main()
