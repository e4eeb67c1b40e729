"""Races between unpacking a layer and using its snapshot (no root: native snapshotter).

A layer is extracted into a private "extract-<uuid>" snapshot and committed under its
chain id only once the whole stream matched the diff id (services/unpacking.py). So
while an extraction runs, the chain id must not exist: nothing can mount it, build a
container layer on it, or see half of it. And an extraction abandoned by a cancelled
pull must not make the next pull of the same layer fail.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from podling.errors import NotFound
from podling.image.manifest import Descriptor
from podling.services import unpacking
from podling.services.unpacking import EXTRACT_PREFIX, LayerUnpacker
from podling.snapshots.native import NativeSnapshotter
from tests.support.tars import TarBuilder

PLAIN = "application/vnd.oci.image.layer.v1.tar"


@pytest.fixture
def snap(tmp_path: Path) -> Iterator[NativeSnapshotter]:
    s = NativeSnapshotter(tmp_path / "snapshots")
    yield s
    s.close()


class Gate:
    """Holds each apply_layer call (by call number) until the test releases it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = threading.Event()
        self.releases = [threading.Event() for _ in range(4)]
        self.release = self.releases[0]
        self.calls = 0
        real = unpacking.apply_layer

        def gated(*args: Any, **kwargs: Any) -> Any:
            mine = self.releases[self.calls]
            self.calls += 1
            self.entered.set()
            assert mine.wait(30), "the test never released the extraction"
            return real(*args, **kwargs)

        monkeypatch.setattr(unpacking, "apply_layer", gated)


def _layer(tmp_path: Path) -> tuple[Descriptor, Path, str]:
    data = TarBuilder().dir("etc").file("etc/motd", b"hello\n").bytes()
    blob = tmp_path / "layer.tar"
    blob.write_bytes(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return Descriptor(PLAIN, digest, len(data)), blob, digest


async def _unpack(u: LayerUnpacker, desc: Descriptor, blob: Path, diff_id: str) -> list[str]:
    async def get(i: int) -> Path:
        return blob

    return await u.unpack([desc], [diff_id], get)


async def test_chain_is_invisible_until_the_extraction_is_committed(
    snap: NativeSnapshotter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    desc, blob, diff_id = _layer(tmp_path)
    gate = Gate(monkeypatch)
    u = LayerUnpacker(snap, 1 << 20)
    task = asyncio.create_task(_unpack(u, desc, blob, diff_id))
    assert await asyncio.to_thread(gate.entered.wait, 10)
    # mid-extraction: only the private extract snapshot exists
    assert not snap.exists(diff_id)
    assert [k for k in snap.keys() if not k.startswith(EXTRACT_PREFIX)] == []  # noqa: SIM118
    with pytest.raises(NotFound):
        snap.prepare("ct-early", diff_id)  # a container layer on a half layer
    with pytest.raises(NotFound):
        snap.view("iv-early", diff_id)  # an image volume of a half layer
    gate.release.set()
    assert await task == [diff_id]
    assert snap.keys() == [diff_id]
    snap.prepare("ct", diff_id)
    snap.remove("ct")


async def test_failed_extraction_never_becomes_visible(
    snap: NativeSnapshotter, tmp_path: Path
) -> None:
    desc, blob, _ = _layer(tmp_path)
    u = LayerUnpacker(snap, 1 << 20)
    with pytest.raises(Exception, match="unpacks to"):
        await _unpack(u, desc, blob, "sha256:" + "0" * 64)  # a diff id it does not match
    assert snap.keys() == []


async def test_cancelled_pull_does_not_break_the_next_pull_of_the_same_layer(
    snap: NativeSnapshotter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pull cancelled mid-extraction releases the chain lock while its thread still
    extracts; a second pull then extracts the same layer too. Whichever commits second
    must succeed (same chain id, same content), not fail with ALREADY_EXISTS."""
    desc, blob, diff_id = _layer(tmp_path)
    gate = Gate(monkeypatch)
    u = LayerUnpacker(snap, 1 << 20)
    first = asyncio.create_task(_unpack(u, desc, blob, diff_id))
    assert await asyncio.to_thread(gate.entered.wait, 10)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    second = asyncio.create_task(_unpack(u, desc, blob, diff_id))
    while gate.calls < 2:
        await asyncio.sleep(0.01)
    gate.releases[0].set()  # the abandoned extraction commits first ...
    for _ in range(500):
        if snap.exists(diff_id):
            break
        await asyncio.sleep(0.01)
    assert snap.exists(diff_id)
    gate.releases[1].set()  # ... then the second pull's finishes
    assert await second == [diff_id]
    for _ in range(500):  # the abandoned thread finishes on its own
        if not any(k.startswith(EXTRACT_PREFIX) for k in snap.keys()):  # noqa: SIM118
            break
        await asyncio.sleep(0.01)
    assert snap.keys() == [diff_id]
