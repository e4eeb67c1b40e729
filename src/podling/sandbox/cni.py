"""Wire a pod's network namespace with CNI plugin chains (spec 1.0), as containerd does.

Lifecycle of one pod (`sandbox_id`):

- add(): the configured network (the first config file in the conf dir, a default
  bridge network written if there is none) on "eth0". "lo" is not CNI's: the namespace
  pinning sets it up (sandbox/namespaces.py), which saves a loopback plugin process per
  ADD and per DEL. Caches written by older versions list a loopback network; delete()
  still runs what a cache lists. Before any plugin runs, the exact config lists,
  CNI_ARGS and runtime config are cached in <cache_dir>/<sandbox_id>.json; each result
  is added to it. A failed add runs
  DEL for everything and removes the cache: nothing is left.
- delete(): DEL in reverse order, with the cached configs and results (so a changed conf
  dir does not matter), then the cache goes. No cache: nothing to do (idempotent).
  The netns may be gone: plugins then get an empty CNI_NETNS, which the spec allows. The
  bridge plugin, though, only removes its masquerade rules for the addresses it finds on
  the interface inside the netns; so when the netns is gone we replay the interface and
  its cached addresses in a scratch netns for the DEL, and the rules go too.

Plugins run as asyncio subprocesses with a timeout (DeadlineExceeded).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from podling.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    PodlingError,
    Unavailable,
)
from podling.sandbox import namespaces, portmap
from podling.sandbox.cni_config import (
    DEFAULT_CONFIG_NAME,
    CniResult,
    DefaultNetwork,
    PortMapping,
    cni_args,
    default_config_list,
    find_config_file,
    find_plugin,
    load_config_list,
    masquerade_subnet,
    masquerade_subnets,
    parse_result,
    passes_prev_result_on_del,
    plugin_env,
    plugin_error,
    plugin_stdin,
    plugin_types,
    pod_ips,
    runtime_config,
    write_json,
)
from podling.sandbox.cni_scratch import scratch_netns
from podling.sandbox.masquerade import Masquerade

__all__ = ["CniManager", "CniResult", "DefaultNetwork", "PortMapping"]

log = logging.getLogger(__name__)

POD_IFNAME = "eth0"
_CACHE_VERSION = 1
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class CniManager:
    """Runs CNI plugin chains for pods. Owns conf_dir's default config, cache_dir (one
    JSON file per pod with networking set up) and, through host-local, ipam_dir."""

    def __init__(
        self,
        conf_dir: Path,
        bin_dirs: Sequence[Path],
        cache_dir: Path,
        ipam_dir: Path,
        default: DefaultNetwork,
        *,
        timeout: float = 60.0,
        environ: Mapping[str, str] | None = None,
        masquerade: Masquerade | None = None,
    ) -> None:
        self._conf_dir = conf_dir
        self._bin_dirs = list(bin_dirs)
        self._cache_dir = cache_dir
        self._ipam_dir = ipam_dir
        self._default = default
        self._timeout = timeout
        self._environ = dict(os.environ if environ is None else environ)
        self._masquerade = masquerade or Masquerade()

    async def start(self) -> None:
        """At daemon start, before any add or delete: the masquerade chains of podling's
        default network made to match the pods that have networking (masquerade.py)."""
        held, own = await asyncio.to_thread(self._masquerading)
        await self._masquerade.start(held, own)

    def _masquerading(self) -> tuple[list[str], str | None]:
        """Every subnet a cached pod holds (once per pod), and the config in use's."""
        held, own = [], None
        for cached in sorted(self._cache_dir.glob("*.json")):
            try:
                record = self._read_cache(cached.stem)
            except PodlingError as e:
                log.warning("%s", e.message)
                continue
            held += masquerade_subnets(record) if record else []
        conf = find_config_file(self._conf_dir)
        with contextlib.suppress(PodlingError):  # a bad config is reported by Status
            own = masquerade_subnet(load_config_list(conf), str(conf)) if conf else None
        return held, own

    # --- config ----------------------------------------------------------------------

    def ensure_config(self) -> Path:
        """The config file to use: the first in name order in conf_dir; if there is none,
        the default network is written there first (and logged)."""
        found = find_config_file(self._conf_dir)
        if found is not None:
            return found
        d = self._default
        try:
            ipaddress.ip_network(d.subnet)
        except ValueError as e:
            raise FailedPrecondition(f"default CNI network subnet {d.subnet!r}: {e}") from e
        if not 0 < len(d.bridge) <= 15:
            raise FailedPrecondition(f"bridge name {d.bridge!r} must have 1 to 15 characters")
        path = self._conf_dir / DEFAULT_CONFIG_NAME
        write_json(path, default_config_list(d, self._ipam_dir))
        log.info(
            "no CNI network config in %s: wrote the default network %r (bridge %s, subnet %s)"
            " to %s",
            self._conf_dir,
            d.name,
            d.bridge,
            d.subnet,
            path,
        )
        return path

    def status(self) -> tuple[bool, str]:
        """(ready, message): ready when a valid config exists and all its plugins are
        installed; the message names what is missing."""
        path = find_config_file(self._conf_dir)
        if path is None:
            return False, f"no CNI network config in {self._conf_dir}"
        try:
            config = load_config_list(path)
        except PodlingError as e:
            return False, e.message
        missing = self._missing(plugin_types(config))
        if missing:
            dirs = ", ".join(str(d) for d in self._bin_dirs)
            return False, f"CNI plugin binaries missing from {dirs}: {', '.join(missing)}"
        return True, f"CNI network {config['name']!r} from {path}"

    def _missing(self, types: Sequence[str]) -> list[str]:
        missing = [t for t in types if find_plugin(t, self._bin_dirs) is None]
        return list(dict.fromkeys(missing))

    # --- add / delete ----------------------------------------------------------------

    async def add(
        self,
        sandbox_id: str,
        netns: Path,
        *,
        pod_name: str,
        pod_namespace: str,
        pod_uid: str,
        port_mappings: Sequence[PortMapping],
    ) -> CniResult:
        """Set up lo and eth0 in `netns`; returns the pod IPs. Raises Unavailable (plugin
        binary missing: nothing was run), Internal (a plugin failed: its msg and details),
        DeadlineExceeded, FailedPrecondition (bad config). Leaves nothing on failure."""
        cache = self._cache_path(sandbox_id)
        if cache.exists():
            raise AlreadyExists(
                f"pod {sandbox_id} already has CNI networking (cache {cache}): delete it first"
            )
        path = self.ensure_config()
        config = load_config_list(path)
        missing = self._missing(plugin_types(config))
        if missing:
            dirs = ", ".join(str(d) for d in self._bin_dirs)
            raise Unavailable(
                f"CNI plugin(s) {', '.join(missing)} not found in {dirs}: install them "
                "(containernetworking-plugins) or fix the CNI bin dirs"
            )
        subnet = masquerade_subnet(config, str(path))
        record: dict[str, Any] = {
            "version": _CACHE_VERSION,
            "sandbox_id": sandbox_id,
            "netns": str(netns),
            "args": cni_args(
                pod_namespace=pod_namespace,
                pod_name=pod_name,
                sandbox_id=sandbox_id,
                pod_uid=pod_uid,
            ),
            "runtime_config": runtime_config(port_mappings),
            "networks": [{"ifname": POD_IFNAME, "config": config}],
            "results": {},
        }
        # written before any plugin runs: a crash mid-add still leaves delete() the configs.
        # Not fsync'd (2 x 1-3 ms per pod on ext4), as libcni does not: a daemon crash
        # loses nothing, and what a power loss could cost is gone with the reboot anyway
        # (the namespaces; the state dir is normally a tmpfs). See _read_cache.
        if subnet is not None:  # held before the cache is written: delete() releases it
            await self._masquerade.hold(subnet)
        try:
            write_json(cache, record, durable=False)
        except BaseException:
            await self._release(record)
            raise
        try:
            for net in record["networks"]:
                result = await self._add_network(record, net)
                record["results"][net["ifname"]] = result
                write_json(cache, record, durable=False)
        except BaseException as e:
            await self._rollback(record, e)
            raise
        final = record["results"][POD_IFNAME]
        return CniResult(ips=pod_ips(final, POD_IFNAME), raw=final)

    async def _rollback(self, record: dict[str, Any], cause: BaseException) -> None:
        """DEL everything after a failed ADD. A plugin that refuses its config outright
        fails DEL with the same message as ADD; it made nothing, so that is forgiven."""
        forgive = ""
        if isinstance(cause, PodlingError):
            forgive = cause.message.replace(" ADD failed", " DEL failed", 1)
        try:
            await self._delete_record(record, record["netns"], forgive=forgive)
        except (PodlingError, OSError) as e:
            log.error(
                "pod %s: CNI ADD failed (%s) and so did the DEL undoing it (%s); "
                "the cache %s stays for a later delete",
                record["sandbox_id"],
                cause,
                e,
                self._cache_path(record["sandbox_id"]),
            )
            return
        self._cache_path(record["sandbox_id"]).unlink(missing_ok=True)
        await self._release(record)

    async def delete(self, sandbox_id: str, netns: Path | None) -> None:
        """Tear down what add() set up, with the configs it used. Idempotent: nothing
        cached means nothing to do. `netns` may be None or gone. On failure the cache
        stays, so a retry runs DEL again (plugins' DEL is idempotent)."""
        record = self._read_cache(sandbox_id)
        if record is None:
            return
        for candidate in (netns, Path(record["netns"])):
            if candidate is not None and namespaces.is_namespace_file(candidate):
                await self._delete_record(record, str(candidate))
                break
        else:
            async with scratch_netns(record, self._cache_dir, self._environ.get("PATH")) as scratch:
                await self._delete_record(record, scratch)
        self._cache_path(sandbox_id).unlink(missing_ok=True)
        await self._release(record)
        if record["runtime_config"].get("portMappings"):
            await asyncio.to_thread(portmap.release_unused_chains)

    async def _release(self, record: Mapping[str, Any]) -> None:
        for subnet in masquerade_subnets(record):
            await self._masquerade.release(subnet)

    async def _delete_record(
        self, record: dict[str, Any], netns: str, *, forgive: str = ""
    ) -> None:
        """DEL every network in reverse order; goes on past failures to free as much as
        possible, then raises the first (errors whose message is `forgive` excepted)."""
        errors: list[PodlingError] = []
        for net in reversed(record["networks"]):
            errors += await self._del_network(record, net, netns)
        errors = [e for e in errors if not forgive or e.message != forgive]
        if errors:
            raise errors[0]

    async def _add_network(
        self, record: Mapping[str, Any], net: Mapping[str, Any]
    ) -> dict[str, Any]:
        config, prev = net["config"], None
        for plugin in config["plugins"]:
            stdin = plugin_stdin(config, plugin, prev, record["runtime_config"])
            prev = await self._run(
                plugin["type"], "ADD", record, net["ifname"], record["netns"], stdin
            )
        return prev or {}

    async def _del_network(
        self, record: Mapping[str, Any], net: Mapping[str, Any], netns: str
    ) -> list[PodlingError]:
        """DEL one network's plugins in reverse order; the errors, in order."""
        config = net["config"]
        prev = record["results"].get(net["ifname"])
        if not passes_prev_result_on_del(str(config["cniVersion"])):
            prev = None
        errors: list[PodlingError] = []
        for plugin in reversed(config["plugins"]):
            stdin = plugin_stdin(config, plugin, prev or None, record["runtime_config"])
            try:
                await self._run(plugin["type"], "DEL", record, net["ifname"], netns, stdin)
            except PodlingError as e:
                errors.append(e)
        return errors

    async def _run(
        self,
        plugin_type: str,
        command: str,
        record: Mapping[str, Any],
        ifname: str,
        netns: str,
        stdin: bytes,
    ) -> dict[str, Any]:
        """Run one plugin once; its result, or the error it reported."""
        binary = find_plugin(plugin_type, self._bin_dirs)
        if binary is None:
            raise Unavailable(f"CNI plugin {plugin_type} not found in {self._bin_dirs}")
        env = plugin_env(
            self._environ,
            command=command,
            container_id=record["sandbox_id"],
            netns=netns,
            ifname=ifname,
            bin_dirs=self._bin_dirs,
            args=record["args"],
        )
        start = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            str(binary),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd="/",
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), self._timeout)
        except BaseException as e:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            if isinstance(e, TimeoutError):
                raise DeadlineExceeded(
                    f"CNI plugin {plugin_type} {command} for pod {record['sandbox_id']} did not "
                    f"finish within {self._timeout:g} s"
                ) from None
            raise
        ms = (time.perf_counter() - start) * 1e3
        log.debug("CNI plugin %s %s took %.1f ms", plugin_type, command, ms)
        if proc.returncode != 0:
            raise plugin_error(plugin_type, command, proc.returncode or 0, out, err)
        return parse_result(out, plugin_type, command)

    # --- cache -----------------------------------------------------------------------

    def _cache_path(self, sandbox_id: str) -> Path:
        if not _SAFE_ID.fullmatch(sandbox_id):
            raise InvalidArgument(f"sandbox id {sandbox_id!r} is not a safe file name")
        return self._cache_dir / f"{sandbox_id}.json"

    def _read_cache(self, sandbox_id: str) -> dict[str, Any] | None:
        path = self._cache_path(sandbox_id)
        try:
            text = path.read_text()
            record = json.loads(text) if text else None
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise Internal(f"CNI cache {path} is unreadable ({e}); remove it by hand") from e
        if record is None:  # cut short by a power loss (cache writes are not fsync'd)
            log.warning("CNI cache %s is empty: nothing to DEL for pod %s", path, sandbox_id)
            path.unlink(missing_ok=True)
            return None
        if not isinstance(record, dict) or record.get("version") != _CACHE_VERSION:
            raise Internal(f"CNI cache {path} has an unknown format; remove it by hand")
        return record
