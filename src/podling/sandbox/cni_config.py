"""CNI (spec 1.0) data: network config lists, plugin env and stdin, results and errors.

Pure functions and value types, no I/O except reading/writing config files; cni.py runs
the plugins. Vocabulary of the spec:

- A *network configuration list* ("conflist") names a network and a chain of plugins:
  {"cniVersion", "name", "plugins": [{"type": "bridge", ...}, {"type": "portmap", ...}]}.
  A single-plugin ".conf" file is read as a list of one.
- Each plugin is an executable named by "type", found in the CNI bin dirs, run with the
  CNI_* environment and its own config on stdin: the plugin's object plus the list's
  "name" and "cniVersion", the previous plugin's result as "prevResult", and
  "runtimeConfig" for the capabilities it declares (here: "portMappings").
- A plugin answers with a result ({"interfaces", "ips", "routes", "dns"}) on stdout, or
  exits non-zero with an error {"code", "msg", "details"}.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podling.errors import FailedPrecondition, Internal, InvalidArgument, PodlingError, Unavailable

CNI_VERSION = "1.0.0"
CONFIG_SUFFIXES = (".conf", ".conflist", ".json")
DEFAULT_CONFIG_NAME = "10-podling.conflist"
# top-level conflist key of podling's default network: the subnet podling masquerades
# itself (sandbox/masquerade.py); CNI ignores keys it does not know
MASQUERADE_KEY = "podlingMasquerade"
# CNI's well-known error code for "try again later"
_TRY_AGAIN = 11


@dataclass(frozen=True)
class PortMapping:
    """A hostPort: host_ip:host_port (any host address if host_ip is "") -> container_port."""

    host_port: int
    container_port: int
    protocol: str  # "tcp" | "udp" | "sctp"
    host_ip: str = ""


@dataclass(frozen=True)
class DefaultNetwork:
    """What the conflist written when the conf dir holds none looks like."""

    bridge: str = "podling0"
    subnet: str = "10.88.0.0/16"
    name: str = "podling"


@dataclass(frozen=True)
class CniResult:
    ips: list[str]  # the pod's IPs, IPv4 first ("10.88.0.5")
    raw: dict[str, Any]  # the final result JSON of the chain


# --- config files --------------------------------------------------------------------


def find_config_file(conf_dir: Path) -> Path | None:
    """The config to use: the first .conf/.conflist/.json in name order (as the kubelet
    and containerd pick), or None."""
    if not conf_dir.is_dir():
        return None
    files = sorted(p for p in conf_dir.iterdir() if p.suffix in CONFIG_SUFFIXES and p.is_file())
    return files[0] if files else None


def load_config_list(path: Path) -> dict[str, Any]:
    """Read and check a .conflist, or a .conf/.json as a list of one plugin.

    Raises FailedPrecondition naming the file and what is wrong with it."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FailedPrecondition(f"CNI config {path} cannot be read as JSON: {e}") from e
    if not isinstance(data, dict):
        raise FailedPrecondition(f"CNI config {path} is not a JSON object")
    if "plugins" not in data:  # a single plugin's .conf
        data = {"cniVersion": data.get("cniVersion"), "name": data.get("name"), "plugins": [data]}
    return check_config_list(data, str(path))


def check_config_list(data: dict[str, Any], where: str) -> dict[str, Any]:
    """`data` if it is a usable config list, else FailedPrecondition naming `where`."""
    problem = ""
    plugins = data.get("plugins")
    if not isinstance(data.get("name"), str) or not data["name"]:
        problem = 'it has no "name"'
    elif not isinstance(data.get("cniVersion"), str):
        problem = 'it has no "cniVersion"'
    elif not isinstance(plugins, list) or not plugins:
        problem = 'its "plugins" list is empty'
    elif not all(isinstance(p, dict) and isinstance(p.get("type"), str) for p in plugins):
        problem = 'a plugin has no "type"'
    elif any("/" in p["type"] or p["type"] in ("", ".", "..") for p in plugins):
        problem = 'a plugin "type" is not a plain file name'
    if problem:
        raise FailedPrecondition(f"CNI config {where} is invalid: {problem}; fix or remove it")
    return data


