"""Import a containerd config (version 2 or 3) as podling TOML.

Pure apart from reading the hosts.toml files a `registry.config_path` names. The result
holds podling TOML for every key that maps, the list of mappings made, and every containerd
key that could not be mapped with the reason. Keys whose value is empty, false or zero are
not reported: "off" is what podling does anyway, and `containerd config default` dumps
dozens of them. Whole sections podling has no counterpart for (other plugins, [debug],
[metrics], ...) are reported once each rather than key by key.

Go duration strings (`stream_idle_timeout`, `image_pull_progress_timeout`) become podling
seconds (containerd_values); an invalid or out-of-range one is reported with its value.

`sandbox_image` (v2) / `pinned_images.sandbox` (v3) maps to `images.pinned`: podling runs
pods without a pause image (its infra process is built in), but containerd reported that
image as pinned, so kubelet image GC never removed it; pinning it keeps that behaviour for
nodes (air-gapped ones above all) that pre-load it or run it as a workload.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podling.config import ImagesConfig, StreamingConfig
from podling.containerd_hosts import RegistryPlan, hosts_plans, inline_plan
from podling.containerd_values import config_range, duration_setting, render_toml, toml_key
from podling.errors import ConfigError, InvalidArgument
from podling.image.reference import parse_reference

_RUNC_SHIM = "io.containerd.runc.v2"
_NO_EQUIVALENT = "no podling equivalent"


@dataclass(frozen=True)
class ImportResult:
    """`toml`: podling config text (loads with podling.config.load); `mapped`: one
    "containerd key -> podling key" line per mapping; `unmapped`: (containerd key, why)."""

    toml: str
    mapped: list[str]
    unmapped: list[tuple[str, str]]


class _Builder:
    """Collects the podling document and the report while the sections are walked."""

    def __init__(self) -> None:
        self.doc: dict[str, Any] = {}
        self.mapped: list[str] = []
        self.unmapped: list[tuple[str, str]] = []

    def put(self, src: str, dst: tuple[str, ...], value: Any, append: bool = False) -> None:
        table = self.doc
        for part in dst[:-1]:
            table = table.setdefault(part, {})
        if append:
            table.setdefault(dst[-1], []).extend(v for v in value if v not in table[dst[-1]])
        else:
            table[dst[-1]] = value
        self.mapped.append(f"{src} -> {'.'.join(toml_key(p) for p in dst)}")

    def skip(self, src: str, why: str) -> None:
        self.unmapped.append((src, why))


Handler = Callable[[_Builder, str, Any], None]


def import_containerd(text: str, path: Path) -> ImportResult:
    """Map containerd config `text` (read from `path`, named in messages). Raises ConfigError
    for invalid TOML, a version 1 (or unversioned) file, or an unknown version."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    version = doc.get("version")
    if version is None or version == 1:
        raise ConfigError(
            f"{path}: this is a containerd config version 1 file (no 'version = 2' or "
            "'version = 3' line); podling reads versions 2 and 3 only. Convert it with "
            f"containerd's own `containerd config migrate -c {path} > config-v3.toml` "
            "(needs a containerd >= 1.7 binary), then import the result"
        )
    if version not in (2, 3):
        raise ConfigError(
            f"{path}: containerd config version {version!r} is not supported; "
            "podling reads versions 2 and 3"
        )
    b = _Builder()
    for k, v in doc.items():
        if k == "plugins" and isinstance(v, dict):
            _plugins(b, v)
        elif k != "version":
            _top_level(b, k, v)
    return ImportResult(render_toml(b.doc), b.mapped, b.unmapped)


_TOP_REASONS = {
    "root": "podling keeps its own store (its `root`); containerd's is not reused",
    "state": "podling keeps its own run state (its `state`)",
    "grpc": "point the kubelet's --container-runtime-endpoint at podling's `socket` instead",
}


def _top_level(b: _Builder, k: str, v: Any) -> None:
    if _is_set(v):
        b.skip(toml_key(k), _TOP_REASONS.get(k, _NO_EQUIVALENT))


def _plugins(b: _Builder, plugins: dict[str, Any]) -> None:
    for name, section in plugins.items():
        key = _join("plugins", name)
        handlers = _SECTIONS.get(name)
        if handlers is not None and isinstance(section, dict):
            _walk(b, key, section, handlers)
        elif _is_set(section):
            b.skip(key, "containerd plugin with no podling equivalent")


def _walk(b: _Builder, prefix: str, table: dict[str, Any], handlers: dict[str, Handler]) -> None:
    """Hand each key of `table` to its handler; report the rest."""
    for k, v in table.items():
        key = _join(prefix, k)
        handler = handlers.get(k)
        if handler is not None:
            handler(b, key, v)
        else:
            _leftover(b, key, v)


