"""The container's process: args, env, cwd, user and stop signal (Docker/containerd rules).

- args: CRI `command` replaces the image Entrypoint and CRI `args` replace the image Cmd;
  a `command` without `args` drops the image Cmd too (Kubernetes semantics).
- env: the image Env, then the CRI envs override by key, keeping the first position of
  each key; PATH gets a default when absent, HOSTNAME the pod's hostname.
- cwd: CRI working_dir, else the image WorkingDir, else "/"; must be absolute.
- user: see `resolve_user`.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from cri_api.v1 import api_pb2 as pb

from podling.errors import InvalidArgument
from podling.runtimes.spec_types import PodContext
from podling.runtimes.users import ResolvedUser, RootfsUsers, merge_gids, resolve_image_user

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _str_list(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"image config {field} must be a list of strings, got {value!r}")
    return list(value)


def process_args(config: pb.ContainerConfig, image: dict[str, Any]) -> list[str]:
    """argv of the container process; InvalidArgument if it comes out empty."""
    entrypoint = _str_list(image.get("Entrypoint"), "Entrypoint")
    cmd = _str_list(image.get("Cmd"), "Cmd")
    if config.command:
        args = [*config.command, *config.args]
    elif config.args:
        args = [*entrypoint, *config.args]
    else:
        args = [*entrypoint, *cmd]
    if not args:
        raise InvalidArgument(
            "no command specified: the image has no Entrypoint/Cmd and the container config "
            "gives none"
        )
    return args


def _check_env_key(key: str, where: str) -> None:
    if not key or "=" in key:
        raise InvalidArgument(f"{where}: environment variable name {key!r} is empty or has '='")


def process_env(config: pb.ContainerConfig, image: dict[str, Any], hostname: str) -> list[str]:
    """KEY=VALUE list: image Env overridden by CRI envs, plus PATH and HOSTNAME defaults."""
    env: dict[str, str] = {}
    for item in _str_list(image.get("Env"), "Env"):
        key, _, value = item.partition("=")
        if key:  # an image entry without a name is useless; skip it as Docker does
            env[key] = value
    for i, kv in enumerate(config.envs):
        _check_env_key(kv.key, f"envs[{i}].key")
        env[kv.key] = kv.value
    env.setdefault("PATH", DEFAULT_PATH)
    if hostname:
        env.setdefault("HOSTNAME", hostname)
    return [f"{k}={v}" for k, v in env.items()]


def pod_hostname(pod: PodContext) -> str:
    """The pod's hostname: from its config, else (host network) the pod's hostname file."""
    if pod.config.hostname:
        return pod.config.hostname
    try:
        return pod.hostname_file.read_text().strip()
    except OSError:
        return ""


def process_cwd(config: pb.ContainerConfig, image: dict[str, Any]) -> str:
    if config.working_dir:
        cwd, field = config.working_dir, "working_dir"
    else:
        cwd, field = image.get("WorkingDir") or "/", "image config WorkingDir"
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        raise InvalidArgument(f"{field} {cwd!r} must be an absolute path")
    return cwd


def resolve_user(
    sc: pb.LinuxContainerSecurityContext, image_user: str, rootfs: Path
) -> ResolvedUser:
    """uid, gid and additional gids of the process.

    run_as_user (a uid, need not exist in the image) or run_as_username (must exist in the
    image's /etc/passwd) win over the image's User. run_as_group overrides the gid and
    needs one of them (CRI: "otherwise, the runtime MUST error"). Additional gids: the
    primary gid, the /etc/group memberships of the user's name (unless the image gave an
    explicit group, or the policy is Strict), then supplemental_groups.
    """
    users = RootfsUsers(rootfs)
    has_uid = sc.HasField("run_as_user")
    if has_uid and sc.run_as_username:
        raise InvalidArgument("only one of run_as_user and run_as_username may be set")
    if sc.HasField("run_as_group") and not (has_uid or sc.run_as_username):
        raise InvalidArgument("run_as_group needs run_as_user or run_as_username")
    explicit_group = False
    if has_uid:
        uid, gid, name = _by_uid(users, sc.run_as_user.value)
    elif sc.run_as_username:
        uid, gid, name = _by_username(users, sc.run_as_username)
    else:
        uid, gid, name, explicit_group = resolve_image_user(users, image_user)
    if sc.HasField("run_as_group"):
        gid = _check_id(sc.run_as_group.value, "run_as_group")
    memberships: list[int] = []
    if name and not explicit_group and sc.supplemental_groups_policy != pb.Strict:
        memberships = users.member_gids(name)
    extra = [_check_id(g, "supplemental_groups") for g in sc.supplemental_groups]
    return ResolvedUser(uid, gid, merge_gids(gid, memberships, extra), name)


def _check_id(value: int, field: str) -> int:
    if not 0 <= value < 2**32 - 1:
        raise InvalidArgument(f"{field} {value} is not a valid id (0..4294967294)")
    return value


def _by_uid(users: RootfsUsers, uid: int) -> tuple[int, int, str]:
    uid = _check_id(uid, "run_as_user")
    entry = users.by_uid(uid)
    return uid, entry.gid if entry else 0, entry.name if entry else ""


def _by_username(users: RootfsUsers, name: str) -> tuple[int, int, str]:
    entry = users.by_name(name)
    if entry is None:
        raise InvalidArgument(f"run_as_username {name!r} does not exist in the image's /etc/passwd")
    return entry.uid, entry.gid, entry.name


def _signal_name(raw: str) -> str | None:
    """Normalise "KILL", "SIGKILL", "9", "SIGRTMIN+3" to "SIGKILL"/"SIGRTMIN+3"; None if bad."""
    text = raw.strip().upper()
    if text.isdigit():
        try:
            return signal.Signals(int(text)).name
        except ValueError:
            return None
    name = text if text.startswith("SIG") else "SIG" + text
    if name.startswith(("SIGRTMIN", "SIGRTMAX")):
        return name
    return name if name in signal.Signals.__members__ else None


def _cri_signal(value: int) -> str:
    name = pb.Signal.Name(value)  # type: ignore[arg-type]
    return name.replace("PLUS", "+").replace("MINUS", "-")


def stop_signal(config: pb.ContainerConfig, image: dict[str, Any], warnings: list[str]) -> str:
    """The CRI stop_signal if set, else the image StopSignal, else SIGTERM."""
    if config.stop_signal != pb.RUNTIME_DEFAULT:
        return _cri_signal(config.stop_signal)
    raw = image.get("StopSignal")
    if not raw:
        return "SIGTERM"
    name = _signal_name(str(raw))
    if name is None:
        warnings.append(f"image config StopSignal {raw!r} is not a signal; using SIGTERM")
        return "SIGTERM"
    return name
