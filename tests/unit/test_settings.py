"""Per-function settings: what each function cannot run without fails its construction (at cold
start), naming the environment variable to set."""

from __future__ import annotations

import importlib
import json
import os
from types import ModuleType
from typing import Any

import pytest

from fanout.errors import ConfigurationError
from fanout.settings import (
    FUNCTION_SETTINGS,
    AuthorizerSettings,
    ChannelCounterSettings,
    ChannelReconcilerSettings,
    ConnectSettings,
    DefaultSettings,
    DisconnectSettings,
    FunctionSettings,
    OperatorApiSettings,
    PartitionCounterSettings,
    PostSettings,
    QuerySettings,
    ReconcilerSettings,
    RecoverySettings,
    Settings,
    SwarmSettings,
    SweeperSettings,
    load,
    required_env,
)
from tests.events import LambdaContextStub, sqs_event

CONNECTIONS = "FANOUT_CONNECTIONS_TABLE"
PARTITIONS = "FANOUT_PARTITIONS_TABLE"
BROADCASTS = "FANOUT_BROADCASTS_TABLE"
IDEMPOTENCY = "FANOUT_IDEMPOTENCY_TABLE"
SUBSCRIPTIONS = "FANOUT_SUBSCRIPTIONS_TABLE"
CHANNELS = "FANOUT_CHANNELS_TABLE"
RATE_LIMITS = "FANOUT_RATE_LIMITS_TABLE"
TABLES = {CONNECTIONS, PARTITIONS, BROADCASTS, IDEMPOTENCY, SUBSCRIPTIONS, CHANNELS}
PARTITION_QUEUES = "FANOUT_PARTITION_QUEUE_URLS"
POST_QUEUES = "FANOUT_POST_QUEUE_URLS"
ENDPOINT = "FANOUT_CONNECTIONS_ENDPOINT"
SWARM_FUNCTION = "FANOUT_SWARM_FUNCTION_NAME"
TOKEN_SECRET = "FANOUT_TOKEN_SECRET_ARN"
HISTORY = "FANOUT_HISTORY_TABLE"

# What each function cannot run without: written out here, not read from the models, so that a
# model losing a requirement fails these tests.
REQUIRED: dict[type[FunctionSettings], set[str]] = {
    AuthorizerSettings: {TOKEN_SECRET},
    ConnectSettings: {CONNECTIONS, PARTITIONS, SUBSCRIPTIONS},
    DisconnectSettings: {CONNECTIONS, SUBSCRIPTIONS},
    DefaultSettings: {CONNECTIONS, SUBSCRIPTIONS, BROADCASTS, IDEMPOTENCY, SWARM_FUNCTION, RATE_LIMITS},
    ChannelCounterSettings: {CHANNELS},
    ChannelReconcilerSettings: {CHANNELS, SUBSCRIPTIONS},
    PartitionCounterSettings: {PARTITIONS},
    ReconcilerSettings: {CONNECTIONS, PARTITIONS},
    OperatorApiSettings: {BROADCASTS, IDEMPOTENCY, SWARM_FUNCTION, CHANNELS, HISTORY},
    SweeperSettings: {BROADCASTS, IDEMPOTENCY, SWARM_FUNCTION},
    SwarmSettings: TABLES | {PARTITION_QUEUES, POST_QUEUES},
    QuerySettings: TABLES | {POST_QUEUES},
    PostSettings: TABLES | {POST_QUEUES, ENDPOINT},
    RecoverySettings: {SUBSCRIPTIONS, HISTORY, ENDPOINT},
}

