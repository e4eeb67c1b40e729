"""Config reload (SIGHUP): which changes apply to the running daemon, which need a restart.

`plan(old, new, in_use)` is pure: it compares two loaded configs key by key and returns
the config the daemon runs with afterwards (`effective`), the changed keys applied live
and the changed keys that need a restart. The composition root (app.py) applies a plan.

Applied live (LIVE_KEYS):
- `log.level`, `log.format`: the next log line uses them.
- `images.registries` (mirrors, insecure, skip_upstream) and
  `images.max_concurrent_downloads`: the next pull uses them; a pull in flight finishes
  with the endpoints and download limit it started with.
- `runtimes` and `default_runtime`: new pods (and new containers) see added and changed
  handlers at once. A handler that pods or containers still use is never taken away from
  under them: removing it, or changing its `root` (where the runtime keeps the state of
  those containers), is refused and its old definition kept, named in the log, until a
  reload after the last of them is removed. Other changes to an in-use handler (binary,
  args) apply, also to its existing containers (stop, exec, remove).

Every other changed key (root, state, socket, streaming, metrics, network, cgroup
driver and parent, conmon, snapshotter, timeouts, ...) keeps its old value and is named
for a restart. Pull credentials are not config: they come with each PullImage request.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from podling.config import Config, HandlerConfig
from podling.runtimes.handlers import BUILTIN

LIVE_KEYS: tuple[str, ...] = (
    "log.level",
    "log.format",
    "images.registries",
    "images.max_concurrent_downloads",
    "runtimes",
    "default_runtime",
)

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class ReloadPlan:
    """What a reload does. `effective` is the config the daemon runs with afterwards: the
    new config's live keys, the old config's values for everything else."""

    effective: Config
    applied: tuple[str, ...]  # changed keys that take effect now (dotted, TOML-quoted)
    restart: tuple[str, ...]  # changed keys that keep their old value until a restart
    kept_handlers: tuple[str, ...]  # in-use handlers whose removal or new root was refused

    def changed(self, prefix: str) -> bool:
        """Whether any applied key is `prefix` or lies under it."""
        return any(_under(k, prefix) for k in self.applied)


def plan(old: Config, new: Config, in_use: Iterable[str] = ()) -> ReloadPlan:
    """Compare `old` (running) and `new` (just loaded); `in_use` names the runtime
    handlers that existing pods or containers run with."""
    runtimes, kept = _runtimes(old, new, frozenset(in_use))
    effective = dataclasses.replace(
        old,
        default_runtime=new.default_runtime,
        runtimes=runtimes,
        log=new.log,
        images=dataclasses.replace(
            old.images,
            registries=new.images.registries,
            max_concurrent_downloads=new.images.max_concurrent_downloads,
        ),
    )
    wanted = changed_keys(old, new)
    return ReloadPlan(
        effective=effective,
        applied=tuple(changed_keys(old, effective)),
        restart=tuple(k for k in wanted if not is_live(k)),
        kept_handlers=kept,
    )


def is_live(key: str) -> bool:
    """Whether a change of `key` (dotted) can be applied without a restart."""
    return any(_under(key, live) for live in LIVE_KEYS)


def changed_keys(a: Config, b: Config) -> list[str]:
    """The dotted keys whose values differ between `a` and `b` (present in one only
    counts as different), sorted."""
    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k, _MISSING) != fb.get(k, _MISSING))


def flatten(obj: Any, at: str = "") -> dict[str, Any]:
    """A config (or part of one) as {dotted key: leaf value}; table keys that are not
    bare TOML keys are quoted, e.g. `images.registries."127.0.0.1:5000".mirrors`."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        items: Iterable[tuple[str, Any]] = (
            (f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)
        )
    elif isinstance(obj, Mapping):
        items = ((_quote(str(k)), v) for k, v in obj.items())
    else:
        return {at: tuple(obj) if isinstance(obj, list) else obj}
    out: dict[str, Any] = {}
    for name, value in items:
        key = f"{at}.{name}" if at else name
        if isinstance(value, Mapping) and not value:
            out[key] = {}  # an empty table is a value of its own (present vs absent)
        else:
            out.update(flatten(value, key))
    return out


def resolved_handlers(cfg: Config) -> dict[str, HandlerConfig]:
    """Every handler definition `cfg` yields: the built-ins, overridden by `runtimes`."""
    return {**BUILTIN, **cfg.runtimes}


def _runtimes(
    old: Config, new: Config, in_use: frozenset[str]
) -> tuple[dict[str, HandlerConfig], tuple[str, ...]]:
    """The new `runtimes` table, with the old definition kept for every in-use handler
    that the new config removes or gives another root."""
    runtimes = dict(new.runtimes)
    before, after = resolved_handlers(old), resolved_handlers(new)
    kept: list[str] = []
    for name in sorted(in_use):
        was, now = before.get(name), after.get(name)
        if was is not None and (now is None or now.root != was.root):
            runtimes[name] = was
            kept.append(name)
    return runtimes, tuple(kept)


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def _quote(part: str) -> str:
    return part if _BARE_KEY.match(part) else json.dumps(part)


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()