def _leftover(b: _Builder, key: str, v: Any, why: str = _NO_EQUIVALENT) -> None:
    """Report every set leaf under `key`."""
    if isinstance(v, dict):
        for k, sub in v.items():
            _leftover(b, _join(key, k), sub, why)
    elif _is_set(v):
        b.skip(key, why)


def _is_set(v: Any) -> bool:
    if isinstance(v, dict):
        return any(_is_set(x) for x in v.values())
    return v not in ("", [], False, 0, None)


# -- images ---------------------------------------------------------------------------


def _sandbox_image(b: _Builder, key: str, v: Any) -> None:
    if not isinstance(v, str) or not v:
        return
    try:
        parse_reference(v)
    except InvalidArgument as e:
        b.skip(key, f"not a valid image reference: {e.message}")
        return
    b.put(key, ("images", "pinned"), [v], append=True)


def _snapshotter(b: _Builder, key: str, v: Any) -> None:
    if v in ("overlayfs", "native"):
        b.put(key, ("images", "snapshotter"), v)
    elif _is_set(v):
        b.skip(key, f"podling has the overlayfs and native snapshotters only, not {v!r}")


def _pinned_images(b: _Builder, key: str, v: Any) -> None:
    if isinstance(v, dict):
        _walk(b, key, v, {"sandbox": _sandbox_image})


def _downloads(b: _Builder, key: str, v: Any) -> None:
    if isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 64:
        b.put(key, ("images", "max_concurrent_downloads"), v)
    elif _is_set(v):
        b.skip(key, f"podling needs an integer from 1 to 64, got {v!r}")


# -- runtimes ---------------------------------------------------------------------------


def _containerd(b: _Builder, key: str, v: Any) -> None:
    if not isinstance(v, dict):
        return
    runtimes = v.get("runtimes", {})
    shims = {
        name
        for name, rt in (runtimes.items() if isinstance(runtimes, dict) else ())
        if not isinstance(rt, dict) or rt.get("runtime_type") != _RUNC_SHIM
    }
    handlers: dict[str, Handler] = {
        "default_runtime_name": lambda b2, k2, v2: _default_runtime(b2, k2, v2, shims),
        "runtimes": _runtimes,
        "snapshotter": _snapshotter,
    }
    _walk(b, key, v, handlers)


def _default_runtime(b: _Builder, key: str, v: Any, shims: set[str]) -> None:
    """Map the default handler unless it names a runtime that is not imported."""
    if isinstance(v, str) and v in shims:
        b.skip(key, f"names runtime {v!r}, which is not imported; podling's default stays")
    elif isinstance(v, str) and v:
        b.put(key, ("default_runtime",), v)


def _runtimes(b: _Builder, key: str, v: Any) -> None:
    if isinstance(v, dict):
        for name, rt in v.items():
            if isinstance(rt, dict):
                _runtime(b, _join(key, name), name, rt)


def _runtime(b: _Builder, key: str, name: str, rt: dict[str, Any]) -> None:
    rtype = rt.get("runtime_type", "")
    if rtype != _RUNC_SHIM:
        b.skip(
            key,
            f"runtime_type {rtype!r} is a containerd shim; podling runs OCI CLI runtimes "
            f"(runc, crun, runsc built in) under conmon: add [runtimes.{toml_key(name)}] with "
            "the runtime's OCI binary by hand",
        )
        return
    dst = ("runtimes", name)
    b.put(_join(key, "runtime_type"), (*dst, "type"), "oci")
    opts = rt.get("options", {})
    binary = opts.get("BinaryName", "") if isinstance(opts, dict) else ""
    # The runc shim runs `runc` when BinaryName is empty, whatever the handler's name.
    b.put(_join(_join(key, "options"), "BinaryName"), (*dst, "binary"), binary or "runc")
    rest = {k: v for k, v in rt.items() if k != "runtime_type"}
    _walk(b, key, rest, {"options": lambda b2, k2, v2: _runc_options(b2, k2, v2, dst)})


def _runc_options(b: _Builder, key: str, v: Any, dst: tuple[str, ...]) -> None:
    if not isinstance(v, dict):
        return
    for k, sub in v.items():
        sub_key = _join(key, k)
        if k == "Root" and isinstance(sub, str) and sub:
            b.put(sub_key, (*dst, "root"), sub)
        elif k == "SystemdCgroup" and sub is True:
            b.skip(sub_key, "podling uses cgroupfs (systemd is not PID 1 here)")
        elif k != "BinaryName":
            _leftover(b, sub_key, sub)


# -- CNI and streaming -------------------------------------------------------------------


def _cni(b: _Builder, key: str, v: Any) -> None:
    if isinstance(v, dict):
        _walk(b, key, v, {"bin_dir": _cni_bin, "bin_dirs": _cni_bin, "conf_dir": _cni_conf})


