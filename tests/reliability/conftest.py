"""Fixtures for the reliability suites: the integration fixtures (registry, daemons, pod
environments) plus the long mode switch.

`PODLING_LONG=1` turns on the long mode: fuzzing and load run for minutes instead of
seconds. CI runs the short mode.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings

# the same registry/daemon/pod fixtures the integration tests use
from tests.integration.conftest import daemon, make_daemon, registry  # noqa: F401
from tests.integration.pod_fixtures import clean, env  # noqa: F401

LONG = os.environ.get("PODLING_LONG", "") not in ("", "0")


def examples(short: int, long: int) -> Callable[[Any], Any]:
    """Hypothesis settings: `short` examples in CI (derandomised, so every run tries the
    same ones), `long` random ones in long mode; no deadline, no example database."""
    return settings(
        max_examples=long if LONG else short,
        deadline=None,
        derandomize=not LONG,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
