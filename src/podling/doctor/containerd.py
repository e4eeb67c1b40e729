"""Check of a containerd config left on the node: a `version` that does not match the
layout of its tables, and the keys podling would ignore when the file is imported.

Layouts, by where the CRI settings live: version 1 in `[plugins.cri]`, version 2 in
`[plugins."io.containerd.grpc.v1.cri"]` (with its containerd, cni and registry tables),
version 3 split into `[plugins."io.containerd.cri.v1.images"]` and
`[plugins."io.containerd.cri.v1.runtime"]` (the grpc.v1.cri table keeps only the stream
server settings). A file without `version` is version 1 to containerd.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from podling.config import Config
from podling.containerd_config import import_containerd
from podling.doctor.model import Finding, Host, ok, read_text
from podling.errors import ConfigError

CHECK = "containerd-config"
MAX_LISTED = 20
V2_CRI = "io.containerd.grpc.v1.cri"
V3_PLUGINS = ("io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime")
# keys of the version 2 CRI table that version 3 moved to the split plugins
_V2_KEYS = ("containerd", "cni", "registry", "sandbox_image", "image_decryption")


def check_containerd_config(host: Host, cfg: Config) -> list[Finding]:
    """ok without a file; an error for invalid TOML or a version/layout mismatch; a warning
    listing the set keys podling ignores (from `podling config import`'s own report)."""
    path = host.containerd_config
    text = read_text(path)
    if text is None:
        return [ok(CHECK, f"no containerd config at {path}")]
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return [_invalid(path, e)]
    mismatch = version_mismatch(path, doc)
    if mismatch is None:
        version = doc.get("version", 1)
        mismatch = ok(CHECK, f"{path}: version {version} matches the layout of its tables")
    return [mismatch, _ignored(path, text)]


def table_layouts(doc: dict[str, Any]) -> dict[int, list[str]]:
    """Config version → the tables of `doc` laid out as that version wants them."""
    plugins = doc.get("plugins")
    plugins = plugins if isinstance(plugins, dict) else {}
    found: dict[int, list[str]] = {}
    if isinstance(plugins.get("cri"), dict):
        found[1] = ["plugins.cri"]
    cri = plugins.get(V2_CRI)
    v2 = [k for k in _V2_KEYS if isinstance(cri, dict) and k in cri]
    if v2:
        found[2] = [f'plugins."{V2_CRI}".{k}' for k in v2]
    v3 = [f'plugins."{name}"' for name in V3_PLUGINS if isinstance(plugins.get(name), dict)]
    if v3:
        found[3] = v3
    return found


def version_mismatch(path: Path, doc: dict[str, Any]) -> Finding | None:
    """An error when `version` is not 1, 2 or 3 or its tables are another version's."""
    declared = doc.get("version", 1)
    shown = f"says `version = {declared!r}`"
    if "version" not in doc:
        shown = "has no `version` line (version 1 to containerd)"
    layouts = table_layouts(doc)
    if declared not in (1, 2, 3) or isinstance(declared, bool):
        target = max(layouts) if len(layouts) == 1 else 3
        return _mismatch(
            path,
            f"{path} {shown}: containerd knows versions 1, 2 and 3",
            f"set `version = {target}` on the first line of {path}",
        )
    foreign = {v: tables for v, tables in layouts.items() if v != declared}
    if not foreign:
        return None
    tables = ", ".join(t for ts in foreign.values() for t in ts)
    if declared in layouts:
        return _mismatch(
            path,
            f"{path} {shown} but also has version {_versions(foreign)} tables: {tables}",
            f"keep one layout: move the settings of {tables} to where version {declared} "
            "keeps them (`containerd config default` shows the layout), or delete them",
        )
    target = max(foreign)
    return _mismatch(
        path,
        f"{path} {shown} but its tables are laid out for version {_versions(foreign)}: {tables}",
        f"set `version = {target}` on the first line of {path}, restart containerd if it "
        "still runs, then import it: `podling config import "
        f"{path} -o /etc/podling/config.d/50-containerd.toml`",
    )


def _versions(found: dict[int, list[str]]) -> str:
    return " and ".join(str(v) for v in sorted(found))


def _mismatch(path: Path, title: str, fix: str) -> Finding:
    return Finding(
        "error",
        CHECK,
        title,
        why="containerd reads only the tables of the declared version (older layouts are "
        "migrated on load): the others are ignored or mangled, so settings believed to be in "
        "effect (runtimes, registry mirrors, CNI dirs) are not, and an import would carry over "
        "settings the node never ran with",
        fix=fix,
    )


def _invalid(path: Path, e: tomllib.TOMLDecodeError) -> Finding:
    return Finding(
        "error",
        CHECK,
        f"{path} is not valid TOML: {e}",
        why="containerd refuses to start with it, and podling cannot import its settings",
        fix=f"fix the syntax of {path} (or remove the file if containerd is gone)",
    )


def _ignored(path: Path, text: str) -> Finding:
    """What `podling config import` would leave out, from its own report."""
    try:
        result = import_containerd(text, path)
    except ConfigError as e:
        return Finding(
            "warning",
            CHECK,
            f"podling cannot import {path}",
            why=str(e),
            fix="fix the file as the message says, then `podling config import "
            f"{path} -o /etc/podling/config.d/50-containerd.toml`",
        )
    if not result.unmapped:
        return ok(CHECK, f"{path}: every set key maps to podling ({len(result.mapped)} settings)")
    keys = [k for k, _ in result.unmapped]
    shown = ", ".join(keys[:MAX_LISTED])
    if len(keys) > MAX_LISTED:
        shown += f" and {len(keys) - MAX_LISTED} more"
    reasons = "; ".join(f"{k}: {why}" for k, why in result.unmapped[:MAX_LISTED])
    return Finding(
        "warning",
        CHECK,
        f"{len(keys)} key(s) of {path} that podling would ignore: {shown}",
        why=f"these settings have no effect under podling ({reasons})",
        fix=f"`podling config import {path} -o /etc/podling/config.d/50-containerd.toml` "
        f"carries over the {len(result.mapped)} settings that map; for the keys above, set "
        "the podling equivalent by hand where the reason names one, and drop the rest "
        "(`podling config import` lists them all on stderr)",
    )


def containerd_sandbox_image(host: Host) -> str | None:
    """The sandbox image the containerd config names (version 2 `sandbox_image`, version 3
    `pinned_images.sandbox`); None without a file, a readable one or such a key."""
    text = read_text(host.containerd_config)
    try:
        doc = tomllib.loads(text) if text is not None else {}
    except tomllib.TOMLDecodeError:
        return None
    plugins = doc.get("plugins")
    plugins = plugins if isinstance(plugins, dict) else {}
    v2 = plugins.get(V2_CRI)
    v3 = plugins.get(V3_PLUGINS[0])
    pinned = v3.get("pinned_images") if isinstance(v3, dict) else None
    for value in (
        v2.get("sandbox_image") if isinstance(v2, dict) else None,
        pinned.get("sandbox") if isinstance(pinned, dict) else None,
    ):
        if isinstance(value, str) and value:
            return value
    return None
