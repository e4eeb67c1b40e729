"""`podling doctor`: check the node, print what is wrong, why it matters and the fix."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path

import click
import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as pb_grpc

from podling import config as config_mod
from podling.cli.connect import fail
from podling.doctor import Finding, has_errors, run_checks, system_host
from podling.doctor.probe import registry_probe
from podling.errors import ConfigError

_STYLE = {"error": "red", "warning": "yellow", "ok": "green"}


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help=f"podlingd's config file (default {config_mod.DEFAULT_CONFIG_PATH}, with config.d)",
)
@click.option(
    "--kubelet-config",
    type=click.Path(path_type=Path),
    default=Path("/var/lib/kubelet/config.yaml"),
    show_default=True,
    help="the kubelet's KubeletConfiguration file",
)
@click.option(
    "--manifests",
    type=click.Path(path_type=Path),
    default=Path("/etc/kubernetes/manifests"),
    show_default=True,
    help="folder of manifests to scan (static pods, DaemonSets, RuntimeClasses)",
)
@click.option(
    "--docker-root",
    type=click.Path(path_type=Path),
    default=Path("/var/lib/docker"),
    show_default=True,
    help="Docker data root left by a migration",
)
@click.option(
    "--containerd-config",
    type=click.Path(path_type=Path),
    default=Path("/etc/containerd/config.toml"),
    show_default=True,
    help="containerd config left by a migration (version and ignored keys are checked)",
)
@click.option(
    "--offline",
    is_flag=True,
    help="ask no registry (the sandbox image's pullability is then not checked)",
)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def doctor(
    config_path: Path | None,
    kubelet_config: Path,
    manifests: Path,
    docker_root: Path,
    containerd_config: Path,
    offline: bool,
    output: str,
) -> None:
    """Check this node for podling; exit status 1 when any finding is an error.

    podlingd is asked for its images on the socket named in its config, when it runs; the
    sandbox image's registry is asked for its manifest (HEAD only) unless --offline."""
    try:
        cfg = config_mod.load(config_path, explicit=config_path is not None)
    except ConfigError as e:
        fail(str(e))
    host = system_host(
        kubelet_config,
        manifests,
        docker_root,
        _image_lister(cfg.socket),
        containerd_config,
        None if offline else registry_probe(cfg),
    )
    findings = run_checks(host, cfg)
    if output == "json":
        click.echo(json.dumps([f.as_dict() for f in findings], indent=2))
    else:
        _print_table(findings)
    sys.exit(1 if has_errors(findings) else 0)


def _image_lister(socket: str, timeout: float = 5.0) -> Callable[[], list[str] | None]:
    """Asks podlingd (once, lazily) for its repo tags; None when it is not reachable."""

    @functools.cache
    def list_images() -> list[str] | None:
        if not Path(socket).exists():
            return None
        channel = grpc.insecure_channel(f"unix://{socket}")
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
            stub = pb_grpc.ImageServiceStub(channel)
            resp = stub.ListImages(pb.ListImagesRequest(), timeout=timeout)
        except (grpc.FutureTimeoutError, grpc.RpcError):
            return None
        finally:
            channel.close()
        return [tag for img in resp.images for tag in img.repo_tags]

    return list_images


def _print_table(findings: list[Finding]) -> None:
    """LEVEL / CHECK / FINDING columns; under each non-ok finding, its why and fix."""
    rows = [[f.level.upper(), f.check, f.title] for f in findings]
    widths = [max(len(r[i]) for r in [["LEVEL", "CHECK", ""], *rows]) for i in (0, 1)]
    click.echo(f"{'LEVEL'.ljust(widths[0])}   {'CHECK'.ljust(widths[1])}   FINDING")
    for f, (level, check, title) in zip(findings, rows, strict=True):
        styled = click.style(level.ljust(widths[0]), fg=_STYLE[f.level])
        click.echo(f"{styled}   {check.ljust(widths[1])}   {title}")
        if f.level != "ok":
            indent = " " * (widths[0] + widths[1] + 6)
            click.echo(f"{indent}why: {f.why}")
            click.echo(f"{indent}fix: {f.fix}")
    errors = sum(f.level == "error" for f in findings)
    warnings = sum(f.level == "warning" for f in findings)
    click.echo(f"\n{errors} error(s), {warnings} warning(s)")


def register(group: click.Group) -> None:
    group.add_command(doctor)
