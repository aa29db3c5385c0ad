"""The per-container event loop: uvloop when importable unless turned off, and Powertools runs on it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import uvloop
from aws_lambda_powertools.utilities.batch import (
    AsyncBatchProcessor,
    EventType,
    async_process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from fanout.container import thread_loop
from fanout.settings import Settings
from tests.events import LambdaContextStub, sqs_event

T = TypeVar("T")


def in_new_thread(fn: Callable[[], T]) -> T:
    """Run `fn` in a fresh thread (thread_loop() keeps one loop per thread), return what it returned."""
    out: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    t = threading.Thread(target=target)
    t.start()
    t.join(30)
    if errors:
        raise errors[0]
    return out[0]


def test_uvloop_setting_defaults_on_and_turns_off_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().uvloop is True
    monkeypatch.setenv("FANOUT_UVLOOP", "false")
    assert Settings().uvloop is False


@pytest.mark.parametrize("use_uvloop", [True, False])
def test_thread_loop_is_created_once_and_becomes_the_current_loop(use_uvloop: bool) -> None:
    def scenario() -> tuple[bool, bool, bool]:
        loop = thread_loop(use_uvloop=use_uvloop)
        again = thread_loop(use_uvloop=not use_uvloop)  # the first container of the thread chose
        current = asyncio.get_event_loop()
        loop.close()
        return isinstance(loop, uvloop.Loop), again is loop, current is loop

    is_uvloop, same, current = in_new_thread(scenario)
    assert is_uvloop is use_uvloop
    assert same and current


def test_powertools_async_batch_processor_runs_on_the_containers_uvloop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given Lambda's environment (Powertools then takes the thread's current loop) and a uvloop loop
    monkeypatch.setenv("LAMBDA_TASK_ROOT", "/var/task")
    processor = AsyncBatchProcessor(event_type=EventType.SQS)
    messages = [{"MessageId": f"m{i}", "ReceiptHandle": f"r{i}", "Body": str(i)} for i in range(3)]
    event = sqs_event(messages, "arn:aws:sqs:us-east-1:123456789012:post-0")

    def scenario() -> tuple[bool, list[bool], list[Any]]:
        loop = thread_loop(use_uvloop=True)
        seen: list[asyncio.AbstractEventLoop] = []
        responses = []

        async def record_handler(record: SQSRecord) -> str:
            seen.append(asyncio.get_running_loop())
            if record.body == "1":
                raise ValueError("this one fails")
            await asyncio.sleep(0)
            return record.body

        # When two invocations of the container run their batches
        for _ in range(2):
            responses.append(
                async_process_partial_response(
                    event=event,
                    record_handler=record_handler,
                    processor=processor,
                    context=LambdaContextStub(),  # type: ignore[arg-type]
                )
            )
        loop.close()
        return isinstance(loop, uvloop.Loop), [s is loop for s in seen], responses

    is_uvloop, on_loop, responses = in_new_thread(scenario)
    # Then every record ran on the container's uvloop, and partial failures are reported as usual
    assert is_uvloop
    assert on_loop == [True] * 6
    assert responses == [{"batchItemFailures": [{"itemIdentifier": "m1"}]}] * 2
