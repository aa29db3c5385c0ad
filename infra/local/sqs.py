"""A small SQS-compatible server for the local stack (standard queues, AWS JSON 1.0 protocol).

Run it with ``python -m infra.local.sqs --host 127.0.0.1 --port P [--region us-east-1]``; it serves
until SIGTERM or SIGINT. In tests, ``with serve_in_thread() as endpoint:`` runs it on a free port in
a background thread and yields ``http://127.0.0.1:<port>``. Any credentials are accepted.

The layers: the queues in memory (`sqs_model.py`), the actions over them (`sqs_broker.py`, with
`sqs_params.py` validating their parameters), the wire protocol (`sqs_wire.py`) and, here, the
aiohttp server and its CLI.

Out of scope: FIFO queues, permissions, KMS, message move tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Iterator

from aiohttp import web
from pydantic import BaseModel, Field

from infra.local.logs import json_stderr_handler
from infra.local.sqs_broker import SqsBroker
from infra.local.sqs_model import ACCOUNT_ID, DEFAULT_REGION, MAX_MESSAGE_BYTES, SqsError, new_id
from infra.local.sqs_wire import action_of, decode_params, error_response, result_response

log = logging.getLogger("fanout.local.sqs")


class ServerConfig(BaseModel):
    """Where the server listens and how it names its queues."""

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    region: str = DEFAULT_REGION
    account_id: str = ACCOUNT_ID


class SqsServer:
    """The broker behind an aiohttp server. ``await start()`` binds and returns the endpoint URL."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.broker: SqsBroker | None = None
        self._runner: web.AppRunner | None = None
        self.endpoint = ""

    async def start(self) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.config.host, self.config.port))
        port = sock.getsockname()[1]
        self.endpoint = f"http://{self.config.host}:{port}"
        self.broker = SqsBroker(
            base_url=self.endpoint, region=self.config.region, account_id=self.config.account_id
        )
        app = web.Application(client_max_size=4 * MAX_MESSAGE_BYTES)
        app.router.add_post("/", self._handle)
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        log.info("listening", extra={"endpoint": self.endpoint, "region": self.config.region})
        return self.endpoint

    async def stop(self) -> None:
        if self.broker is not None:
            self.broker.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        log.info("stopped", extra={"endpoint": self.endpoint})

    async def _handle(self, request: web.Request) -> web.Response:
        broker = self.broker
        assert broker is not None
        request_id = new_id()
        target = request.headers.get("X-Amz-Target", "")
        action = action_of(target)
        try:
            params = decode_params(await request.read())
            if action == "ReceiveMessage":
                result = await broker.receive_message(params)
            else:
                handler = broker.actions.get(action)
                if handler is None:
                    raise SqsError(
                        "UnsupportedOperation", f"The action {target or '(none)'} is not supported."
                    )
                result = handler(params)
        except SqsError as err:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("request failed", extra={"action": action, "code": err.code, "reason": err.message})
            return error_response(err, request_id)
        except Exception:
            log.exception("internal error", extra={"action": action})
            return error_response(SqsError("InternalError", "Internal error.", status=500), request_id)
        return result_response(result, request_id)


@contextlib.contextmanager
def serve_in_thread(host: str = "127.0.0.1", port: int = 0, region: str = DEFAULT_REGION) -> Iterator[str]:
    """Run a server on its own event loop in a daemon thread; yield its endpoint URL, stop it on exit."""
    server = SqsServer(ServerConfig(host=host, port=port, region=region))
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.start())
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(server.stop())
        loop.close()

    thread = threading.Thread(target=run, name="local-sqs", daemon=True)
    thread.start()
    ready.wait()
    if failure:
        thread.join()
        raise failure[0]
    try:
        yield server.endpoint
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


async def _serve(config: ServerConfig) -> None:
    server = SqsServer(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.local.sqs", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="listen port (default 0: a free one, logged)")
    parser.add_argument("--region", default=DEFAULT_REGION, help="region in queue ARNs (default us-east-1)")
    parser.add_argument("--account-id", default=ACCOUNT_ID, help="account id in queue URLs and ARNs")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), handlers=[json_stderr_handler()])
    config = ServerConfig(host=args.host, port=args.port, region=args.region, account_id=args.account_id)
    asyncio.run(_serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