def _cni_bin(b: _Builder, key: str, v: Any) -> None:
    dirs = [v] if isinstance(v, str) else v
    if isinstance(dirs, list) and dirs and all(isinstance(d, str) and d for d in dirs):
        b.put(key, ("network", "cni_bin_dirs"), dirs)


def _cni_conf(b: _Builder, key: str, v: Any) -> None:
    if isinstance(v, str) and v:
        b.put(key, ("network", "cni_conf_dir"), v)


def _stream_address(b: _Builder, key: str, v: Any) -> None:
    if isinstance(v, str) and v:
        b.put(key, ("streaming", "address"), v)


def _stream_port(b: _Builder, key: str, v: Any) -> None:
    # containerd spells the port as a string ("0" = pick a free one, as in podling).
    text = str(v)
    if text.isdigit() and int(text) <= 65535:
        b.put(key, ("streaming", "port"), int(text))
    elif _is_set(v):
        b.skip(key, f"not a port number: {v!r}")


def _duration(table: str, section: type[Any], name: str) -> Handler:
    """A handler mapping a containerd Go duration ("4h0m0s") to podling's `[table] name`
    seconds, within the range `section` (its dataclass) allows; anything else is reported."""
    lo, hi = config_range(section, name)
    dst = (table, name)

    def handle(b: _Builder, key: str, v: Any) -> None:
        try:
            b.put(key, dst, duration_setting(v, lo, hi))
        except ValueError as e:
            b.skip(key, f"not mapped to {'.'.join(dst)}: {e}")

    return handle


# Both bound the time without a byte read: containerd's image_pull_progress_timeout cancels
# a pull whose registry connection sends nothing for that long, as pull_stall_timeout does.
_IDLE_TIMEOUT = _duration("streaming", StreamingConfig, "idle_timeout")
_PULL_STALL = _duration("images", ImagesConfig, "pull_stall_timeout")


# -- registries ---------------------------------------------------------------------------


def _registry(b: _Builder, key: str, v: Any) -> None:
    if isinstance(v, dict):
        handlers: dict[str, Handler] = {
            "mirrors": _inline_mirrors,
            "config_path": _config_path,
            "configs": lambda b2, k2, v2: _leftover(
                b2, k2, v2, "per-registry TLS and auth settings are not imported"
            ),
        }
        _walk(b, key, v, handlers)


def _inline_mirrors(b: _Builder, key: str, v: Any) -> None:
    for host, m in v.items() if isinstance(v, dict) else ():
        host_key = _join(key, host)
        rest = dict(m) if isinstance(m, dict) else {}
        plan = inline_plan(host, rest.pop("endpoint", []), _join(host_key, "endpoint"))
        _apply(b, _join(host_key, "endpoint"), host, plan)
        _leftover(b, host_key, rest)


def _config_path(b: _Builder, key: str, v: Any) -> None:
    if not isinstance(v, str) or not v:
        return
    plans = hosts_plans(v, key)
    for host, plan in plans.items():
        _apply(b, f"{key} ({host}/hosts.toml)", host, plan)


def _apply(b: _Builder, src: str, host: str, plan: RegistryPlan) -> None:
    for k, why in plan.unmapped:
        b.skip(k, why)
    dst = ("images", "registries", host)
    if plan.mirrors:
        b.put(src, (*dst, "mirrors"), plan.mirrors, append=True)
    if plan.insecure:
        b.put(src, (*dst, "insecure"), True)
    if plan.skip_upstream:
        b.put(f"{src} server", (*dst, "skip_upstream"), True)


_STREAMING: dict[str, Handler] = {
    "stream_server_address": _stream_address,
    "stream_server_port": _stream_port,
    "stream_idle_timeout": _IDLE_TIMEOUT,
}
_SECTIONS: dict[str, dict[str, Handler]] = {
    # version 2: one CRI plugin holds everything
    "io.containerd.grpc.v1.cri": {
        "sandbox_image": _sandbox_image,
        "max_concurrent_downloads": _downloads,
        "containerd": _containerd,
        "cni": _cni,
        "registry": _registry,
        "image_pull_progress_timeout": _PULL_STALL,
        **_STREAMING,
    },
    # version 3: split plugins (the grpc.v1.cri one keeps the server settings)
    "io.containerd.cri.v1.runtime": {"containerd": _containerd, "cni": _cni},
    "io.containerd.cri.v1.images": {
        "pinned_images": _pinned_images,
        "snapshotter": _snapshotter,
        "max_concurrent_downloads": _downloads,
        "registry": _registry,
        "image_pull_progress_timeout": _PULL_STALL,
    },
    "io.containerd.transfer.v1.local": {"max_concurrent_downloads": _downloads},
}


# -- keys and rendering -------------------------------------------------------------------


def _join(prefix: str, k: str) -> str:
    """`prefix` + one more key, quoted as TOML would need it (for messages)."""
    return f"{prefix}.{toml_key(k)}" if prefix else toml_key(k)
