"""Registry HTTP failures as podling errors, with messages an operator can act on.

HTTP statuses map as: 404 NotFound, 401 Unauthenticated, 403 PermissionDenied,
400 InvalidArgument, 429 and anything else unexpected Unavailable. Transport failures map
as: timeout DeadlineExceeded, refused or failed connection Unavailable.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

from podling.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PodlingError,
    Unauthenticated,
    Unavailable,
)

if TYPE_CHECKING:
    from podling.image.http import Response

__all__ = ["combined_error", "describe", "network_errors", "status_error"]

_ERROR_BODY_LIMIT = 4096  # the registry's JSON error document; only its first entry is used


async def status_error(resp: Response, what: str) -> PodlingError:
    """Map an unexpected HTTP status to an error, quoting the registry's error code.

    Reads at most a few KiB of the body (the distribution spec's `errors` document);
    an unreadable or non-JSON body just leaves the code out. Does not release `resp`.
    """
    from podling.image.http import HttpError

    detail = f"HTTP {resp.status}"
    with contextlib.suppress(HttpError, TimeoutError, ValueError, KeyError, IndexError, TypeError):
        body = json.loads(await resp.read(_ERROR_BODY_LIMIT))
        err = body["errors"][0]
        detail += f" {err.get('code', '')}: {err.get('message', '')}".rstrip(": ")
    status = resp.status
    if status == 404:
        return NotFound(f"{what} not found ({detail})")
    if status == 401:
        return Unauthenticated(f"{what}: not authorised ({detail})")
    if status == 403:
        return PermissionDenied(f"{what}: access denied ({detail}); check pull credentials")
    if status == 400:
        return InvalidArgument(f"{what}: request rejected ({detail})")
    if status == 429:
        return Unavailable(f"{what}: rate limited ({detail}); retry later")
    return Unavailable(f"{what}: unexpected answer ({detail})")


def describe(e: BaseException) -> str:
    """`e`'s message, or its class name when it has none (timeouts often don't)."""
    return str(e) or type(e).__name__


@contextlib.contextmanager
def network_errors(what: str) -> Iterator[None]:
    """Translate HTTP client failures into podling errors naming `what`."""
    from podling.image.http import ConnectError, HttpError

    try:
        yield
    except TimeoutError as e:
        raise DeadlineExceeded(f"{what}: no answer in time") from e
    except ConnectError as e:
        raise Unavailable(f"{what}: cannot connect ({describe(e)})") from e
    except HttpError as e:
        raise Unavailable(f"{what}: request failed ({describe(e)})") from e


def combined_error(image: str, failures: list[tuple[str, PodlingError]]) -> PodlingError:
    """One error for a failed resolve: the last endpoint's class, every endpoint's reason.

    `failures` is non-empty: (endpoint base URL, its error) in the order tried.
    """
    last = failures[-1][1]
    reasons = "; ".join(f"{base}: {e.message}" for base, e in failures)
    if isinstance(last, NotFound):
        return NotFound(f"image {image} not found: {reasons}")
    return type(last)(f"pulling image {image} failed: {reasons}")
