"""Lambda code without Docker.

Two assets:

- **Function code**: the repository's own packages (``fanout/``, ``partitions/``, ``handlers/``),
  copied as they are with ``Code.from_asset`` and an exclude list. No build step: what the tests run is
  what ships.
- **Dependencies layer**: the project's runtime dependencies (``pyproject.toml``'s
  ``[project].dependencies``, Powertools included) installed for Lambda's platform
  (``manylinux2014_aarch64``, CPython 3.12, wheels only) by ``pip install --target`` on this machine,
  through CDK's ``ILocalBundling`` hook. Docker is never needed; pip needs the package index (or its
  cache) the first time only: the asset hash is the dependency list, so an unchanged list reuses the
  staged ``cdk.out/asset.<hash>`` folder and later synths are offline.

Why bundle Powertools rather than use the AWS-published layer: the engine pins its dependencies
(boto3 for aioboto3's aiobotocore, pydantic for pydantic-settings); a second layer shipping its own
pydantic and boto3 into the same ``/opt/python`` would shadow one set with the other file by file.
One layer built from one dependency list is what the tests ran against.

Tests and ``cdk synth`` without the index skip the bundling with CDK's own switch, the context key
``aws:cdk:bundling-stacks`` set to ``[]`` (the asset then keeps its hash but holds no files; never
deploy such an assembly). ``python -m infra.cdk.app`` accepts ``-c bundle=false`` for the same.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import AssetHashType, BundlingOptions, DockerImage, ILocalBundling
from aws_cdk import aws_lambda as lambda_

REPO_ROOT = Path(__file__).resolve().parents[2]
LAMBDA_PACKAGES = ("fanout", "partitions", "handlers")
# The operator tools (the `fanout` CLI, dead-letter tools, plan rendering, operator client) live in
# `fanout/` for one install, but no function imports them: they stay out of the asset.
OPERATOR_TOOLS = ("fanout/tools",)
LAMBDA_PLATFORM = "manylinux2014_aarch64"
LAMBDA_PYTHON = "3.12"
RUNTIME = lambda_.Runtime.PYTHON_3_12
ARCHITECTURE = lambda_.Architecture.ARM_64
# Already in the Lambda runtime (and not imported by the engine at run time), or used only by the
# operator tools (`rich` draws the CLI's progress bars).
_NOT_BUNDLED = ("boto3-stubs", "rich")


def function_code_excludes() -> list[str]:
    """Everything but the engine's packages (negated patterns keep them), and no bytecode."""
    keep = [f"!{p}" for p in LAMBDA_PACKAGES] + [f"!{p}/**" for p in LAMBDA_PACKAGES]
    tools = [*OPERATOR_TOOLS, *(f"{t}/**" for t in OPERATOR_TOOLS)]
    return ["*", ".*", *keep, *tools, "**/__pycache__", "**/*.pyc", "**/.mypy_cache", "**/.pytest_cache"]


def function_code() -> lambda_.Code:
    return lambda_.Code.from_asset(str(REPO_ROOT), exclude=function_code_excludes())


def runtime_dependencies() -> list[str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    deps: list[str] = project["dependencies"]
    return [d for d in deps if not d.startswith(_NOT_BUNDLED)]


@jsii.implements(ILocalBundling)
class PipLayerBundler:
    """``pip install --target <out>/python`` for Lambda's platform, on this machine."""

    def __init__(self, requirements: list[str]) -> None:
        self.requirements = requirements

    def try_bundle(self, output_dir: str, *, image: Any = None, **_: Any) -> bool:
        target = Path(output_dir) / "python"
        cmd = [
            sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--target", str(target), "--platform", LAMBDA_PLATFORM, "--implementation", "cp",
            "--python-version", LAMBDA_PYTHON, "--only-binary=:all:", "--upgrade", *self.requirements,
        ]  # fmt: skip
        if subprocess.run(cmd, check=False).returncode != 0:
            raise RuntimeError(
                "pip could not build the dependencies layer; synthesize with -c bundle=false to skip it"
            )
        for junk in target.glob("**/__pycache__"):
            shutil.rmtree(junk, ignore_errors=True)
        return True


def dependencies_code() -> lambda_.Code:
    requirements = runtime_dependencies()
    digest = hashlib.sha256(json.dumps([requirements, LAMBDA_PLATFORM, LAMBDA_PYTHON]).encode()).hexdigest()
    return lambda_.Code.from_asset(
        str(Path(__file__).parent / "layer"),
        asset_hash_type=AssetHashType.CUSTOM,
        asset_hash=digest,
        bundling=BundlingOptions(
            # Never pulled: local bundling always answers (or fails loudly) first.
            image=DockerImage.from_registry("public.ecr.aws/sam/build-python3.12"),
            local=PipLayerBundler(requirements),
        ),
    )
