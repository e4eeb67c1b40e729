"""A real docker-registry (distribution 2.x) on 127.0.0.1 for tests.

    with RegistryServer(tmp_path, users={"alice": "secret"}) as reg:
        push_image(reg.url, "app", "v1", image, auth=("alice", "secret"))

Storage lives under the given directory; `stop()` (or leaving the `with`) ends the
process. `blob_data_path()` exposes where a blob is stored so tests can corrupt it.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import yaml

REGISTRY_BIN = "/usr/bin/docker-registry"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connection refused)."""
    return f"http://127.0.0.1:{free_port()}"


class RegistryServer:
    """docker-registry serving `root` on 127.0.0.1:<free port>; optional htpasswd users."""

    def __init__(self, root: Path, users: dict[str, str] | None = None) -> None:
        self.root = root
        self.users = dict(users or {})
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.storage = root / "storage"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RegistryServer:
        self.root.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(exist_ok=True)
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
            },
            "http": {"addr": self.host, "secret": "podling-tests"},
        }
        if self.users:
            htpasswd = self.root / "htpasswd"
            htpasswd.write_text("".join(_bcrypt_entry(u, p) for u, p in self.users.items()))
            config["auth"] = {"htpasswd": {"realm": "test-realm", "path": str(htpasswd)}}
        cfg_path = self.root / "config.yml"
        cfg_path.write_text(yaml.safe_dump(config))
        log = (self.root / "registry.log").open("wb")
        self._proc = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(cfg_path)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                log = (self.root / "registry.log").read_text(errors="replace")
                raise RuntimeError(f"docker-registry exited: {log}")
            try:
                with urllib.request.urlopen(self.url + "/v2/", timeout=1):
                    return
            except urllib.error.HTTPError as e:
                if e.code == 401:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"docker-registry did not answer on {self.url} within {timeout}s")

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def blob_data_path(self, digest: str) -> Path:
        """Where the registry keeps the bytes of `digest` (filesystem driver layout)."""
        hex_ = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _bcrypt_entry(user: str, password: str) -> str:
    # docker-registry's htpasswd backend only accepts bcrypt entries (-B).
    out = subprocess.run(
        ["htpasswd", "-Bbn", user, password], check=True, capture_output=True, text=True
    )
    return out.stdout.strip() + "\n"


def registry_fixture(root: Path, users: dict[str, str] | None = None) -> Iterator[RegistryServer]:
    """Body for a pytest fixture: `yield from registry_fixture(tmp_path / "reg")`."""
    server = RegistryServer(root, users).start()
    try:
        yield server
    finally:
        server.stop()
