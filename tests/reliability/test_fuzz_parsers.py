"""Fuzz the parsers that read untrusted input: image references, the daemon config, the
containerd config importer, manifests/indexes/configs and the layer unpacker.

Each property: the parser either returns a result that holds its contract or raises its
documented error class with a message; never another exception, and (the unpacker)
never a write outside the target dir. No root, no network.

Short mode (CI): a fixed, derandomised set of examples, seconds in all. Long mode
(`PODLING_LONG=1`): many more examples, several minutes in all. Each test prints how
many examples it ran (`pytest -s`).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import string
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from podling import config as podling_config
from podling.containerd_config import import_containerd
from podling.errors import ConfigError, Internal, InvalidArgument, PodlingError
from podling.image import manifest
from podling.image.reference import NAME_MAX, parse_reference
from podling.image.unpack import apply_layer
from tests.reliability.conftest import examples
from tests.support.tars import TarBuilder, make_box, tree_state


class Count:
    def __init__(self, what: str) -> None:
        self.what = what
        self.n = 0
        self.ok = 0

    def report(self) -> None:
        print(f"\n{self.what}: {self.n} examples, {self.ok} accepted, {self.n - self.ok} refused")
        assert self.n > 0


# --- image references ----------------------------------------------------------------------

_REF_CHARS = string.ascii_letters + string.digits + "._-/:@[]" + "\x00 \n%"
_VALID_REFS = [
    "busybox",
    "docker.io/library/busybox:1.36",
    "localhost:5000/a/b_c__d--e:tag",
    "[::1]:5000/x@sha256:" + "a" * 64,
    "Quay.IO/org/app:v1.2@sha256:" + "0" * 64,
    "index.docker.io/user/app",
]


def _mutate(text: str, data: st.DataObject) -> str:
    pos = data.draw(st.integers(0, len(text)))
    kind = data.draw(st.sampled_from(["insert", "delete", "replace", "repeat"]))
    piece = data.draw(st.text(_REF_CHARS, min_size=1, max_size=8))
    if kind == "insert":
        return text[:pos] + piece + text[pos:]
    if kind == "delete":
        return text[:pos] + text[pos + len(piece) :]
    if kind == "replace":
        return text[:pos] + piece + text[pos + len(piece) :]
    return text[:pos] + piece * data.draw(st.integers(1, 300)) + text[pos:]


def test_reference_parser() -> None:
    count = Count("reference parser")

    @examples(1000, 60_000)
    @given(
        st.one_of(
            st.text(max_size=300),
            st.text(_REF_CHARS, max_size=300),
            st.sampled_from(_VALID_REFS),
        ),
        st.data(),
    )
    def prop(text: str, data: st.DataObject) -> None:
        if data.draw(st.booleans()):
            text = _mutate(text, data)
        count.n += 1
        try:
            ref = parse_reference(text)
        except InvalidArgument as e:
            assert e.message.startswith("invalid image reference"), e.message
            return
        count.ok += 1
        assert len(ref.name) <= NAME_MAX
        assert ref.tag is not None or ref.digest is not None
        assert "\x00" not in str(ref) and " " not in str(ref)
        # normalisation is idempotent: the printed form parses to the same reference
        assert parse_reference(str(ref)) == ref

    prop()
    count.report()


# --- the daemon config ---------------------------------------------------------------------

_KEYS = {
    "": ["default_runtime", "root", "state", "socket", "runtimes"],
    "log": ["level", "format"],
    "images": [
        "snapshotter",
        "max_concurrent_downloads",
        "pull_stall_timeout",
        "max_layer_size",
        "pinned",
        "registries",
    ],
    "runtime": ["conmon", "cgroup_driver", "cgroup_parent", "infra_binary", "stop_timeout"],
    "network": ["default_bridge", "default_subnet", "cni_conf_dir", "cni_bin_dirs"],
    "streaming": ["address", "port", "tls_cert", "tls_key", "idle_timeout"],
    "metrics": ["address"],
}

_scalars = st.one_of(
    st.text(max_size=40),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


def _toml_key(k: str) -> str:
    return json.dumps(k)  # a TOML basic string is a JSON string (for what json emits)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v in (float("inf"), float("-inf")):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"


@st.composite
def _config_docs(draw: st.DrawFn) -> str:
    """TOML text: known tables and keys with values of any type (plus stray keys)."""
    lines: list[str] = []
    for table, keys in _KEYS.items():
        chosen = draw(st.lists(st.sampled_from(keys), max_size=3, unique=True))
        if draw(st.booleans()):
            chosen.append(draw(st.text(string.ascii_lowercase + "_", min_size=1, max_size=8)))
        if not chosen:
            continue
        if table:
            lines.append(f"[{table}]")
        lines.extend(f"{_toml_key(k)} = {_toml_value(draw(_values))}" for k in chosen)
    return "\n".join(lines) + "\n"


def test_config_loader(tmp_path: Path) -> None:
    count = Count("config loader")
    path = tmp_path / "config.toml"

    @examples(150, 2_000)
    @given(
        st.one_of(
            st.binary(max_size=400),
            _config_docs().map(str.encode),
            _config_docs().map(lambda t: t.encode()[: len(t) // 2]),
        )
    )
    def prop(body: bytes) -> None:
        count.n += 1
        path.write_bytes(body)
        try:
            cfg = podling_config.load(path, explicit=True)
        except ConfigError as e:
            assert str(e).startswith(str(path)), str(e)
            return
        count.ok += 1
        assert isinstance(cfg, podling_config.Config)
        assert cfg.streaming.port in range(65536)

    prop()
    count.report()


def test_containerd_importer() -> None:
    count = Count("containerd config importer")
    where = Path("/nonexistent/containerd-config.toml")
    cri = 'plugins."io.containerd.grpc.v1.cri"'

    @st.composite
    def docs(draw: st.DrawFn) -> str:
        version = draw(st.sampled_from(["2", "3", "1", '"2"', "99"]))
        tables = [
            cri,
            f"{cri}.containerd",
            f"{cri}.containerd.runtimes.runc",
            f"{cri}.containerd.runtimes.runc.options",
            f"{cri}.registry",
            f'{cri}.registry.mirrors."docker.io"',
            'plugins."io.containerd.cri.v1.images"',
            'plugins."io.containerd.cri.v1.runtime".cni',
            f"{cri}.cni",
        ]
        keys = [
            "sandbox_image",
            "snapshotter",
            "default_runtime_name",
            "runtime_type",
            "BinaryName",
            "SystemdCgroup",
            "endpoint",
            "config_path",
            "bin_dir",
            "conf_dir",
            "max_concurrent_downloads",
            "stream_server_address",
            "stream_server_port",
            "pinned_images",
            "root",
        ]
        lines = [f"version = {version}"]
        for table in draw(st.lists(st.sampled_from(tables), max_size=5, unique=True)):
            lines.append(f"[{table}]")
            for k in draw(st.lists(st.sampled_from(keys), max_size=4, unique=True)):
                lines.append(f"{k} = {_toml_value(draw(_values))}")
        return "\n".join(lines) + "\n"

    @examples(200, 6_000)
    @given(st.one_of(docs(), st.text(max_size=300)))
    def prop(text: str) -> None:
        count.n += 1
        try:
            result = import_containerd(text, where)
        except ConfigError as e:
            assert str(e).startswith(str(where)), str(e)
            return
        count.ok += 1
        tomllib.loads(result.toml)  # what it writes is always valid TOML
        try:
            podling_config.load(where, extra=((Path("imported.toml"), result.toml),))
        except ConfigError as e:
            assert str(e), "a config error must say what is wrong"

    prop()
    count.report()


# --- manifests, indexes, configs -------------------------------------------------------------

_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
_DIGEST = "sha256:" + "ab" * 32


@st.composite
def _descriptors(draw: st.DrawFn) -> Any:
    base: dict[str, Any] = {
        "mediaType": draw(st.sampled_from([*manifest.MANIFEST_TYPES, "", "x/y"])),
        "digest": _DIGEST,
        "size": 10,
        "platform": {"os": "linux", "architecture": "amd64"},
    }
    for key in draw(st.lists(st.sampled_from([*base, "annotations"]), max_size=3)):
        base[key] = draw(_json)
    return draw(st.one_of(st.just(base), _json))


@st.composite
def _manifest_docs(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from([*manifest.INDEX_TYPES, *manifest.MANIFEST_TYPES, ""]))
    doc: dict[str, Any] = {"schemaVersion": draw(st.sampled_from([2, 1, "2", None]))}
    if kind:
        doc["mediaType"] = kind
    if draw(st.booleans()):
        doc["manifests"] = draw(st.one_of(st.lists(_descriptors(), max_size=3), _json))
    else:
        doc["config"] = draw(_descriptors())
        doc["layers"] = draw(st.one_of(st.lists(_descriptors(), max_size=3), _json))
    data = json.dumps(doc).encode()
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + draw(st.binary(max_size=4)) + data[cut + 1 :]
    return data


def test_manifest_parser() -> None:
    count = Count("manifest/index/config parser")

    @examples(400, 8_000)
    @given(
        st.one_of(
            _manifest_docs(),
            st.binary(max_size=200),
            _json.map(lambda d: json.dumps(d).encode()),
            st.integers(1, 100_000).map(lambda n: b"[" * n),
        ),
        st.sampled_from(["", *manifest.INDEX_TYPES, *manifest.MANIFEST_TYPES]),
    )
    # found by earlier runs: kept so the short mode always tries them
    @example(b'{"manifests": [{"digest": "x", "size": 1, "platform": "ab"}]}', "")
    @example(b'{"manifests": 5}', "")
    @example(b'{"config": {"digest": "x", "size": 1}, "schemaVersion": 2, "layers": 7}', "")
    @example(b"[" * 100_000, "")
    def prop(data: bytes, media_type: str) -> None:
        count.n += 1
        try:
            parsed = manifest.parse(data, media_type)
            if isinstance(parsed, manifest.Index):
                manifest.select_platform(parsed, ("linux", "amd64", ""))
            else:
                assert all(d.size >= 0 and isinstance(d.digest, str) for d in parsed.layers)
        except PodlingError as e:
            assert e.code in ("INVALID_ARGUMENT", "NOT_FOUND") and e.message
        else:
            count.ok += 1
        try:
            manifest.parse_config(data)
        except InvalidArgument as e:
            assert e.message

    prop()
    count.report()


# --- the layer unpacker -------------------------------------------------------------------

_NAME_PARTS = ["a", "b", "..", ".", "", "link", "up", ".wh.a", ".wh..wh..opq", ".wh..", "x" * 300]


@st.composite
def _names(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.sampled_from(_NAME_PARTS), min_size=1, max_size=5))
    name = "/".join(parts)
    return ("/" + name) if draw(st.booleans()) else name


@st.composite
def _layers(draw: st.DrawFn, box: Path) -> bytes:
    """A tar of random entries: names with `..`, absolute paths, whiteouts; symlinks
    inside, outside and in loops; hardlinks anywhere; devices; odd modes and owners."""
    targets = st.one_of(
        _names(),
        st.sampled_from([str(box / "escape"), str(box / "sentinel"), "/etc", "/", "../..", "."]),
    )
    b = TarBuilder()
    for _ in range(draw(st.integers(1, 12))):
        name = draw(_names())
        kind = draw(st.sampled_from(["file", "dir", "symlink", "hardlink", "dev", "fifo"]))
        if kind == "file":
            mode = draw(st.sampled_from([0o644, 0o7777, 0o000, 0o4755]))
            b.file(name, draw(st.binary(max_size=64)), mode=mode, uid=draw(st.sampled_from([0, 1])))
        elif kind == "dir":
            b.dir(name, mode=draw(st.sampled_from([0o755, 0o000, 0o1777])))
        elif kind == "symlink":
            b.symlink(name, draw(targets))
        elif kind == "hardlink":
            b.hardlink(name, draw(targets))
        elif kind == "dev":
            b.chardev(name, draw(st.integers(0, 300)), draw(st.integers(0, 300)))
        else:
            b.fifo(name)
    data = b.bytes()
    if draw(st.integers(0, 3)) == 0:  # flip some bytes: headers, sizes, checksums
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
        data = bytes(buf)
    return data


def _clear(path: Path) -> None:
    for dirpath, dirs, _ in os.walk(path):
        for d in dirs:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, 0o700)
    shutil.rmtree(path)


@pytest.mark.parametrize("whiteouts", ["native", "overlay"])
def test_layer_unpacker(tmp_path: Path, whiteouts: str) -> None:
    if whiteouts == "overlay" and os.geteuid() != 0:
        pytest.skip("overlay whiteouts need CAP_MKNOD")
    count = Count(f"layer unpacker ({whiteouts})")
    box = tmp_path / "box"
    dest = make_box(box)
    before = tree_state(box, skip=dest)
    passwd = os.stat("/etc/passwd")

    @examples(200, 4_000)
    @given(_layers(box))
    def prop(layer: bytes) -> None:
        count.n += 1
        if dest.exists():
            _clear(dest)
        dest.mkdir()
        try:
            apply_layer(io.BytesIO(layer), dest, whiteouts=whiteouts, max_bytes=1 << 20)  # type: ignore[arg-type]
        except PodlingError as e:
            assert not isinstance(e, Internal), f"INTERNAL for a bad layer: {e.message}"
            assert e.message
        else:
            count.ok += 1
        assert tree_state(box, skip=dest) == before, "the unpacker wrote outside dest"
        assert os.stat("/etc/passwd") == passwd

    prop()
    _clear(dest)
    count.report()


def test_tarfile_fuzz_seed_is_a_valid_tar() -> None:
    """Guard for the strategy above: an unmutated layer is a tar the stdlib can read."""
    data = TarBuilder().file("a", b"x").symlink("l", "a").bytes()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == ["a", "l"]
