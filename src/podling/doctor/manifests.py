"""Checks of the Kubernetes manifests in a folder: leftover Docker socket mounts, and
RuntimeClass handlers that podling does not offer."""

from __future__ import annotations

import re
from pathlib import Path

from podling.config import Config, HandlerConfig
from podling.doctor.model import Finding, Host, manifest_docs, manifest_files, ok, read_text
from podling.runtimes.handlers import BUILTIN

_DOCKER_SOCK = re.compile(r"(?:/var)?/run/docker\.sock")


def check_docker_socket(host: Host, cfg: Config) -> list[Finding]:
    """One warning per manifest that mentions /var/run/docker.sock or /run/docker.sock."""
    hits = [(p, lines) for p in manifest_files(host.manifests) if (lines := _sock_lines(p))]
    if not hits:
        return [ok("docker-socket", f"no manifest under {host.manifests} uses docker.sock")]
    return [
        Finding(
            "warning",
            "docker-socket",
            f"{path} refers to the Docker socket (line {', '.join(map(str, lines))})",
            why="Docker is not the runtime any more: a pod mounting docker.sock gets an "
            "empty or missing path, and tools that drive Docker through it (log or metrics "
            "agents, CI runners, image builders) fail",
            fix=f"switch the workload to the CRI socket unix://{cfg.socket} (crictl-style "
            "tools) or remove the docker.sock hostPath volume from the manifest",
        )
        for path, lines in hits
    ]


def _sock_lines(path: Path) -> list[int]:
    text = read_text(path) or ""
    return [n for n, line in enumerate(text.splitlines(), 1) if _DOCKER_SOCK.search(line)]


def offered_handlers(cfg: Config, host: Host) -> dict[str, HandlerConfig]:
    """The handlers podlingd would offer, as HandlerRegistry decides: the built-ins whose
    binary is installed, plus every handler configured explicitly (and the default)."""
    configs = dict(BUILTIN)
    configs.update(cfg.runtimes)
    return {
        name: hc
        for name, hc in configs.items()
        if name in cfg.runtimes
        or name == cfg.default_runtime
        or bool(hc.binary and host.which(hc.binary))
    }


def check_runtime_classes(host: Host, cfg: Config) -> list[Finding]:
    """Handlers named by RuntimeClass manifests must be offered by podling."""
    wanted = _runtime_classes(host.manifests)
    if not wanted:
        return [ok("runtime-class", f"no RuntimeClass manifest under {host.manifests}")]
    offered = offered_handlers(cfg, host)
    findings = []
    for handler, (name, path) in sorted(wanted.items()):
        if handler in offered:
            findings.append(
                ok("runtime-class", f"RuntimeClass {name}: handler {handler} is offered")
            )
        else:
            findings.append(_missing_handler(handler, name, path, offered))
    return findings


def _runtime_classes(folder: Path) -> dict[str, tuple[str, Path]]:
    """handler → (RuntimeClass name, file) for every RuntimeClass document."""
    found: dict[str, tuple[str, Path]] = {}
    for path, doc in manifest_docs(folder):
        handler = doc.get("handler")
        if doc.get("kind") == "RuntimeClass" and isinstance(handler, str):
            meta = doc.get("metadata")
            name = str(meta.get("name", "?")) if isinstance(meta, dict) else "?"
            found.setdefault(handler, (name, path))
    return found


def _missing_handler(
    handler: str, name: str, path: Path, offered: dict[str, HandlerConfig]
) -> Finding:
    builtin = BUILTIN.get(handler)
    if builtin is not None:
        fix = f"install {builtin.binary} (podling offers {handler} once its binary is on PATH)"
    else:
        fix = f'add [runtimes.{handler}] with binary = "/path/to/runtime" to the podling config'
    return Finding(
        "error",
        "runtime-class",
        f"RuntimeClass {name} ({path}) names handler {handler}, which podling does not offer",
        why="pods with this runtimeClassName fail to start (RunPodSandbox: handler not "
        f"configured); handlers here: {', '.join(sorted(offered)) or 'none'}",
        fix=fix,
    )
