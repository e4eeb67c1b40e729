"""`podlingd`: run the daemon, or print its default config (`podlingd config`)."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from podling import app as app_mod
from podling import config as config_mod
from podling import crashpoints
from podling import log as log_mod
from podling.containerd_config import ImportResult, import_containerd
from podling.errors import ConfigError, PodlingError
from podling.oslib.memory import limit_arenas

log = logging.getLogger("podling")


@click.group(invoke_without_command=True)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="config file (default /etc/podling/config.toml, plus config.d/*.toml)",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None)
@click.option("--root", default=None, help="override the config's root dir")
@click.option("--state", default=None, help="override the config's state dir")
@click.option("--socket", default=None, help="override the config's socket path")
@click.option(
    "--containerd-config",
    "containerd_path",
    type=click.Path(path_type=Path),
    default=None,
    help="a containerd config.toml (version 2 or 3) whose settings apply on top of podling's",
)
@click.pass_context
def main(
    ctx: click.Context,
    config_path: Path | None,
    log_level: str | None,
    log_format: str | None,
    root: str | None,
    state: str | None,
    socket: str | None,
    containerd_path: Path | None,
) -> None:
    """podling's CRI v1 daemon."""
    if ctx.invoked_subcommand is not None:
        return
    loader = Loader(config_path, containerd_path, (log_level, log_format, root, state, socket))
    try:
        cfg, imported = loader.load()
    except ConfigError as e:
        click.echo(f"podlingd: {e}", err=True)
        sys.exit(2)
    log_mod.setup(cfg.log.level, cfg.log.format)
    if containerd_path and imported:
        _log_import(containerd_path, imported)
    try:
        crashpoints.arm(os.environ.get(crashpoints.ENV, ""))  # a test hook: unset, inert
    except ConfigError as e:
        click.echo(f"podlingd: {e}", err=True)
        sys.exit(2)
    limit_arenas(2)  # before asyncio's worker threads exist (oslib/memory.py)
    try:
        asyncio.run(_serve(cfg, loader))
    except PodlingError as e:
        click.echo(f"podlingd: {e.message}", err=True)
        sys.exit(1)


@dataclass(frozen=True)
class Loader:
    """Reads the config the way the daemon started: the same file and config.d, the same
    containerd config, the same command-line overrides (which win over the files on every
    reload too). Called again on SIGHUP."""

    config_path: Path | None
    containerd_path: Path | None
    # --log-level, --log-format, --root, --state, --socket (None: not given)
    overrides: tuple[str | None, str | None, str | None, str | None, str | None]

    def __call__(self) -> config_mod.Config:
        return self.load()[0]

    def load(self) -> tuple[config_mod.Config, ImportResult | None]:
        """The config and the containerd import it includes; ConfigError if invalid."""
        imported = _import(self.containerd_path)
        path = self.containerd_path
        extra = ((path, imported.toml),) if path and imported else ()
        cfg = config_mod.load(self.config_path, explicit=self.config_path is not None, extra=extra)
        level, fmt, root, state, socket = self.overrides
        log_cfg = dataclasses.replace(
            cfg.log, level=level or cfg.log.level, format=fmt or cfg.log.format
        )
        return dataclasses.replace(
            cfg,
            root=root or cfg.root,
            state=state or cfg.state,
            socket=socket or cfg.socket,
            log=log_cfg,
        ), imported


def _import(path: Path | None) -> ImportResult | None:
    """The imported containerd config, or None without one; ConfigError if unreadable."""
    if path is None:
        return None
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the containerd config: {e}") from e
    return import_containerd(text, path)


def _log_import(path: Path, imported: ImportResult) -> None:
    log.info("containerd config %s: %d settings imported", path, len(imported.mapped))
    for key, why in imported.unmapped:
        log.warning("containerd config %s: %s not imported: %s", path, key, why)


@main.command("config")
def print_config() -> None:
    """Print the full default config, commented."""
    click.echo(config_mod.render_default(), nl=False)


def use_pidfd_child_watcher() -> None:
    """Have asyncio wait for child processes through pidfds on the event loop. Python
    3.11's default starts a thread per child, and the daemon runs several per pod start
    (CNI plugins, conmon, runc); 3.12 uses pidfds by itself. Call on the running loop,
    before the first subprocess."""
    if sys.version_info < (3, 12) and hasattr(os, "pidfd_open"):
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(asyncio.get_running_loop())
        asyncio.set_child_watcher(watcher)


def freeze_startup_objects() -> None:
    """Move every object alive after start-up (modules, protobuf descriptors, the loaded
    records: most of the heap) out of the cyclic collector's reach. A full collection
    then walks only what came later. Unfrozen, one took ~10 ms at 100 pods (9 of them in
    100 pod starts and 5000 polls), a stall of the event loop and of every RPC waiting on
    it; frozen, ~0.5 ms. Frozen objects are still freed by reference counting."""
    gc.collect()
    gc.freeze()


async def _serve(cfg: config_mod.Config, loader: Loader) -> None:
    use_pidfd_child_watcher()
    application = app_mod.build(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[object]] = set()

    def hangup() -> None:
        # SIGHUP: reload the config (systemctl reload); App.reload runs them one at a time
        log.info("SIGHUP: reloading the config")
        task: asyncio.Task[object] = asyncio.create_task(application.reload(loader))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, hangup)
    await application.start()
    freeze_startup_objects()
    await stop.wait()
    log.info("stopping")
    await asyncio.gather(*reloads, return_exceptions=True)
    await application.stop()
    log.info("stopped")


if __name__ == "__main__":
    main()
