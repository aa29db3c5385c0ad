"""The CDK app sets, for every function, each variable its settings model requires (fanout/settings.py):
a function the template leaves one out of would fail every cold start."""

from __future__ import annotations

from typing import Any

from fanout.settings import FUNCTION_SETTINGS, required_env


def test_every_function_gets_the_variables_its_settings_require(fanout: dict[str, Any]) -> None:
    functions = [
        r["Properties"]
        for r in fanout["Resources"].values()
        if r["Type"] == "AWS::Lambda::Function" and "FunctionName" in r["Properties"]
    ]
    modules = set()
    for fn in functions:
        module = fn["Handler"].removeprefix("handlers.").removesuffix(".handler")
        modules.add(module)
        model = FUNCTION_SETTINGS.get(module)
        if model is None:  # the default route reads no settings
            assert module == "default", fn["FunctionName"]
            continue
        env = fn["Environment"]["Variables"]
        missing = [name for name in required_env(model) if name not in env]
        assert not missing, (fn["FunctionName"], model.__name__, missing)
    assert set(FUNCTION_SETTINGS) <= modules
