"""Capabilities, users and groups of a container on each runtime handler, checked from
inside the container (/proc/self/status, id), and every refusal."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2 as pb

from tests.integration.pod_fixtures import PodEnv
from tests.integration.security_pods import (  # noqa: F401 - the fixtures
    Pod,
    daemon_pid,
    groups_image_fixture,
    handler_fixture,
    own_status,
    pod_fixture,
)

pytestmark = pytest.mark.root
BRIDGE, SUBNET = "plsecA0", "10.93.8.0/24"
# Docker's and containerd's default capability set, as a CapEff mask
DEFAULT_CAPS = 0xA80425FB
CAP_NET_ADMIN = 1 << 12
CAP_BPF = 1 << 39
GVISOR_CAPS = (1 << 38) - 1  # runsc 2022-12 knows the capabilities up to CAP_AUDIT_READ


def caps(pod: Pod, cid: str, field: str) -> int:
    return int(pod.status_field(cid, field), 16)


def test_capability_sets(pod: Pod) -> None:
    default = pod.run()
    assert caps(pod, default, "CapEff") == DEFAULT_CAPS
    assert caps(pod, default, "CapBnd") == DEFAULT_CAPS
    assert caps(pod, default, "CapInh") == 0
    added = pod.run(capabilities=pb.Capability(add_capabilities=["NET_ADMIN"]))
    assert caps(pod, added, "CapEff") == DEFAULT_CAPS | CAP_NET_ADMIN
    if pod.gvisor:
        # gVisor's host network (runsc --network=host) cannot configure interfaces at all
        for cid in (added, default):
            r = pod.sh(cid, "ip link set lo down")
            assert r.exit_code != 0 and b"Inappropriate ioctl" in r.stderr
    else:
        # NET_ADMIN really works: the pod's own network namespace lets it take lo down
        # and up (a default container gets "Operation not permitted")
        assert pod.sh(added, "ip link set lo down && ip link set lo up").exit_code == 0
        assert b"not permitted" in pod.sh(default, "ip link set lo down").stderr
    none = pod.run(capabilities=pb.Capability(drop_capabilities=["ALL"]))
    assert caps(pod, none, "CapEff") == 0
    assert caps(pod, none, "CapBnd") == 0
    # root without CAP_DAC_OVERRIDE cannot read a file only its owner may read
    unreadable = pod.sh(none, "echo x > /tmp/f && chmod 0 /tmp/f && cat /tmp/f")
    assert unreadable.exit_code != 0 and b"Permission denied" in unreadable.stderr
    privileged = pod.run(privileged=True)
    mine = int(own_status(daemon_pid(pod.d), "CapEff"), 16)
    if pod.gvisor:  # every capability runsc knows of those podlingd holds
        mine &= GVISOR_CAPS
    assert caps(pod, privileged, "CapEff") == mine
    assert caps(pod, privileged, "CapBnd") == mine


def test_capabilities_newer_than_the_handler(pod: Pod) -> None:
    """CAP_BPF (39) is unknown to runsc 2022-12: refused by name there, granted elsewhere."""
    add_bpf = pb.Capability(add_capabilities=["BPF"])
    if pod.gvisor:
        err = pod.refuse(capabilities=add_bpf)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (
            "runtime handler 'runsc' (gVisor) does not support capabilities CAP_BPF "
            "(capabilities.add_capabilities)" in err.details()
        )
        everything = pod.run(capabilities=pb.Capability(add_capabilities=["ALL"]))
        assert caps(pod, everything, "CapEff") == GVISOR_CAPS & _held(pod)
    else:
        assert caps(pod, pod.run(capabilities=add_bpf), "CapEff") == DEFAULT_CAPS | CAP_BPF


def _held(pod: Pod) -> int:
    return int(own_status(daemon_pid(pod.d), "CapEff"), 16)


def test_capability_refusals(pod: Pod) -> None:
    bogus = pod.refuse(capabilities=pb.Capability(add_capabilities=["CAP_BOGUS"]))
    assert bogus.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "capabilities.add_capabilities: unknown capability 'CAP_BOGUS'" in bogus.details()
    eff = int(own_status(daemon_pid(pod.d), "CapEff"), 16)
    if eff & (1 << 24):
        pytest.skip("podlingd holds CAP_SYS_RESOURCE here: nothing to refuse")
    lacking = pod.refuse(capabilities=pb.Capability(add_capabilities=["SYS_RESOURCE"]))
    assert lacking.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "capabilities CAP_SYS_RESOURCE are not available on this node" in lacking.details()


def _id(pod: Pod, cid: str) -> tuple[int, int, set[int]]:
    uid, gid, groups = pod.out(cid, "id -u; id -g; id -G").split("\n")
    return int(uid), int(gid), {int(g) for g in groups.split()}


U = pb.Int64Value
USER_CASES: list[tuple[dict[str, Any], tuple[int, int, set[int]]]] = [
    ({}, (0, 0, {0})),
    ({"run_as_user": U(value=1000)}, (1000, 1000, {1000, 10, 29})),
    ({"run_as_username": "nobody"}, (65534, 65534, {65534, 29})),
    ({"run_as_user": U(value=1000), "run_as_group": U(value=4000)}, (1000, 4000, {4000, 10, 29})),
    ({"run_as_user": U(value=1234)}, (1234, 0, {0})),  # not in /etc/passwd: gid 0
    (
        {"run_as_username": "app", "supplemental_groups": [4242]},  # Merge, the default
        (1000, 1000, {1000, 10, 29, 4242}),
    ),
    (
        {
            "run_as_username": "app",
            "supplemental_groups": [4242],
            "supplemental_groups_policy": pb.SupplementalGroupsPolicy.Strict,
        },
        (1000, 1000, {1000, 4242}),  # the image's /etc/group memberships are left out
    ),
]


def test_users_and_supplemental_groups(pod: Pod) -> None:
    for sc, expected in USER_CASES:
        cid = pod.run(**sc)
        assert _id(pod, cid) == expected, sc
        # the kernel's view agrees with id's: real, effective, saved and fs ids
        uid, gid, _ = expected
        assert pod.status_field(cid, "Uid").split() == [str(uid)] * 4, sc
        assert pod.status_field(cid, "Gid").split() == [str(gid)] * 4, sc


def test_status_announces_the_supplemental_groups_policy(clean: PodEnv) -> None:
    """The kubelet only sends Strict to a runtime whose Status says it implements it."""
    st = clean.daemon.runtime.Status(pb.StatusRequest())
    assert st.HasField("features") and st.features.supplemental_groups_policy is True


def test_user_refusals(pod: Pod) -> None:
    ghost = pod.refuse(run_as_username="ghost")
    assert ghost.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "run_as_username 'ghost' does not exist in the image's /etc/passwd" in ghost.details()
    group_only = pod.refuse(run_as_group=U(value=5))
    assert group_only.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "run_as_group needs run_as_user or run_as_username" in group_only.details()
    both = pod.refuse(run_as_user=U(value=1), run_as_username="app")
    assert both.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "only one of run_as_user and run_as_username may be set" in both.details()
