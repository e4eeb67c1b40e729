"""Check of the sandbox ("pause") image the node names: podling needs none, but when one is
named it should stay pullable and pinned, as it was under containerd.

Where it is named, first match wins: the kubelet's `--pod-infra-container-image` flag
(kubeadm-flags.env), `podInfraContainerImage` in the kubelet config, the containerd
config's `sandbox_image` (v2) / `pinned_images.sandbox` (v3). Pullable: a HEAD of its
manifest through `Host.probe_image` (nothing is downloaded). Pinned: listed in podling's
`images.pinned`, which is what podling reports to the kubelet's image garbage collector.
"""

from __future__ import annotations

import json

from podling.config import Config
from podling.doctor.containerd import containerd_sandbox_image
from podling.doctor.model import Finding, Host, kubelet_config, kubelet_flag, normalize_ref, ok
from podling.errors import InvalidArgument, NotFound, PodlingError, Unauthenticated
from podling.image.reference import parse_reference

CHECK = "sandbox-image"


def check_sandbox_image(host: Host, cfg: Config) -> list[Finding]:
    """Without a named sandbox image one ok finding; with one: what it is (and whether
    podlingd has it), whether it is pinned, and whether its registry has it."""
    named = sandbox_image(host)
    if named is None:
        return [ok(CHECK, "no sandbox image configured: podling needs none")]
    image, where = named
    try:
        parse_reference(image)
    except InvalidArgument as e:
        return [_unparsable(image, where, e)]
    return [_about(host, image, where), _pinned(cfg, image, where), _pullable(host, image, where)]


def sandbox_image(host: Host) -> tuple[str, str] | None:
    """(image, where it is named) by the precedence of the module docstring; None if none."""
    flag = kubelet_flag(host, "pod-infra-container-image")
    if flag is not None:
        return flag[0], str(flag[1])
    value = (kubelet_config(host) or {}).get("podInfraContainerImage")
    if isinstance(value, str) and value:
        return value, str(host.kubelet_config)
    found = containerd_sandbox_image(host)
    return (found, str(host.containerd_config)) if found else None


def _about(host: Host, image: str, where: str) -> Finding:
    have = host.podling_images()
    presence = ""
    if have is not None:
        local = normalize_ref(image) in {normalize_ref(t) for t in have}
        presence = "; it is present locally" if local else "; it is not present locally"
    return ok(
        CHECK,
        f"sandbox image {image} (named in {where}) is not needed: podling runs pods with a "
        f"built-in infra process{presence}",
    )


def _pinned(cfg: Config, image: str, where: str) -> Finding:
    pinned = cfg.images.pinned
    if normalize_ref(image) in {normalize_ref(p) for p in pinned}:
        return ok(CHECK, f"sandbox image {image} is pinned (images.pinned): image GC keeps it")
    line = f"pinned = {json.dumps([*pinned, image])}"
    return Finding(
        "warning",
        CHECK,
        f"sandbox image {image} is not pinned (not in images.pinned)",
        why="containerd reported its sandbox image as pinned so the kubelet's image garbage "
        "collection never removed it; podling pins only what images.pinned lists, so under "
        f"disk pressure the kubelet may delete {image}, and a node that cannot pull it again "
        "(air-gapped) loses it",
        fix=f"add `{line}` under [images] in podling's config (a config.d drop-in replaces "
        "the whole list, so keep the entries already there) and restart podlingd",
    )


def _pullable(host: Host, image: str, where: str) -> Finding:
    if host.probe_image is None:
        return ok(CHECK, f"sandbox image {image}: registry not asked (network checks are off)")
    error = host.probe_image(image)
    if error is None:
        return ok(CHECK, f"sandbox image {image} is pullable: its registry has the manifest")
    return Finding(
        "warning",
        CHECK,
        f"sandbox image {image} is not pullable: {error.message}",
        why="podling itself never pulls it, but pods and tools that run it do, and the "
        "kubelet cannot bring it back after image garbage collection removed it",
        fix=_pull_fix(image, where, error),
    )


def _pull_fix(image: str, where: str, error: PodlingError) -> str:
    host = parse_reference(image).domain
    if isinstance(error, NotFound):
        return f"correct the name or tag in {where}, or push {image} to {host}"
    if isinstance(error, Unauthenticated):
        return (
            f"{host} wants credentials: load the image onto the node instead (`podling load "
            "pause.tar`) and pin it, or name an image from a registry open to anonymous pulls"
        )
    return (
        f"make {host} reachable from this node, or give podling a mirror that has it: "
        f'[images.registries."{host}"] mirrors = ["https://mirror.example.com"] (add '
        "insecure = true if the registry itself speaks plain http)"
    )


def _unparsable(image: str, where: str, e: InvalidArgument) -> Finding:
    return Finding(
        "warning",
        CHECK,
        f"sandbox image {image!r} (named in {where}) is not a valid image reference",
        why=f"{e.message}; nothing can pull or pin it",
        fix=f"correct it in {where}, or remove it (podling needs no sandbox image)",
    )
