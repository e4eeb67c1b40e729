"""Build layer tarballs in memory for tests, including deliberately hostile ones."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zstandard

from podling.errors import DataLoss, FailedPrecondition, UnsafeContent

MTIME = 1_600_000_000


class TarBuilder:
    """Accumulates tar entries (PAX format); `bytes()` returns the finished archive."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        # closed by bytes(): the builder outlives any single with-block
        self._tar = tarfile.open(fileobj=self._buf, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115

    def _add(self, info: tarfile.TarInfo, data: bytes | None = None) -> TarBuilder:
        info.mtime = info.mtime or MTIME
        info.size = len(data) if data is not None else 0
        self._tar.addfile(info, io.BytesIO(data) if data is not None else None)
        return self

    def _info(self, name: str, type_: bytes, mode: int, **kw: object) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = type_
        info.mode = mode
        for k, v in kw.items():
            setattr(info, k, v)
        return info

    def file(self, name: str, data: bytes = b"", mode: int = 0o644, **kw: object) -> TarBuilder:
        return self._add(self._info(name, tarfile.REGTYPE, mode, **kw), data)

    def dir(self, name: str, mode: int = 0o755, **kw: object) -> TarBuilder:
        return self._add(self._info(name, tarfile.DIRTYPE, mode, **kw))

    def symlink(self, name: str, target: str, **kw: object) -> TarBuilder:
        return self._add(self._info(name, tarfile.SYMTYPE, 0o777, linkname=target, **kw))

    def hardlink(self, name: str, target: str) -> TarBuilder:
        return self._add(self._info(name, tarfile.LNKTYPE, 0o644, linkname=target))

    def chardev(self, name: str, major: int = 1, minor: int = 3) -> TarBuilder:
        info = self._info(name, tarfile.CHRTYPE, 0o666, devmajor=major, devminor=minor)
        return self._add(info)

    def blockdev(self, name: str, major: int = 7, minor: int = 0) -> TarBuilder:
        info = self._info(name, tarfile.BLKTYPE, 0o660, devmajor=major, devminor=minor)
        return self._add(info)

    def fifo(self, name: str) -> TarBuilder:
        return self._add(self._info(name, tarfile.FIFOTYPE, 0o644))

    def whiteout(self, name: str) -> TarBuilder:
        """Whiteout for `name` ("dir/x" -> "dir/.wh.x")."""
        head, _, base = name.rpartition("/")
        return self.file(f"{head}/.wh.{base}" if head else f".wh.{base}")

    def opaque(self, dirname: str) -> TarBuilder:
        return self.file(f"{dirname.rstrip('/')}/.wh..wh..opq")

    def bytes(self) -> bytes:
        self._tar.close()
        return self._buf.getvalue()


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def zstded(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


# --- The hostile corpus -------------------------------------------------------------
# Each case builds a layer against a sandbox dir `box` that holds `box/dest` (the snapshot),
# `box/sentinel` (must stay untouched) and `box/escape` (an existing dir an escape would
# write into). `expect` is the error class apply_layer must raise, or None when the layer
# must be handled safely (see `check` for what "safely" means there).


@dataclass(frozen=True)
class Hostile:
    name: str
    build: Callable[[Path], bytes]
    expect: type[Exception] | None
    lower: Callable[[Path], bytes] | None = None  # applied first (e.g. a planted symlink)
    media_type: str = "application/vnd.oci.image.layer.v1.tar"
    max_bytes: int = 1 << 30
    check: Callable[[Path], bool] | None = None  # must return True, given box


def _tar(fn: Callable[[TarBuilder], object]) -> bytes:
    b = TarBuilder()
    fn(b)
    return b.bytes()


def _big_zero_layer() -> bytes:
    return gzipped(TarBuilder().file("zeros", bytes(50 << 20)).bytes())


def _corrupt_gzip(box: Path) -> bytes:
    data = bytearray(gzipped(TarBuilder().file("f", os.urandom(20000)).bytes()))
    data[len(data) // 2 : len(data) // 2 + 16] = b"\xff" * 16
    return bytes(data)


def _corrupt_header(box: Path) -> bytes:
    data = bytearray(TarBuilder().file("a", b"x" * 600).file("b", b"y").bytes())
    data[1536 + 148 : 1536 + 156] = b"99999999"  # checksum field of the second member
    return bytes(data)


def _symlink_to(target: str, name: str = "link") -> Callable[[Path], bytes]:
    return lambda box: _tar(lambda b: b.symlink(name, target.format(box=box)))


def _no_file(*rel: str) -> Callable[[Path], bool]:
    return lambda box: not any(os.path.lexists(box / r) for r in rel)


def _inside(*rel: str) -> Callable[[Path], bool]:
    """Each `rel` ("{box}" expands to the box path) is a regular file inside dest, and
    nothing was created at the same relative path outside it."""

    def check(box: Path) -> bool:
        paths = [r.format(box=box).lstrip("/") for r in rel]
        return all(
            stat.S_ISREG(os.lstat(box / "dest" / p).st_mode) and not os.path.lexists(Path("/") / p)
            for p in paths
        ) and _no_file(*(r for r in rel if "{box}" not in r))(box)

    return check


def _link_chain(count: int) -> Callable[[TarBuilder], object]:
    """l0 -> l1 -> ... -> l{count-1} -> d, then a file through l0: `count` links."""

    def build(b: TarBuilder) -> None:
        b.dir("d")
        for i in range(count):
            b.symlink(f"l{i}", f"l{i + 1}" if i + 1 < count else "d")
        b.file("l0/x", b"x")

    return build


def _whited_inside(box: Path) -> bool:
    """dest/sentinel/keep was deleted (native) or whited out (overlay); box/sentinel kept."""
    st = (
        os.lstat(box / "dest/sentinel/keep")
        if os.path.lexists(box / "dest/sentinel/keep")
        else None
    )
    return (st is None or stat.S_ISCHR(st.st_mode)) and (box / "sentinel/keep").exists()


def _devices_inside(box: Path) -> bool:
    """As root the nodes exist inside dest; otherwise they were skipped."""
    dev = box / "dest" / "dev"
    if not stat.S_ISFIFO(os.lstat(dev / "fifo").st_mode):
        return False
    if os.geteuid() != 0:
        return not os.path.lexists(dev / "null") and not os.path.lexists(dev / "loop0")
    null, loop = os.lstat(dev / "null"), os.lstat(dev / "loop0")
    return (
        stat.S_ISCHR(null.st_mode)
        and os.major(null.st_rdev) == 1
        and os.minor(null.st_rdev) == 3
        and stat.S_ISBLK(loop.st_mode)
    )


HOSTILE: list[Hostile] = [
    Hostile("dotdot", lambda box: _tar(lambda b: b.file("../sentinel/pwned")), UnsafeContent),
    Hostile("dotdot-deep", lambda box: _tar(lambda b: b.file("a/../../escape/x")), UnsafeContent),
    Hostile(
        "absolute-dotdot", lambda box: _tar(lambda b: b.file("/../../escape/x")), UnsafeContent
    ),
    Hostile(
        "absolute-is-relative",
        lambda box: _tar(lambda b: b.file(f"{box}/escape/x", b"in")),
        None,
        check=lambda box: (
            _no_file("escape/x")(box) and (box / f"dest{box}/escape/x").read_bytes() == b"in"
        ),
    ),
    # Symlinks met in parent components resolve inside dest, as if dest were "/".
    Hostile(
        "symlink-parent-absolute",
        lambda box: _tar(lambda b: b.symlink("link", f"{box}/escape").file("link/file")),
        None,
        check=_inside("{box}/escape/file"),
    ),
    Hostile(
        "symlink-parent-relative",
        lambda box: _tar(lambda b: b.symlink("link", "../escape").file("link/file")),
        None,
        check=_inside("escape/file"),
    ),
    Hostile(
        "symlink-parent-from-lower-layer",
        lambda box: _tar(lambda b: b.file("link/file")),
        None,
        lower=_symlink_to("{box}/escape"),
        check=_inside("{box}/escape/file"),
    ),
    Hostile(
        "symlink-dotdot-chain",
        lambda box: _tar(
            lambda b: b.symlink("a", "..").symlink("c", "a/..").file("a/a/escape/x").file("c/x")
        ),
        None,
        check=_inside("escape/x", "x"),
    ),
    Hostile(
        "symlink-to-host-etc",
        lambda box: _tar(lambda b: b.symlink("link", "/etc").file("link/passwd", b"pwned")),
        None,
        check=lambda box: (box / "dest/etc/passwd").read_bytes() == b"pwned",
    ),
    Hostile(
        "symlink-to-slash-then-shadow",
        lambda box: _tar(lambda b: b.symlink("link", "/").file("link/etc/shadow", b"pwned")),
        None,
        check=lambda box: (box / "dest/etc/shadow").read_bytes() == b"pwned",
    ),
    Hostile(
        "symlink-dotdot-clamped",
        lambda box: _tar(lambda b: b.symlink("link", "../../..").file("link/x", b"in")),
        None,
        check=_inside("x"),
    ),
    Hostile(
        "symlink-to-box-then-sentinel",
        lambda box: _tar(lambda b: b.symlink("link", f"{box}").file("link/sentinel/keep", b"!")),
        None,
        # the real sentinel is unchanged (checked for every case); the write landed inside
        check=lambda box: (box / f"dest{box}/sentinel/keep").read_bytes() == b"!",
    ),
    Hostile(
        "symlink-through-proc-magic-link",
        lambda box: _tar(
            lambda b: b.symlink("link", f"/proc/self/root{box}/escape").file("link/x", b"in")
        ),
        None,
        check=_inside("proc/self/root{box}/escape/x"),
    ),
    Hostile(
        "symlink-nested-escape-in-target",
        lambda box: _tar(
            lambda b: (
                b.dir("a/b")
                .symlink("a/b/up", "../../../../..")
                .symlink("l", "a/b/up/escape")
                .file("l/x", b"in")
            )
        ),
        None,
        check=_inside("escape/x"),
    ),
    Hostile(
        "symlink-loop",
        lambda box: _tar(lambda b: b.symlink("a", "b").symlink("b", "a").file("a/x")),
        UnsafeContent,
    ),
    Hostile(
        "symlink-self-loop",
        lambda box: _tar(lambda b: b.symlink("a", "./a/").file("a/x")),
        UnsafeContent,
    ),
    Hostile("symlink-chain-too-long", lambda box: _tar(_link_chain(256)), UnsafeContent),
    Hostile(
        "parent-is-a-file",
        lambda box: _tar(lambda b: b.file("f", b"x").symlink("l", "f").file("l/x")),
        UnsafeContent,
    ),
    Hostile(
        "symlink-dot-then-dotdot",
        lambda box: _tar(lambda b: b.symlink("b", ".").file("b/../../escape/x")),
        UnsafeContent,
        check=_no_file("escape/x"),
    ),
    Hostile(
        "symlink-entry-may-point-anywhere",
        lambda box: _tar(lambda b: b.symlink("shadow", "/etc/shadow").symlink("up", "../..")),
        None,
        check=lambda box: os.readlink(box / "dest/up") == "../..",
    ),
    Hostile(
        "hardlink-to-host-file",
        lambda box: _tar(lambda b: b.hardlink("pw", f"{box}/sentinel/keep")),
        UnsafeContent,
    ),
    Hostile(
        "hardlink-dotdot", lambda box: _tar(lambda b: b.hardlink("pw", "../../x")), UnsafeContent
    ),
    Hostile(
        "hardlink-dotdot-into-sentinel",
        lambda box: _tar(lambda b: b.hardlink("pw", "../sentinel/keep")),
        UnsafeContent,
    ),
    Hostile(
        "hardlink-through-symlink",
        lambda box: _tar(lambda b: b.symlink("l", f"{box}/sentinel").hardlink("pw", "l/keep")),
        UnsafeContent,
    ),
    Hostile(
        "hardlink-to-directory",
        lambda box: _tar(lambda b: b.dir("d").hardlink("pw", "d")),
        UnsafeContent,
    ),
    Hostile(
        "whiteout-dotdot", lambda box: _tar(lambda b: b.file("../.wh.sentinel")), UnsafeContent
    ),
    Hostile("whiteout-named-dotdot", lambda box: _tar(lambda b: b.file(".wh..")), UnsafeContent),
    Hostile("whiteout-named-dot", lambda box: _tar(lambda b: b.file("d/.wh..")), UnsafeContent),
    Hostile(
        "whiteout-escaping-path",
        lambda box: _tar(lambda b: b.file("a/../../sentinel/.wh.keep")),
        UnsafeContent,
    ),
    Hostile(
        "whiteout-through-symlink",
        lambda box: _tar(lambda b: b.file("link/.wh.keep")),
        None,
        lower=_symlink_to("{box}/sentinel"),
        check=lambda box: os.path.islink(box / "dest/link"),
    ),
    Hostile(
        "opaque-through-symlink",
        lambda box: _tar(lambda b: b.opaque("link")),
        None,
        lower=_symlink_to("{box}/sentinel"),
        check=lambda box: os.path.islink(box / "dest/link"),
    ),
    Hostile(
        "whiteout-through-escaping-link-acts-inside",
        lambda box: _tar(lambda b: b.file("up/sentinel/.wh.keep")),
        None,
        lower=lambda box: _tar(
            lambda b: b.symlink("up", "../..").dir("sentinel").file("sentinel/keep", b"k")
        ),
        check=_whited_inside,
    ),
    Hostile(
        "hardlink-through-escaping-link",
        lambda box: _tar(lambda b: b.symlink("up", "../..").hardlink("pw", "up/sentinel/keep")),
        UnsafeContent,
    ),
    Hostile(
        "device-nodes",
        lambda box: _tar(lambda b: b.chardev("dev/null").blockdev("dev/loop0").fifo("dev/fifo")),
        None,
        check=_devices_inside,
    ),
    Hostile(
        "duplicate-file-over-outside-symlink",
        lambda box: _tar(
            lambda b: b.symlink("x", f"{box}/sentinel/keep").file("x", b"new", mode=0o600)
        ),
        None,
        check=lambda box: (box / "dest/x").read_bytes() == b"new",
    ),
    Hostile(
        "duplicate-dir-over-outside-symlink",
        lambda box: _tar(lambda b: b.symlink("d", f"{box}/escape").dir("d", mode=0o700)),
        None,
        check=lambda box: os.path.isdir(box / "dest/d") and not os.path.islink(box / "dest/d"),
    ),
    Hostile(
        "duplicate-dir-then-symlink-then-child",
        lambda box: _tar(lambda b: b.dir("d").symlink("d", f"{box}/escape").file("d/f")),
        None,
        check=_inside("{box}/escape/f"),
    ),
    Hostile(
        "deferred-dir-mode-after-parent-became-symlink",
        lambda box: _tar(lambda b: b.dir("x").dir("x/sentinel", mode=0o700).symlink("x", f"{box}")),
        None,
        check=lambda box: os.readlink(box / "dest/x") == str(box),
    ),
    Hostile(
        "huge-extended-header",
        lambda box: _tar(lambda b: b.file("f", pax_headers={"comment": "x" * (2 << 20)})),
        UnsafeContent,
    ),
    Hostile(
        "absurd-mtime",
        lambda box: _tar(lambda b: b.file("f", pax_headers={"mtime": "1e300"})),
        UnsafeContent,
    ),
    Hostile("replace-root", lambda box: _tar(lambda b: b.file(".")), UnsafeContent),
    Hostile("name-too-long", lambda box: _tar(lambda b: b.file("a" * 300)), UnsafeContent),
    Hostile(
        "decompression-bomb",
        lambda box: _big_zero_layer(),
        UnsafeContent,
        media_type="application/vnd.oci.image.layer.v1.tar+gzip",
        max_bytes=10 << 20,
        # refused before writing (the entry declares 50 MB) or cut off by the stream meter
        check=lambda box: (
            not os.path.lexists(box / "dest/zeros")
            or os.path.getsize(box / "dest/zeros") <= 11 << 20
        ),
    ),
    Hostile(
        "truncated-in-content",
        lambda box: _tar(lambda b: b.file("a", os.urandom(5000)))[:3000],
        DataLoss,
    ),
    Hostile(
        "truncated-in-header",
        lambda box: _tar(lambda b: b.file("a", b"x").file("b", b"y"))[: 1024 + 300],
        DataLoss,
    ),
    Hostile("corrupt-header", _corrupt_header, DataLoss),
    Hostile("not-a-tar", lambda box: os.urandom(4096), DataLoss),
    Hostile("empty-blob", lambda box: b"", DataLoss),
    Hostile(
        "corrupt-gzip",
        _corrupt_gzip,
        DataLoss,
        media_type="application/vnd.oci.image.layer.v1.tar+gzip",
    ),
    Hostile(
        "truncated-gzip",
        lambda box: gzipped(_tar(lambda b: b.file("f", os.urandom(20000))))[:-100],
        DataLoss,
        media_type="application/vnd.oci.image.layer.v1.tar+gzip",
    ),
    Hostile(
        "truncated-zstd",
        lambda box: zstded(_tar(lambda b: b.file("f", os.urandom(20000))))[:-100],
        DataLoss,
        media_type="application/vnd.oci.image.layer.v1.tar+zstd",
    ),
]


def _sparse_bomb(box: Path) -> bytes:
    """A PAX (GNU 0.1) sparse entry: 10 data bytes that expand to 200 MiB of zeros."""
    sparse = {
        "GNU.sparse.map": "0,10",
        "GNU.sparse.size": str(200 << 20),
        "GNU.sparse.numblocks": "1",
    }
    return _tar(lambda b: b.file("sparse", b"x" * 10, pax_headers=sparse))


def _no_xattr(rel: str, name: str) -> Callable[[Path], bool]:
    def check(box: Path) -> bool:
        try:
            os.getxattr(box / rel, name)
        except OSError:
            return True
        return False

    return check


def _is(kind: Callable[[int], bool], rel: str) -> Callable[[Path], bool]:
    return lambda box: os.path.lexists(box / rel) and kind(os.lstat(box / rel).st_mode)


# Cases added for the hostile-input suite (issue 6): metadata changes aimed at host files
# through symlinks, whiteout tricks on symlinks, a symlinked parent replaced later in the
# same layer, and a sparse-file size bomb.
HOSTILE_EXTRA: list[Hostile] = [
    Hostile(
        "file-over-lower-symlink-to-host-file",
        lambda box: _tar(lambda b: b.file("link", b"new", mode=0o4777, uid=1234, mtime=1)),
        None,
        lower=_symlink_to("{box}/sentinel/keep"),
        check=lambda box: (box / "dest/link").read_bytes() == b"new",
    ),
    Hostile(
        "dir-over-lower-symlink-to-host-dir",
        lambda box: _tar(lambda b: b.dir("link", mode=0o777, uid=1234, mtime=1)),
        None,
        lower=_symlink_to("{box}/sentinel"),
        check=_is(stat.S_ISDIR, "dest/link"),
    ),
    Hostile(
        "xattr-on-symlink-to-host-file",
        lambda box: _tar(
            lambda b: b.symlink(
                "link", f"{box}/sentinel/keep", pax_headers={"SCHILY.xattr.user.pwn": "1"}
            )
        ),
        FailedPrecondition,
        check=_no_xattr("sentinel/keep", "user.pwn"),
    ),
    Hostile(
        "mtime-on-symlink-to-host-file",
        lambda box: _tar(lambda b: b.symlink("link", f"{box}/sentinel/keep", mtime=1)),
        None,
        check=_is(stat.S_ISLNK, "dest/link"),
    ),
    Hostile(
        "hardlink-to-symlink-to-host-file",
        lambda box: _tar(
            lambda b: b.symlink("l", f"{box}/sentinel/keep").hardlink("h", "l").file("h", b"x")
        ),
        None,
        check=lambda box: (box / "dest/h").read_bytes() == b"x",
    ),
    Hostile(
        "opaque-on-symlink-same-layer",
        lambda box: _tar(lambda b: b.symlink("link", f"{box}/sentinel").opaque("link")),
        None,
        check=_is(stat.S_ISLNK, "dest/link"),
    ),
    Hostile(
        "whiteout-of-symlink-removes-the-link-only",
        lambda box: _tar(lambda b: b.whiteout("link")),
        None,
        lower=_symlink_to("{box}/sentinel"),
        # native: deleted; overlay: a 0/0 char device (whiteout) in its place
        check=lambda box: (
            not os.path.lexists(box / "dest/link") or _is(stat.S_ISCHR, "dest/link")(box)
        ),
    ),
    Hostile(
        "whiteout-under-symlink-to-host-dir-same-layer",
        lambda box: _tar(lambda b: b.symlink("link", f"{box}/sentinel").whiteout("link/keep")),
        None,
        check=_is(stat.S_ISLNK, "dest/link"),
    ),
    Hostile(
        "symlinked-parent-replaced-by-dir-later",
        lambda box: _tar(
            lambda b: b.symlink("d", f"{box}/escape").file("d/f").dir("d").file("d/g", b"g")
        ),
        None,
        check=lambda box: (
            _is(stat.S_ISDIR, "dest/d")(box)
            and (box / "dest/d/g").read_bytes() == b"g"
            and _inside("{box}/escape/f")(box)
        ),
    ),
    Hostile(
        "symlink-empty-target",
        lambda box: _tar(lambda b: b.symlink("l", "")),
        UnsafeContent,
    ),
    Hostile(
        "sparse-file-bomb",
        _sparse_bomb,
        UnsafeContent,
        max_bytes=10 << 20,
        check=lambda box: (
            not os.path.lexists(box / "dest/sparse")
            or os.path.getsize(box / "dest/sparse") <= 10 << 20
        ),
    ),
]
HOSTILE.extend(HOSTILE_EXTRA)


def tree_state(root: Path, skip: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """(mode, size, mtime_ns, content-or-link) of everything under root except `skip`."""
    state: dict[str, tuple[int, int, int, bytes]] = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(dirpath, d) != skip]
        for name in [*dirs, *files]:
            p = Path(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                body = p.read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(p).encode()
            else:
                body = b""
            state[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, body)
    return state


def make_box(box: Path) -> Path:
    """Create the sandbox layout of the hostile corpus; returns dest."""
    (box / "dest").mkdir(parents=True)
    (box / "sentinel").mkdir()
    (box / "sentinel" / "keep").write_bytes(b"precious")
    (box / "escape").mkdir()
    return box / "dest"
