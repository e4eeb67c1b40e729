"""The pod user namespace mappings: what is accepted, what is refused and why."""

from __future__ import annotations

from pathlib import Path

import pytest
from cri_api.v1 import api_pb2 as pb

from podling.errors import FailedPrecondition, InvalidArgument
from podling.sandbox.userns import IdRange, check_searchable, pod_user_namespace

POD, NODE = pb.NamespaceMode.POD, pb.NamespaceMode.NODE


def config(
    uids: list[tuple[int, int, int]],
    gids: list[tuple[int, int, int]] | None = None,
    mode: int = POD,
) -> pb.PodSandboxConfig:
    def maps(t: list[tuple[int, int, int]]) -> list[pb.IDMapping]:
        return [pb.IDMapping(container_id=c, host_id=h, length=n) for c, h, n in t]

    cfg = pb.PodSandboxConfig()
    opts = cfg.linux.security_context.namespace_options
    opts.userns_options.mode = mode  # type: ignore[assignment]
    opts.userns_options.uids.extend(maps(uids))
    opts.userns_options.gids.extend(maps(uids if gids is None else gids))
    return cfg


def test_no_options_or_node_mode_share_the_hosts() -> None:
    assert pod_user_namespace(pb.PodSandboxConfig()) is None
    assert pod_user_namespace(config([], mode=NODE)) is None


def test_a_pod_mapping_gives_oci_mappings_proc_maps_and_the_roots_host_ids() -> None:
    userns = pod_user_namespace(
        config([(0, 100000, 65536)], [(0, 200000, 1000), (1000, 300000, 10)])
    )
    assert userns is not None
    assert userns.root() == (100000, 200000)
    assert userns.oci()["uidMappings"] == [{"containerID": 0, "hostID": 100000, "size": 65536}]
    assert userns.gid_map() == "0 200000 1000\n1000 300000 10\n"
    assert type(userns).from_record(userns.to_record()) == userns
    assert IdRange(10, 500, 5).host_of(12) == 502
    assert IdRange(10, 500, 5).host_of(15) is None


@pytest.mark.parametrize(
    ("uids", "says"),
    [
        ([], "at least one mapping"),
        ([(0, 100000, 0)], "length must be > 0"),
        ([(0, 0, 65536)], "maps host id 0"),
        ([(1, 100000, 10)], "container id 0"),
        ([(0, 2**32 - 5, 10)], "beyond id 2^32-1"),
        ([(0, 100000, 100), (50, 300000, 100)], "container id ranges overlap at id 50"),
        ([(0, 100000, 100), (100, 100050, 100)], "host id ranges overlap at id 100050"),
    ],
)
def test_bad_mappings(uids: list[tuple[int, int, int]], says: str) -> None:
    with pytest.raises(InvalidArgument, match=r"userns_options\.uids") as e:
        pod_user_namespace(config(uids, [(0, 100000, 65536)]))
    assert says in e.value.message


def test_mode_node_with_mappings_and_host_namespaces_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="mode NODE takes no"):
        pod_user_namespace(config([(0, 100000, 10)], mode=NODE))
    cfg = config([(0, 100000, 65536)])
    cfg.linux.security_context.namespace_options.pid = NODE
    with pytest.raises(InvalidArgument, match="host's pid namespace"):
        pod_user_namespace(cfg)


def test_a_dir_others_cannot_search_is_named(tmp_path: Path) -> None:
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    (tmp_path / "a").chmod(0o700)
    # the first dir from / down that others cannot search (pytest's own temp dir is 0700)
    first = next(d for d in (*reversed(inner.parents), inner) if not d.stat().st_mode & 0o001)
    try:
        with pytest.raises(FailedPrecondition) as e:
            check_searchable(inner / "not-yet")
    finally:
        (tmp_path / "a").chmod(0o755)
    assert f"chmod o+x {first}" in e.value.message
    check_searchable(Path("/usr/bin/not-yet"))
