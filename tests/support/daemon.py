"""A real podlingd on a temporary socket and state dir, for integration and e2e tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import grpc
from cri_api.v1 import api_pb2_grpc as pb_grpc


class Daemon:
    """Starts `podlingd` with `config_text` as its config file; `stop()` checks it exits 0."""

    def __init__(self, base: Path, config_text: str = "", extra_args: list[str] | None = None):
        self.base = base
        self.root = base / "root"
        self.state = base / "state"
        self.socket = base / "state" / "podling.sock"
        self.config = base / "config.toml"
        self.log = base / "podlingd.log"
        base.mkdir(parents=True, exist_ok=True)
        self.config.write_text(config_text)
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: grpc.Channel | None = None

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "podling.cli.daemon",
            "--config",
            str(self.config),
            "--root",
            str(self.root),
            "--state",
            str(self.state),
            "--socket",
            str(self.socket),
            "--log-level",
            "debug",
            *self.extra_args,
        ]

    def start(self, timeout: float = 20) -> Daemon:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=out)
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"podlingd exited {self.proc.returncode}:\n{self.log.read_text()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"podlingd did not start:\n{self.log.read_text()}")
            time.sleep(0.05)
        self.channel = grpc.insecure_channel(self.endpoint)
        grpc.channel_ready_future(self.channel).result(timeout=timeout)
        return self

    @property
    def runtime(self) -> pb_grpc.RuntimeServiceStub:
        assert self.channel is not None
        return pb_grpc.RuntimeServiceStub(self.channel)

    @property
    def images(self) -> pb_grpc.ImageServiceStub:
        assert self.channel is not None
        return pb_grpc.ImageServiceStub(self.channel)

    def stop(self, timeout: float = 20) -> int:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        code = self.stop()
        if t is None and code != 0:
            raise AssertionError(f"podlingd exited {code}:\n{self.log.read_text()}")
