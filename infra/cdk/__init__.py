"""The AWS CDK v2 app of fanout: a thin stack composing one construct per concern (see stack.py)."""