SHARDS = 4  # the default FANOUT_SHARD_COUNT
VALUES = {
    CONNECTIONS: "t-connections",
    PARTITIONS: "t-partitions",
    BROADCASTS: "t-broadcasts",
    IDEMPOTENCY: "t-idempotency",
    SUBSCRIPTIONS: "t-subscriptions",
    CHANNELS: "t-channels",
    RATE_LIMITS: "t-rate-limits",
    PARTITION_QUEUES: json.dumps([f"https://sqs.test/partition-{i}" for i in range(SHARDS)]),
    POST_QUEUES: json.dumps([f"https://sqs.test/post-{i}" for i in range(SHARDS)]),
    ENDPOINT: "https://abc123.execute-api.us-east-1.amazonaws.com/prod",
    SWARM_FUNCTION: "t-swarm",
    HISTORY: "t-history",
    TOKEN_SECRET: "arn:aws:secretsmanager:us-east-1:123456789012:secret:t-token",
}
EMPTY = {PARTITION_QUEUES: "[]", POST_QUEUES: "[]"}  # otherwise ""

CASES = [(model, var) for model, required in REQUIRED.items() for var in sorted(required)]


def _id(case: Any) -> str:
    return case.__name__ if isinstance(case, type) else str(case)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No FANOUT_* variable from the shell or an earlier test; no settings built before."""
    for name in list(os.environ):
        if name.startswith("FANOUT_"):
            monkeypatch.delenv(name)
    load.cache_clear()


def set_env(monkeypatch: pytest.MonkeyPatch, names: set[str]) -> None:
    for name in names:
        monkeypatch.setenv(name, VALUES[name])


def test_every_function_with_settings_has_its_requirements_listed() -> None:
    assert set(FUNCTION_SETTINGS.values()) == set(REQUIRED)
    for model, required in REQUIRED.items():
        assert set(required_env(model)) == required, model.__name__


@pytest.mark.parametrize("model", list(REQUIRED), ids=_id)
def test_the_required_variables_are_enough(
    model: type[FunctionSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    set_env(monkeypatch, REQUIRED[model])
    built = model()
    for var in REQUIRED[model]:
        value = getattr(built, var.removeprefix("FANOUT_").lower())
        assert value == (json.loads(VALUES[var]) if isinstance(value, list) else VALUES[var])


@pytest.mark.parametrize(("model", "var"), CASES, ids=_id)
def test_a_missing_variable_fails_construction_naming_it(
    model: type[FunctionSettings], var: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_env(monkeypatch, REQUIRED[model] - {var})
    with pytest.raises(ConfigurationError) as failed:
        model()
    assert str(failed.value) == f"{model.__name__}: missing settings: {var}"
    with pytest.raises(ConfigurationError, match=var):
        load(model)


@pytest.mark.parametrize(("model", "var"), CASES, ids=_id)
def test_an_empty_variable_is_refused_like_a_missing_one(
    model: type[FunctionSettings], var: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_env(monkeypatch, REQUIRED[model] - {var})
    monkeypatch.setenv(var, EMPTY.get(var, ""))
    with pytest.raises(ConfigurationError, match=f"invalid settings: {var}: "):
        model()


def test_queue_urls_must_match_the_shard_count(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, REQUIRED[PostSettings])
    monkeypatch.setenv("FANOUT_SHARD_COUNT", "2")
    with pytest.raises(ConfigurationError) as failed:
        PostSettings()
    assert f"{POST_QUEUES} has {SHARDS} urls but FANOUT_SHARD_COUNT is 2" in str(failed.value)


def test_a_list_that_is_not_json_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, REQUIRED[QuerySettings])
    monkeypatch.setenv(POST_QUEUES, "https://sqs.test/post-0")
    with pytest.raises(ConfigurationError, match=f"{POST_QUEUES} is not valid JSON"):
        QuerySettings()


def test_field_bounds_are_still_checked_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, REQUIRED[PostSettings])
    monkeypatch.setenv("FANOUT_POST_CONCURRENCY", "0")
    with pytest.raises(
        ConfigurationError, match=r"invalid settings: FANOUT_POST_CONCURRENCY: .*greater than"
    ):
        PostSettings()


def test_a_queue_url_a_function_does_not_use_is_not_required(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, REQUIRED[QuerySettings])
    assert QuerySettings().partition_queue_urls == []
    assert QuerySettings().post_dead_letter_queue_urls == []


def test_load_builds_each_model_once(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, REQUIRED[ConnectSettings] | REQUIRED[OperatorApiSettings])
    first = load(ConnectSettings)
    assert load(ConnectSettings) is first
    assert load(OperatorApiSettings).broadcasts_table == VALUES[BROADCASTS]
    monkeypatch.setenv(CONNECTIONS, "renamed")
    assert load(ConnectSettings).connections_table == VALUES[CONNECTIONS]  # read once, at cold start
    load.cache_clear()
    assert load(ConnectSettings).connections_table == "renamed"


def test_the_tools_model_stands_for_every_function_and_names_what_it_provisions() -> None:
    settings = Settings()
    assert all(isinstance(settings, model) for model in REQUIRED)
    provisioned = settings.resource_environment()
    assert provisioned[CONNECTIONS] == settings.connections_table == "fanout-connections"
    # What a stack creates besides (queues, the endpoint, the secret) it sets itself; every other
    # requirement of every function is covered by these names.
    created = {PARTITION_QUEUES, POST_QUEUES, ENDPOINT, TOKEN_SECRET}
    for model, required in REQUIRED.items():
        assert required - created <= set(provisioned), model.__name__


# -- handlers: the first invocation builds the settings before any record ---------------------------
def fresh(name: str) -> ModuleType:
    """The handler module as a new container has it: no settings, no clients built yet."""
    module = importlib.import_module(name)
    for value in vars(module).values():
        clear = getattr(value, "cache_clear", None)
        if callable(clear):
            clear()
    return module


def unreadable_sqs_event() -> dict[str, Any]:
    # A body no stage can decode: if records were processed, the batch would report item failures
    # instead of raising.
    message = {"MessageId": "m-1", "ReceiptHandle": "r-1", "Body": "not a task"}
    return sqs_event([message], "arn:aws:sqs:us-east-1:123456789012:t-queue")


@pytest.mark.parametrize(
    ("module", "var"),
    [
        ("handlers.swarm", PARTITION_QUEUES),
        ("handlers.query", POST_QUEUES),
        ("handlers.post", POST_QUEUES),
        ("handlers.post", ENDPOINT),
    ],
)
def test_a_queue_consumer_without_its_queue_fails_its_first_invocation_naming_it(
    module: str, var: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = module.removeprefix("handlers.")
    set_env(monkeypatch, REQUIRED[FUNCTION_SETTINGS[key]] - {var})
    handler = fresh(module).handler
    event = (
        {"broadcastId": "00000000-0000-4000-8000-000000000000"} if key == "swarm" else unreadable_sqs_event()
    )
    with pytest.raises(ConfigurationError, match=f"missing settings: {var}$"):
        handler(event, LambdaContextStub(f"fanout-{key}"))


def test_the_authorizer_without_its_secret_fails_instead_of_refusing_the_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handler = fresh("handlers.authorizer").handler
    event = {
        "type": "REQUEST",
        "methodArn": "arn:aws:execute-api:us-east-1:123456789012:abc123/prod/$connect",
        "queryStringParameters": {"token": "any"},
        "requestContext": {"connectionId": "c-1", "routeKey": "$connect"},
    }
    with pytest.raises(ConfigurationError, match=f"missing settings: {TOKEN_SECRET}$"):
        handler(event, LambdaContextStub("fanout-authorizer"))


def test_the_sweeper_without_the_swarm_function_fails_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, REQUIRED[SweeperSettings] - {SWARM_FUNCTION})
    handler = fresh("handlers.sweeper").handler
    with pytest.raises(ConfigurationError, match=f"missing settings: {SWARM_FUNCTION}$"):
        handler({}, LambdaContextStub("fanout-sweeper"))
