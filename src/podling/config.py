"""The daemon's configuration: TOML files → frozen dataclasses, validated with clear messages.

Every key has a default, so no file is needed. The main file (default
/etc/podling/config.toml) is read first, then `config.d/*.toml` beside it in name order;
later files override earlier ones key by key (tables merge, scalars and lists replace).
An unknown key, a wrong type or a bad value raises ConfigError with one line naming the
file, the key and what is expected. `render_default()` prints the commented defaults,
generated from the same schema so the two can never drift apart.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from podling.errors import ConfigError, InvalidArgument
from podling.image.reference import parse_reference

DEFAULT_CONFIG_PATH = Path("/etc/podling/config.toml")


def _doc(text: str, check: tuple[str, Any] | None = None) -> dict[str, Any]:
    """Field metadata: the comment printed above the key, and an optional value check."""
    return {"doc": text, "check": check}


@dataclass(frozen=True)
class LogConfig:
    level: str = field(
        default="info",
        metadata=_doc(
            "debug, info, warning or error", ("one_of", ("debug", "info", "warning", "error"))
        ),
    )
    format: str = field(default="text", metadata=_doc("text or json", ("one_of", ("text", "json"))))


@dataclass(frozen=True)
class RegistryConfig:
    mirrors: list[str] = field(
        default_factory=list,
        metadata=_doc("endpoints tried in order before the registry itself", ("urls", None)),
    )
    insecure: bool = field(
        default=False, metadata=_doc("allow plain http to this registry (never for others)")
    )
    skip_upstream: bool = field(
        default=False, metadata=_doc("use only the mirrors, never the registry itself")
    )


@dataclass(frozen=True)
class ImagesConfig:
    snapshotter: str = field(
        default="overlayfs",
        metadata=_doc(
            "overlayfs, or native (copies; used anyway when overlay cannot mount)",
            ("one_of", ("overlayfs", "native")),
        ),
    )
    max_concurrent_downloads: int = field(
        default=3, metadata=_doc("layers downloaded in parallel per pull", ("range", (1, 64)))
    )
    pull_stall_timeout: float = field(
        default=60.0,
        metadata=_doc("seconds a pull may make no progress before it fails", ("range", (1, 3600))),
    )
    max_layer_size: int = field(
        default=32 << 30,
        metadata=_doc("uncompressed bytes one layer may unpack to", ("range", (1 << 20, 1 << 50))),
    )
    pinned: list[str] = field(
        default_factory=list,
        metadata=_doc(
            "images reported as pinned: the kubelet never garbage-collects them", ("refs", None)
        ),
    )
    registries: dict[str, RegistryConfig] = field(
        default_factory=dict,
        metadata=_doc('per registry host, e.g. [images.registries."docker.io"]', None),
    )


@dataclass(frozen=True)
class HandlerConfig:
    binary: str = field(default="", metadata=_doc("the OCI runtime binary (name on PATH or path)"))
    type: str = field(
        default="oci",
        metadata=_doc("oci: an OCI CLI runtime run under conmon", ("one_of", ("oci",))),
    )
    root: str = field(
        default="", metadata=_doc("its state dir (--root); default <state>/runtimes/NAME")
    )
    args: list[str] = field(
        default_factory=list, metadata=_doc("extra global arguments, e.g. --platform=ptrace")
    )


@dataclass(frozen=True)
class RuntimeConfig:
    conmon: str = field(default="conmon", metadata=_doc("the conmon binary"))
    cgroup_driver: str = field(
        default="cgroupfs",
        metadata=_doc("cgroupfs (systemd is not PID 1 on our nodes)", ("one_of", ("cgroupfs",))),
    )
    cgroup_parent: str = field(
        default="/podling",
        metadata=_doc("cgroup under which pods that name no cgroup_parent get theirs"),
    )
    infra_binary: str = field(
        default="/usr/bin/catatonit",
        metadata=_doc("static init run as the infra process of pods that share a PID namespace"),
    )
    stop_timeout: float = field(
        default=10.0,
        metadata=_doc(
            "seconds StopPodSandbox gives containers before SIGKILL", ("range", (0, 3600))
        ),
    )
    seccomp_profile_root: str = field(
        default="/var/lib/kubelet/seccomp",
        metadata=_doc(
            "directory a relative seccomp Localhost profile (localhost_ref) is read from, "
            "like the kubelet's <root-dir>/seccomp; absolute refs are used as given"
        ),
    )


@dataclass(frozen=True)
class NetworkConfig:
    default_bridge: str = field(
        default="podling0",
        metadata=_doc("bridge of the network podling writes when cni_conf_dir holds none"),
    )
    default_subnet: str = field(
        default="10.88.0.0/16", metadata=_doc("pod subnet of that default network")
    )
    cni_conf_dir: str = field(
        default="/etc/cni/net.d", metadata=_doc("where CNI network configs are read")
    )
    cni_bin_dirs: list[str] = field(
        default_factory=lambda: ["/usr/lib/cni", "/opt/cni/bin"],
        metadata=_doc("where CNI plugin binaries are looked up, in order"),
    )


@dataclass(frozen=True)
class StreamingConfig:
    address: str = field(
        default="127.0.0.1", metadata=_doc("address the exec/attach/port-forward server binds")
    )
    port: int = field(
        default=0, metadata=_doc("its port; 0 picks a free one", ("range", (0, 65535)))
    )
    tls_cert: str = field(default="", metadata=_doc("PEM certificate: serve https (with tls_key)"))
    tls_key: str = field(default="", metadata=_doc("PEM private key of tls_cert"))
    idle_timeout: float = field(
        default=14400.0,
        metadata=_doc("seconds a stream may stay idle before it is closed", ("range", (1, 86400))),
    )


@dataclass(frozen=True)
class MetricsConfig:
    address: str = field(
        default="",
        metadata=_doc(
            "HOST:PORT of the Prometheus /metrics endpoint (plain http), e.g. "
            '"127.0.0.1:9900"; empty: off'
        ),
    )


@dataclass(frozen=True)
class Config:
    default_runtime: str = field(
        default="runc",
        metadata=_doc("the runtime handler of pods that name none (RuntimeClass handler)"),
    )
    runtimes: dict[str, HandlerConfig] = field(
        default_factory=dict,
        metadata=_doc(
            "runtime handlers besides the built-in runc, crun and runsc (each offered when "
            'its binary is installed); e.g. [runtimes."kata"]',
            None,
        ),
    )
    root: str = field(
        default="/var/lib/podling", metadata=_doc("persistent state: images, metadata")
    )
    state: str = field(default="/run/podling", metadata=_doc("run state: locks, sockets"))
    socket: str = field(
        default="/run/podling/podling.sock", metadata=_doc("the CRI gRPC Unix socket")
    )
    socket_group: str = field(
        default="",
        metadata=_doc(
            "the group (name or number) that may use the socket besides root (mode 0660); "
            '"" keeps root\'s group'
        ),
    )
    log: LogConfig = field(default_factory=LogConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


def load(
    path: Path | None = None, explicit: bool = False, extra: tuple[tuple[Path, str], ...] = ()
) -> Config:
    """Read `path` (or the default) and its config.d drop-ins. A missing default file is fine;
    a missing file named explicitly is an error. `extra` holds (name, TOML text) pairs
    merged last, in order, as if they were files with that name (e.g. an imported
    containerd config)."""
    main = path or DEFAULT_CONFIG_PATH
    files: list[Path] = []
    if main.is_file():
        files.append(main)
    elif explicit:
        raise ConfigError(f"{main}: no such config file")
    dropins = main.parent / "config.d"
    if dropins.is_dir():
        files.extend(sorted(dropins.glob("*.toml")))
    merged: dict[str, Any] = {}
    origin: dict[str, Path] = {}
    texts: list[tuple[Path, str | None]] = [(f, None) for f in files]
    texts.extend(extra)
    for f, text in texts:
        try:
            doc = tomllib.loads(f.read_text() if text is None else text)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as e:
            raise ConfigError(f"{f}: not valid TOML: {e}") from e
        _merge(merged, doc, origin, f, "")
    return typing.cast(Config, _build(Config, merged, origin, ""))


def _merge(
    dst: dict[str, Any], src: dict[str, Any], origin: dict[str, Path], f: Path, at: str
) -> None:
    for k, v in src.items():
        key = f"{at}{k}"
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v, origin, f, key + ".")
        else:
            dst[k] = v
            _mark(origin, key, v, f)


def _mark(origin: dict[str, Path], key: str, v: Any, f: Path) -> None:
    origin[key] = f
    if isinstance(v, dict):
        for k, sub in v.items():
            _mark(origin, f"{key}.{k}", sub, f)


def _where(origin: dict[str, Path], key: str) -> str:
    return str(origin.get(key, "config"))


def _build(cls: type[Any], doc: dict[str, Any], origin: dict[str, Path], at: str) -> Any:
    hints = get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for k in doc:
        if k not in known:
            key = f"{at}{k}"
            raise ConfigError(
                f"{_where(origin, key)}: unknown key '{key}'; known keys here: "
                + ", ".join(sorted(known))
            )
    values: dict[str, Any] = {}
    for name, f in known.items():
        if name in doc:
            key = f"{at}{name}"
            values[name] = _value(hints[name], doc[name], origin, key)
            _check(f.metadata.get("check"), values[name], origin, key)
    return cls(**values)


def _value(tp: Any, v: Any, origin: dict[str, Path], key: str) -> Any:
    where = _where(origin, key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(v, dict):
            raise ConfigError(f"{where}: '{key}' must be a table")
        return _build(typing.cast(type[Any], tp), v, origin, key + ".")
    origin_t = typing.get_origin(tp)
    if origin_t is dict:
        val_t = typing.get_args(tp)[1]
        if not isinstance(v, dict):
            raise ConfigError(f"{where}: '{key}' must be a table")
        return {k: _value(val_t, sub, origin, f"{key}.{k}") for k, sub in v.items()}
    if origin_t is list:
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ConfigError(f"{where}: '{key}' must be a list of strings")
        return list(v)
    return _scalar(tp, v, where, key)


def _scalar(tp: Any, v: Any, where: str, key: str) -> Any:
    if tp is bool:
        ok = isinstance(v, bool)
    elif tp is int:
        ok = isinstance(v, int) and not isinstance(v, bool)
    elif tp is float:
        ok = isinstance(v, int | float) and not isinstance(v, bool)
        v = float(v) if ok else v
    else:
        ok = isinstance(v, str)
    if not ok:
        name = tp.__name__ if isinstance(tp, type | types.GenericAlias) else str(tp)
        expected = {
            "str": "a string",
            "int": "an integer",
            "float": "a number",
            "bool": "true or false",
        }
        raise ConfigError(f"{where}: '{key}' must be {expected.get(name, name)}, got {v!r}")
    return v


def _check(check: tuple[str, Any] | None, v: Any, origin: dict[str, Path], key: str) -> None:
    if check is None:
        return
    kind, arg = check
    where = _where(origin, key)
    if kind == "one_of" and v not in arg:
        raise ConfigError(f"{where}: '{key}' must be one of {', '.join(arg)}, got {v!r}")
    if kind == "range" and not arg[0] <= v <= arg[1]:
        raise ConfigError(f"{where}: '{key}' must be between {arg[0]} and {arg[1]}, got {v!r}")
    if kind == "refs":
        for ref in v:
            try:
                parse_reference(ref)
            except InvalidArgument as e:
                raise ConfigError(f"{where}: '{key}' has an invalid image reference: {e}") from e
    if kind == "urls":
        for u in v:
            if not u.startswith(("http://", "https://")):
                raise ConfigError(
                    f"{where}: '{key}' entries must be http:// or https:// URLs, got {u!r}"
                )


def render_default() -> str:
    """The full default config as commented TOML (what `podlingd config` prints)."""
    lines = ["# podling configuration: every key is shown with its default value.", ""]
    _render(Config(), "", lines)
    return "\n".join(lines).rstrip() + "\n"


def _render(obj: Any, table: str, lines: list[str]) -> None:
    subtables: list[tuple[str, Any, str]] = []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        doc = f.metadata.get("doc", "")
        if dataclasses.is_dataclass(v):
            subtables.append((f.name, v, doc))
            continue
        lines.append(f"# {doc}")
        if isinstance(v, dict):
            lines.extend(_DICT_EXAMPLES[f.name])
        else:
            lines.append(f"{f.name} = {_toml(v)}")
        lines.append("")
    for name, v, _doc_text in subtables:
        lines.append(f"[{table}{name}]")
        _render(v, f"{table}{name}.", lines)


_DICT_EXAMPLES = {
    "registries": [
        "# registries: none by default",
        '# [images.registries."docker.io"]',
        '# mirrors = ["http://127.0.0.1:5000"]',
    ],
    "runtimes": [
        "# runtimes: runc, crun and runsc are built in; to add or change one:",
        "# [runtimes.runsc]",
        '# binary = "/usr/bin/runsc"',
        '# args = ["--platform=ptrace", "--network=host", "--oci-seccomp", "--net-raw"]',
    ],
}


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
