"""podling: a Kubernetes container runtime serving the CRI v1 API."""

import importlib.util
import sys
import types

__version__ = "0.1.0"


def _messages_without_grpc() -> None:
    """Let `cri_api.v1.api_pb2` (the CRI messages) load without grpc.

    The package's __init__ star-imports the generated gRPC stubs, so importing any of its
    modules imported grpc too: 21 MB of the daemon's RSS, for a server that does not use
    it (podling.rpc). A bare package module standing in for that __init__ gives the same
    submodules (api_pb2, and api_pb2_grpc for the client, which imports grpc itself).
    Nothing here uses the names the __init__ re-exported.
    """
    if "cri_api" in sys.modules:
        return
    spec = importlib.util.find_spec("cri_api")
    if spec is None or spec.submodule_search_locations is None:
        return  # not installed: the import that needs it will say so
    package = types.ModuleType("cri_api")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["cri_api"] = package


_messages_without_grpc()
