"""podling's own small API beside the CRI, on the same socket: `podling.v1.Admin`.

The CRI has no way to import an image archive or to watch a pull's progress, so these
two methods exist for the `podling` client only. Messages are JSON documents (no .proto
to generate for two methods); errors travel as gRPC statuses like everywhere else.

  LoadImage     {"path": "/abs/archive.tar"}  → {"images": [{"id": ..., "names": [...]}]}
  PullProgress  {"image": "busybox:1.36"}     → stream of {"state", "layers": [...]} until
                                                the pull ends (or at once if none runs)
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from podling.errors import InvalidArgument
from podling.image.reference import parse_reference
from podling.rpc.calls import Method
from podling.services.images import ImageService

SERVICE = "podling.v1.Admin"


def _decode(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data or b"{}")
    except ValueError as e:
        raise InvalidArgument(f"request is not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise InvalidArgument("request must be a JSON object")
    return doc


def _encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


class AdminServicer:
    def __init__(self, images: ImageService, poll_interval: float = 0.1) -> None:
        self._images = images
        self._poll = poll_interval

    async def LoadImage(self, request: dict[str, Any], context: Any) -> dict[str, Any]:
        path = request.get("path")
        if not isinstance(path, str) or not path:
            raise InvalidArgument("path must be the absolute path of an image archive")
        loaded = await self._images.load(Path(path))
        return {"images": [{"id": i, "names": n} for i, n in loaded]}

    async def PullProgress(
        self, request: dict[str, Any], context: Any
    ) -> AsyncIterator[dict[str, Any]]:
        image = request.get("image")
        if not isinstance(image, str) or not image:
            raise InvalidArgument("image must be the reference being pulled")
        key = str(parse_reference(image))
        while True:
            prog = self._images.puller.progress.get(key)
            if prog is None:
                yield {"state": "none", "layers": []}
                return
            yield dataclasses.asdict(prog)
            if prog.state in ("done", "failed"):
                return
            await asyncio.sleep(self._poll)

    def methods(self) -> dict[str, Method]:
        """This service's methods by path, for the gRPC server."""
        return {
            f"/{SERVICE}/LoadImage": Method("LoadImage", _decode, _encode, self.LoadImage),
            f"/{SERVICE}/PullProgress": Method(
                "PullProgress", _decode, _encode, self.PullProgress, streaming=True
            ),
        }
