"""What the daemon imports: grpc (21 MB of RSS) is the client's, never the daemon's."""

from __future__ import annotations

import subprocess
import sys


def imported_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_daemon_loads_the_cri_messages_without_grpc() -> None:
    modules = imported_after("import podling.cli.daemon, podling.app")
    assert "cri_api.v1.api_pb2" in modules
    assert not {m for m in modules if m == "grpc" or m.startswith("grpc.")}


def test_the_client_still_gets_the_stubs_and_grpc() -> None:
    modules = imported_after("import podling\nfrom cri_api.v1 import api_pb2_grpc")
    assert "grpc" in modules and "cri_api.v1.api_pb2_grpc" in modules
