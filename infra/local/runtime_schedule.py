"""The local Lambda runtime's schedules: an EventBridge `rate(...)` rule, which invokes its function
asynchronously (an `Event` invocation, with its retries) every `rateSeconds`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from infra.local.events import scheduled_event

if TYPE_CHECKING:
    from infra.local.runtime_config import ScheduleConfig

# (function name, event) -> request id: the runtime's asynchronous invocation
InvokeAsync = Callable[[str, Any], str]


class Schedule:
    def __init__(
        self, schedule: ScheduleConfig, index: int, *, region: str, account_id: str, invoke_async: InvokeAsync
    ) -> None:
        self.schedule = schedule
        self.region = region
        self.account_id = account_id
        self.name = schedule.name or f"{schedule.function}-schedule-{index}"
        self.rule_arn = f"arn:aws:events:{region}:{account_id}:rule/{self.name}"
        self.fired = 0
        self._invoke_async = invoke_async
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        next_at = time.monotonic() + (0 if self.schedule.run_at_start else self.schedule.rate_seconds)
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += self.schedule.rate_seconds
            self.fired += 1
            self._invoke_async(
                self.schedule.function, scheduled_event(self.rule_arn, self.region, self.account_id)
            )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
