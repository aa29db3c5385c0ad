"""Operator tools: the `fanout` CLI, the dead-letter tools, plan rendering and the operator API client.

They sit above the handlers: nothing under `handlers/`, the core or the adapters imports them, and
the Lambda asset leaves them out (the CLI's argparse and `rich` have no place in a function).
"""
