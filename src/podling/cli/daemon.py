"""`podlingd`: run the daemon, or print its default config (`podlingd config`)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import sys
from pathlib import Path

import click

from podling import app as app_mod
from podling import config as config_mod
from podling import log as log_mod
from podling.containerd_config import ImportResult, import_containerd
from podling.errors import ConfigError, PodlingError

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
    try:
        imported = _import(containerd_path)
        extra = ((containerd_path, imported.toml),) if containerd_path and imported else ()
        cfg = config_mod.load(config_path, explicit=config_path is not None, extra=extra)
    except ConfigError as e:
        click.echo(f"podlingd: {e}", err=True)
        sys.exit(2)
    cfg = dataclasses.replace(
        cfg, root=root or cfg.root, state=state or cfg.state, socket=socket or cfg.socket
    )
    log_cfg = dataclasses.replace(
        cfg.log, level=log_level or cfg.log.level, format=log_format or cfg.log.format
    )
    cfg = dataclasses.replace(cfg, log=log_cfg)
    log_mod.setup(cfg.log.level, cfg.log.format)
    if containerd_path and imported:
        _log_import(containerd_path, imported)
    try:
        asyncio.run(_serve(cfg))
    except PodlingError as e:
        click.echo(f"podlingd: {e.message}", err=True)
        sys.exit(1)


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


async def _serve(cfg: config_mod.Config) -> None:
    application = app_mod.build(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await application.start()
    await stop.wait()
    log.info("stopping")
    await application.stop()
    log.info("stopped")


if __name__ == "__main__":
    main()
