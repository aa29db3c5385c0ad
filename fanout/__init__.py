"""fanout: a scale-out broadcast engine for AWS API Gateway WebSocket APIs."""

__version__ = "0.1.0"
