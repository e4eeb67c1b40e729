"""Check for images a Docker data root still holds that podling does not have (a node
moved from Docker to podling)."""

from __future__ import annotations

import json
from typing import Any

from podling.config import Config
from podling.doctor.model import Finding, Host, normalize_ref, ok, read_text

MAX_LISTED = 20


def check_docker_images(host: Host, cfg: Config) -> list[Finding]:
    """A warning naming the Docker repo tags podling lacks (all of them when podlingd
    cannot be asked)."""
    repos = host.docker_root / "image" / "overlay2" / "repositories.json"
    text = read_text(repos)
    if text is None:
        return [ok("docker-images", f"no Docker images under {host.docker_root}")]
    tags = docker_tags(text)
    if not tags:
        return [ok("docker-images", f"the Docker data root {host.docker_root} has no tags")]
    have = host.podling_images()
    if have is not None:
        present = {normalize_ref(t) for t in have}
        tags = [t for t in tags if normalize_ref(t) not in present]
        if not tags:
            return [ok("docker-images", "podling has every image tagged in Docker")]
    return [_missing(host, tags, known=have is not None)]


def docker_tags(repositories_json: str) -> list[str]:
    """The "name:tag" entries of Docker's repositories.json (digest entries left out)."""
    try:
        doc: Any = json.loads(repositories_json)
    except ValueError:
        return []
    repos = doc.get("Repositories") if isinstance(doc, dict) else None
    if not isinstance(repos, dict):
        return []
    tags = {
        ref for refs in repos.values() if isinstance(refs, dict) for ref in refs if "@" not in ref
    }
    return sorted(tags)


def _missing(host: Host, tags: list[str], known: bool) -> Finding:
    shown = ", ".join(tags[:MAX_LISTED])
    if len(tags) > MAX_LISTED:
        shown += f" and {len(tags) - MAX_LISTED} more"
    scope = "podling does not have" if known else "podlingd could not be asked; maybe missing"
    return Finding(
        "warning",
        "docker-images",
        f"{len(tags)} Docker image tag(s) under {host.docker_root} ({scope}): {shown}",
        why="pods that use these images must pull them again: slow, and impossible for "
        "images that were only built or loaded locally",
        fix="while Docker is still installed: `docker save -o images.tar "
        + " ".join(tags[:3])
        + (" ..." if len(tags) > 3 else "")
        + "`, then `podling load images.tar` (`podling migrate docker` does not exist yet)",
    )
