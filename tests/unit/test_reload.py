"""reload.plan: old config + new config → what applies live, what needs a restart."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from podling.config import (
    Config,
    HandlerConfig,
    ImagesConfig,
    LogConfig,
    RegistryConfig,
    StreamingConfig,
)
from podling.config import load as load_config
from podling.errors import ConfigError
from podling.image.registry import HostConfig, RegistryClient
from podling.paths import Paths
from podling.reload import changed_keys, flatten, is_live, plan
from podling.runtimes.handlers import HandlerRegistry


def test_same_config_changes_nothing() -> None:
    p = plan(Config(), Config())
    assert (p.applied, p.restart, p.kept_handlers) == ((), (), ())
    assert p.effective == Config()


def test_live_keys_apply_and_others_wait_for_a_restart() -> None:
    old = Config()
    new = dataclasses.replace(
        old,
        socket="/run/other.sock",
        log=LogConfig(level="debug", format="json"),
        streaming=StreamingConfig(port=10010),
        images=ImagesConfig(
            max_concurrent_downloads=7,
            pull_stall_timeout=5.0,
            registries={"127.0.0.1:5000": RegistryConfig(mirrors=["http://m"], insecure=True)},
        ),
        runtimes={"crun2": HandlerConfig(binary="crun")},
        default_runtime="crun2",
    )
    p = plan(old, new)
    assert p.restart == ("images.pull_stall_timeout", "socket", "streaming.port")
    assert "log.level" in p.applied and "log.format" in p.applied
    assert 'images.registries."127.0.0.1:5000".mirrors' in p.applied
    assert "runtimes.crun2.binary" in p.applied and "default_runtime" in p.applied
    eff = p.effective
    # live keys take the new values, the rest keeps the old ones
    assert eff.log == new.log and eff.images.registries == new.images.registries
    assert eff.images.max_concurrent_downloads == 7 and eff.runtimes == new.runtimes
    assert eff.default_runtime == "crun2"
    assert eff.socket == old.socket and eff.streaming == old.streaming
    assert eff.images.pull_stall_timeout == old.images.pull_stall_timeout
    assert p.changed("log") and p.changed("runtimes") and not p.changed("socket")


def test_removing_an_unused_handler_applies() -> None:
    old = Config(runtimes={"crun2": HandlerConfig(binary="crun")})
    p = plan(old, Config(), in_use={"runc"})
    assert p.effective.runtimes == {} and p.kept_handlers == ()
    assert "runtimes.crun2.binary" in p.applied and p.restart == ()


def test_a_handler_in_use_is_not_removed_nor_given_another_root() -> None:
    crun2 = HandlerConfig(binary="crun", root="/run/a")
    old = Config(runtimes={"crun2": crun2, "x": HandlerConfig(binary="x")})
    moved = Config(runtimes={"crun2": HandlerConfig(binary="crun", root="/run/b")})
    p = plan(old, moved, in_use={"crun2", "x"})
    assert p.kept_handlers == ("crun2", "x")
    assert p.effective.runtimes == old.runtimes
    assert not p.changed("runtimes")
    # other changes to a handler in use (args, binary) do apply
    new_args = Config(runtimes={**old.runtimes, "crun2": dataclasses.replace(crun2, args=["-v"])})
    p = plan(old, new_args, in_use={"crun2"})
    assert p.kept_handlers == () and p.applied == ("runtimes.crun2.args",)


def test_a_builtin_override_in_use_keeps_its_root() -> None:
    old = Config(runtimes={"runc": HandlerConfig(binary="runc", root="/run/custom")})
    p = plan(old, Config(), in_use={"runc"})  # back to the built-in: another root
    assert p.kept_handlers == ("runc",) and p.effective.runtimes == old.runtimes
    p = plan(old, Config(), in_use=set())
    assert p.kept_handlers == () and p.effective.runtimes == {}


def test_flatten_quotes_table_keys_and_marks_empty_tables() -> None:
    cfg = Config(
        images=ImagesConfig(registries={"docker.io": RegistryConfig(mirrors=["http://m"])})
    )
    flat = flatten(cfg)
    assert flat['images.registries."docker.io".mirrors'] == ("http://m",)
    assert flat["runtimes"] == {} and "images.registries" not in flat
    assert changed_keys(Config(), cfg) == [
        "images.registries",
        'images.registries."docker.io".insecure',
        'images.registries."docker.io".mirrors',
        'images.registries."docker.io".skip_upstream',
    ]


def test_is_live() -> None:
    assert is_live("log.level") and is_live('images.registries."a".mirrors')
    assert is_live("runtimes") and is_live("default_runtime")
    assert not is_live("images.registries_extra") and not is_live("logx")
    assert not is_live("images.snapshotter") and not is_live("runtime.cgroup_parent")


def test_plan_from_loaded_files(tmp_path: Path) -> None:
    f = tmp_path / "config.toml"
    f.write_text('socket = "/a.sock"\n[log]\nlevel = "info"\n')
    old = load_config(f, explicit=True)
    f.write_text('socket = "/b.sock"\n[log]\nlevel = "debug"\n[runtimes.crun2]\nbinary = "crun"\n')
    p = plan(old, load_config(f, explicit=True))
    assert p.restart == ("socket",)
    assert p.applied == ("log.level", "runtimes", "runtimes.crun2.args", "runtimes.crun2.binary",
                         "runtimes.crun2.root", "runtimes.crun2.type")  # fmt: skip


def test_registry_client_set_hosts_is_all_or_nothing() -> None:
    client = RegistryClient({}, stall_timeout=5)
    assert [e.base for e in client.endpoints("r.lan")] == ["https://r.lan"]
    client.set_hosts({"r.lan": HostConfig(mirrors=("http://m:5000/v2/",), insecure=True)})
    assert [e.base for e in client.endpoints("r.lan")] == ["http://m:5000", "http://r.lan"]
    with pytest.raises(ConfigError):
        client.set_hosts({"r.lan": HostConfig(mirrors=("ftp://x",))})
    assert [e.base for e in client.endpoints("r.lan")] == ["http://m:5000", "http://r.lan"]


def test_handler_registry_adopt(tmp_path: Path) -> None:
    paths = Paths(root=tmp_path / "root", state=tmp_path / "state", socket=tmp_path / "s")
    live = HandlerRegistry(Config(runtimes={"mine": HandlerConfig(binary="true")}), paths)
    assert "mine" in live.names() and live.lookup("").name == "runc"
    added = Config(default_runtime="x2", runtimes={"x2": HandlerConfig(binary="true")})
    live.adopt(HandlerRegistry(added, paths))
    assert live.default == "x2" and "x2" in live.names() and "mine" not in live.names()
    assert live.lookup("").name == "x2"