def default_config_list(default: DefaultNetwork, ipam_dir: Path) -> dict[str, Any]:
    """bridge (gateway, hairpin) + host-local IPAM + portmap (hostPorts); masquerading
    by podling, one chain for the subnet (MASQUERADE_KEY, see masquerade.py), not by
    the bridge plugin's ipMasq (a chain per pod)."""
    ipam = {
        "type": "host-local",
        "ranges": [[{"subnet": default.subnet}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": str(ipam_dir),
    }
    bridge = {
        "type": "bridge",
        "bridge": default.bridge,
        "isGateway": True,
        "ipMasq": False,
        "hairpinMode": True,
        "ipam": ipam,
    }
    # snat: lets 127.0.0.1:hostPort work (masquerades localhost and sets route_localnet)
    portmap = {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}
    return {
        "cniVersion": CNI_VERSION,
        "name": default.name,
        MASQUERADE_KEY: default.subnet,
        "plugins": [bridge, portmap],
    }


def masquerade_subnet(config: Mapping[str, Any], where: str) -> str | None:
    """The subnet a config list asks podling to masquerade for (MASQUERADE_KEY), or None.
    FailedPrecondition naming `where` if it is not a subnet."""
    value = config.get(MASQUERADE_KEY)
    if value is None:
        return None
    try:
        return str(ipaddress.ip_network(str(value)))
    except ValueError as e:
        raise FailedPrecondition(f"CNI config {where}: {MASQUERADE_KEY} {value!r}: {e}") from e


def masquerade_subnets(record: Mapping[str, Any]) -> list[str]:
    """The subnets a cached pod holds a masquerade chain for (one per network)."""
    out = []
    for net in record["networks"]:
        subnet = masquerade_subnet(net["config"], f"cache of pod {record['sandbox_id']}")
        if subnet is not None:
            out.append(subnet)
    return out


def write_json(path: Path, data: Mapping[str, Any], *, durable: bool = True) -> None:
    """Write atomically (temp file + rename); with `durable`, fsync'd first, so a power
    loss cannot leave an empty file where the old one was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def plugin_types(config: Mapping[str, Any]) -> list[str]:
    """Every binary the list runs: each plugin, and the IPAM plugin it delegates to."""
    types = []
    for plugin in config["plugins"]:
        types.append(plugin["type"])
        ipam = plugin.get("ipam")
        if isinstance(ipam, dict) and isinstance(ipam.get("type"), str):
            types.append(ipam["type"])
    return types


def find_plugin(plugin_type: str, bin_dirs: Sequence[Path]) -> Path | None:
    for d in bin_dirs:
        candidate = d / plugin_type
        if candidate.is_file():
            return candidate
    return None


# --- what a plugin gets --------------------------------------------------------------


def cni_args(*, pod_namespace: str, pod_name: str, sandbox_id: str, pod_uid: str) -> str:
    """CNI_ARGS as the kubelet's runtimes pass them; IgnoreUnknown lets plugins that do not
    know the K8S_* keys accept them."""
    pairs = {
        "IgnoreUnknown": "1",
        "K8S_POD_NAMESPACE": pod_namespace,
        "K8S_POD_NAME": pod_name,
        "K8S_POD_INFRA_CONTAINER_ID": sandbox_id,
        "K8S_POD_UID": pod_uid,
    }
    for key, value in pairs.items():
        if any(c in value for c in ";=\n\0"):
            raise InvalidArgument(f"{key} {value!r} may not contain ';', '=' or newlines")
    return ";".join(f"{k}={v}" for k, v in pairs.items())


def plugin_env(
    base: Mapping[str, str],
    *,
    command: str,
    container_id: str,
    netns: str,
    ifname: str,
    bin_dirs: Sequence[Path],
    args: str,
) -> dict[str, str]:
    """`base` (the daemon's env: plugins run iptables and need PATH) plus the CNI_* vars."""
    env = {k: v for k, v in base.items() if not k.startswith("CNI_")}
    env.update(
        CNI_COMMAND=command,
        CNI_CONTAINERID=container_id,
        CNI_NETNS=netns,
        CNI_IFNAME=ifname,
        CNI_PATH=":".join(str(d) for d in bin_dirs),
        CNI_ARGS=args,
    )
    return env


def runtime_config(port_mappings: Sequence[PortMapping]) -> dict[str, Any]:
    """Capability name -> value; mappings without a host port are not hostPorts."""
    maps = []
    for pm in port_mappings:
        if pm.host_port <= 0:
            continue
        if pm.protocol not in ("tcp", "udp", "sctp"):
            raise InvalidArgument(f"port mapping protocol {pm.protocol!r}: use tcp, udp or sctp")
        entry: dict[str, Any] = {
            "hostPort": pm.host_port,
            "containerPort": pm.container_port,
            "protocol": pm.protocol,
        }
        if pm.host_ip:
            entry["hostIP"] = pm.host_ip
        maps.append(entry)
    return {"portMappings": maps} if maps else {}


def plugin_stdin(
    config: Mapping[str, Any],
    plugin: Mapping[str, Any],
    prev_result: Mapping[str, Any] | None,
    runtime: Mapping[str, Any],
) -> bytes:
    """The plugin's own config plus the list's name/cniVersion, prevResult, and
    runtimeConfig for the capabilities the plugin declares."""
    conf = dict(plugin)
    conf["name"] = config["name"]
    conf["cniVersion"] = config["cniVersion"]
    if prev_result is not None:
        conf["prevResult"] = prev_result
    caps = plugin.get("capabilities") or {}
    wanted = {k: v for k, v in runtime.items() if caps.get(k) is True}
    if wanted:
        conf["runtimeConfig"] = wanted
    return json.dumps(conf).encode()


# --- what a plugin answers -----------------------------------------------------------


def parse_result(stdout: bytes, plugin_type: str, command: str) -> dict[str, Any]:
    """A plugin's result JSON; DEL and CHECK may print nothing ({})."""
    text = stdout.decode(errors="replace").strip()
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        raise Internal(
            f"CNI plugin {plugin_type} {command} printed no JSON: {text[:200]}"
        ) from None
    if not isinstance(data, dict):
        raise Internal(f"CNI plugin {plugin_type} {command} printed {text[:200]}, not an object")
    return data


def pod_ips(result: Mapping[str, Any], ifname: str) -> list[str]:
    """The pod's IPs (no prefix length), IPv4 first: those on `ifname` inside the sandbox
    when the result says which interface each IP is on, else every IP in the result.
    Understands results of spec 0.3+ ("ips") and 0.2 ("ip4"/"ip6")."""
    ifaces = result.get("interfaces") or []
    addrs: list[str] = []
    for entry in result.get("ips") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("address"), str):
            continue
        idx = entry.get("interface")
        if isinstance(idx, int) and 0 <= idx < len(ifaces):
            iface = ifaces[idx]
            if not iface.get("sandbox") or iface.get("name") not in (None, ifname):
                continue
        addrs.append(entry["address"])
    for key in ("ip4", "ip6"):
        if isinstance(result.get(key), dict) and "ip" in result[key]:
            addrs.append(result[key]["ip"])
    try:
        ips = [ipaddress.ip_interface(a).ip for a in addrs]
    except ValueError as e:
        raise Internal(f"CNI result holds a malformed IP address: {e}") from None
    ordered = [ip for ip in ips if ip.version == 4] + [ip for ip in ips if ip.version == 6]
    return list(dict.fromkeys(str(ip) for ip in ordered))


def plugin_error(
    plugin_type: str, command: str, returncode: int, stdout: bytes, stderr: bytes
) -> PodlingError:
    """The error a failed plugin run becomes: its {code, msg, details} when it printed
    one (code 11, "try again later", is Unavailable), else its stderr; Internal."""
    head = f"CNI plugin {plugin_type} {command} failed"
    try:
        data = json.loads(stdout.decode(errors="replace"))
    except ValueError:
        data = None
    if isinstance(data, dict) and ("msg" in data or "code" in data):
        text = f"{head} (code {data.get('code')}): {data.get('msg', '')}"
        if data.get("details"):
            text += f": {data['details']}"
        return Unavailable(text) if data.get("code") == _TRY_AGAIN else Internal(text)
    err = stderr.decode(errors="replace").strip() or stdout.decode(errors="replace").strip()
    return Internal(f"{head} (exit status {returncode}): {err[:2000] or 'no output'}")


def sandbox_addresses(result: Mapping[str, Any], ifname: str) -> dict[str, list[str]]:
    """Interface name -> its addresses with prefix ("10.88.0.5/16"), for the interfaces
    inside the sandbox; IPs the result does not tie to an interface count as `ifname`'s."""
    ifaces = result.get("interfaces") or []
    found: dict[str, list[str]] = {}
    for entry in result.get("ips") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("address"), str):
            continue
        name = ifname
        idx = entry.get("interface")
        if isinstance(idx, int) and 0 <= idx < len(ifaces):
            if not ifaces[idx].get("sandbox"):
                continue
            name = str(ifaces[idx].get("name") or ifname)
        found.setdefault(name, []).append(entry["address"])
    return found


def passes_prev_result_on_del(cni_version: str) -> bool:
    """Spec 0.4.0 and later hand DEL the cached ADD result as prevResult; older ones not."""
    try:
        parts = tuple(int(x) for x in cni_version.split(".")[:3])
    except ValueError:
        return True
    return parts >= (0, 4, 0)
