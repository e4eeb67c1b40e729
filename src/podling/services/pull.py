"""PullImage, top to bottom: resolve → config → layers in parallel → snapshots → record.

Two pulls of the same reference at once share one task (single flight). Layers download
in parallel (bounded by `max_concurrent_downloads`) and are unpacked in order as soon as
each one's blob is verified, so unpacking overlaps the remaining downloads. Layers whose
snapshot already exists are not downloaded at all. Partial downloads stay in the content
store's ingest area, so a failed pull resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from podling import crashpoints
from podling.image.content import ContentStore
from podling.image.manifest import parse_config
from podling.image.reference import Reference, parse_reference
from podling.image.registry import Credentials, RegistryClient, Resolved
from podling.metrics import Metrics
from podling.oslib.memory import trim_heap
from podling.services.importing import Importer
from podling.services.unpacking import chain_ids, diff_ids_of


@dataclass
class LayerProgress:
    digest: str
    total: int
    done: int = 0
    state: str = "waiting"  # waiting, downloading, downloaded, exists, unpacked


@dataclass
class PullProgress:
    """What a pull in flight has done so far; read by the client's progress display."""

    reference: str
    layers: list[LayerProgress] = field(default_factory=list)
    state: str = "resolving"  # resolving, pulling, done, failed
    error: str = ""


class LayerFetcher:
    """Downloads a pull's layers: the ones known to be missing start at once (bounded by a
    semaphore); any other is started on demand, should its snapshot vanish meanwhile."""

    def __init__(
        self,
        registry: RegistryClient,
        content: ContentStore,
        resolved: Resolved,
        creds: Credentials | None,
        prog: PullProgress,
        limit: int,
    ) -> None:
        self._registry = registry
        self._content = content
        self._resolved = resolved
        self._creds = creds
        self._prog = prog
        self._sem = asyncio.Semaphore(limit)
        self._tasks: dict[int, asyncio.Task[Path]] = {}

    def prefetch(self, idxs: list[int]) -> None:
        for i in idxs:
            self._start(i)

    def _start(self, i: int) -> asyncio.Task[Path]:
        if i not in self._tasks:
            self._tasks[i] = asyncio.create_task(self._one(i), name=f"layer {i}")
        return self._tasks[i]

    async def get(self, i: int) -> Path:
        path = await self._start(i)
        self._prog.layers[i].state = "unpacking"
        return path

    async def _one(self, i: int) -> Path:
        lp = self._prog.layers[i]
        async with self._sem:
            lp.state = "downloading"
            path = await self._registry.fetch_blob(
                self._resolved,
                self._resolved.manifest.layers[i],
                self._content,
                self._creds,
                _progress_fn(lp),
            )
        crashpoints.reach("PullImage/blob stored")
        lp.state, lp.done = "downloaded", lp.total
        return path

    async def cancel(self) -> None:
        for t in self._tasks.values():
            t.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)


class Puller:
    def __init__(
        self,
        registry: RegistryClient,
        content: ContentStore,
        importer: Importer,
        max_downloads: int,
    ) -> None:
        self._registry = registry
        self._content = content
        self._importer = importer
        self._max_downloads = max_downloads
        self._inflight: dict[str, asyncio.Task[str]] = {}
        self.progress: dict[str, PullProgress] = {}
        self.metrics: Metrics | None = None  # set by the app: counts pulls, bytes, seconds

    def set_max_downloads(self, limit: int) -> None:
        """Layers downloaded in parallel by the next pulls (a config reload); pulls in
        flight keep their limit."""
        self._max_downloads = limit

    async def pull(self, text: str, creds: Credentials | None) -> str:
        """Pull `text` and return the image id. Concurrent calls for one reference share."""
        ref = parse_reference(text)
        key = str(ref)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._pull(ref, creds), name=f"pull {key}")
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        # shield: one caller giving up must not cancel the pull the others wait on
        return await asyncio.shield(task)

    async def close(self) -> None:
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _pull(self, ref: Reference, creds: Credentials | None) -> str:
        prog = PullProgress(reference=str(ref))
        self.progress[prog.reference] = prog
        start = time.monotonic()
        try:
            image_id = await self._pull_steps(ref, creds, prog)
            prog.state = "done"
            return image_id
        except BaseException as e:
            prog.state, prog.error = "failed", str(e)
            raise
        finally:
            if self.metrics is not None:
                fetched = sum(lp.done for lp in prog.layers if lp.state != "exists")
                self.metrics.pull(prog.state == "done", fetched, time.monotonic() - start)
            # keep the final state visible briefly for a progress display that polls
            asyncio.get_running_loop().call_later(5, self.progress.pop, prog.reference, None)
            if not self._inflight.keys() - {str(ref)}:  # the last pull running: give back
                await asyncio.to_thread(trim_heap)  # what its buffers left in the heap

    async def _pull_steps(
        self, ref: Reference, creds: Credentials | None, prog: PullProgress
    ) -> str:
        resolved = await self._registry.resolve(ref, creds)
        man = resolved.manifest
        cfg_path = await self._registry.fetch_blob(resolved, man.config, self._content, creds)
        crashpoints.reach("PullImage/config stored")
        config_bytes = cfg_path.read_bytes()
        config = parse_config(config_bytes)
        chains = chain_ids(diff_ids_of(config, len(man.layers)))
        missing = self._importer.unpacker.missing(chains)
        prog.layers = [
            LayerProgress(d.digest, d.size, state="waiting" if i in missing else "exists")
            for i, d in enumerate(man.layers)
        ]
        prog.state = "pulling"
        self._content.put_bytes(resolved.manifest_bytes, resolved.manifest_digest)
        crashpoints.reach("PullImage/manifest stored")
        fetcher = LayerFetcher(
            self._registry, self._content, resolved, creds, prog, self._max_downloads
        )
        fetcher.prefetch(missing)
        try:
            return await self._importer.import_image(
                manifest_digest=resolved.manifest_digest,
                manifest=man,
                config=config,
                config_bytes=config_bytes,
                names=_names(ref, resolved),
                blob=fetcher.get,
                extra_blobs=[resolved.index_digest] if resolved.index_digest else [],
            )
        finally:
            await fetcher.cancel()


def _progress_fn(lp: LayerProgress) -> Callable[[str, int, int], None]:
    def update(_digest: str, done: int, _total: int) -> None:
        lp.done = done

    return update


def _names(ref: Reference, resolved: Resolved) -> list[tuple[str, str]]:
    """repo tag (if the reference has one) and the repo digest `name@<what the ref resolves>`."""
    names: list[tuple[str, str]] = []
    if ref.repo_tag:
        names.append((ref.repo_tag, "tag"))
    names.append((f"{ref.name}@{resolved.repo_digest_target}", "digest"))
    return names
