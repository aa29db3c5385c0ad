"""cdk-nag acknowledgments: one place to spell them, each with its reason."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Validations
from constructs import IConstruct


def acknowledge(scope: IConstruct, rule: str, reason: str) -> None:
    """Acknowledge one AwsSolutions finding (``AwsSolutions-IAM5[Resource::*]``) on ``scope``."""
    if len(reason) < 40:
        raise ValueError(f"{rule}: write why the finding is acceptable")
    Validations.of(scope).acknowledge(Acknowledgment(id=rule, reason=reason))
