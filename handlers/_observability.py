"""Powertools Logger, Metrics (EMF) and Tracer for service "fanout", shared by the handlers.

The metrics namespace comes from POWERTOOLS_METRICS_NAMESPACE. Nothing here reads settings.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer

SERVICE = "fanout"

logger = Logger(service=SERVICE)
metrics = Metrics(service=SERVICE)
tracer = Tracer(service=SERVICE)
