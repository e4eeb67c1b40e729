"""Image references: parsed and normalised the way Docker, containerd and the kubelet do it.

Grammar (the distribution project's reference grammar):

    reference      := name [ ":" tag ] [ "@" digest ]
    name           := [ domain "/" ] path-component [ "/" path-component ]*
    domain         := host [ ":" port ]       host: DNS-style name, IPv4, or "[" IPv6 "]"
    path-component := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    tag            := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
    digest         := "sha256:" 64 lowercase hex   (the only algorithm podling accepts)

Normalisation (what `ParseNormalizedNamed` + `TagNameOnly` do):

* The first path component is a registry domain if it contains "." or ":", is
  "localhost", or contains an uppercase letter (Docker's rule: a lowercase-only first
  component such as "user" in "user/app" is a Docker Hub namespace). Otherwise the
  domain is docker.io.
* "index.docker.io" is rewritten to "docker.io"; a single-component Docker Hub path
  gets the "library/" prefix ("busybox" -> "docker.io/library/busybox").
* The tag defaults to "latest" only when neither a tag nor a digest is given.
* The full name (domain + "/" + path) is at most 255 characters.

Deliberate difference from Docker: "sha256:<64 hex>" alone is rejected as an image id,
like a bare 64-hex string, instead of being read as repository "sha256" with a tag.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from podling.errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
DEFAULT_TAG = "latest"
NAME_MAX = 255
_LEGACY_DOMAIN = "index.docker.io"
_OFFICIAL_PREFIX = "library/"

_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?")
_TAG_RE = re.compile(r"\w[\w.-]{0,127}", re.ASCII)
# Any well-formed digest per the grammar; narrowed to sha256 afterwards for a clear message.
_DIGEST_SHAPE_RE = re.compile(r"([A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*):(\w+)")
_SHA256_HEX_RE = re.compile(r"[a-f0-9]{64}")
_IMAGE_ID_RE = re.compile(r"(?:sha256:)?[a-f0-9]{64}")


@dataclass(frozen=True)
class Reference:
    """A normalised image reference. `tag` is None only when a digest is given alone."""

    domain: str
    path: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.path}"

    @property
    def repo_tag(self) -> str | None:
        return f"{self.name}:{self.tag}" if self.tag is not None else None

    @property
    def repo_digest(self) -> str | None:
        return f"{self.name}@{self.digest}" if self.digest is not None else None

    def with_digest(self, digest: str) -> Reference:
        """The same name and tag, pinned to `digest` (InvalidArgument if it is malformed)."""
        _check_digest(digest, digest)
        return dataclasses.replace(self, digest=digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def is_image_id(text: str) -> bool:
    """True for an image id: 64 lowercase hex digits, optionally prefixed by "sha256:"."""
    return _IMAGE_ID_RE.fullmatch(text) is not None


def parse_reference(text: str) -> Reference:
    """Parse and normalise `text`; InvalidArgument says why it is not a valid reference."""
    if not text:
        raise _invalid(text, "it is empty")
    if is_image_id(text):
        raise _invalid(
            text,
            "it looks like an image id, not a name to pull; use a name such as "
            "'busybox:latest' or 'busybox@sha256:<digest>'",
        )
    rest, digest = _split_digest(text)
    name, tag = _split_tag(rest, text)
    domain, path = _split_domain(name, text)
    _check_path(path, text)
    full = f"{domain}/{path}"
    if len(full) > NAME_MAX:
        raise _invalid(text, f"the repository name {full!r} is longer than {NAME_MAX} characters")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(domain=domain, path=path, tag=tag, digest=digest)


def _invalid(text: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"invalid image reference {text!r}: {why}")


def _split_digest(text: str) -> tuple[str, str | None]:
    if text.count("@") > 1:
        raise _invalid(text, "it contains more than one '@'")
    rest, sep, digest = text.partition("@")
    if not sep:
        return rest, None
    _check_digest(digest, text)
    return rest, digest


def _check_digest(digest: str, text: str) -> None:
    shape = _DIGEST_SHAPE_RE.fullmatch(digest)
    if shape is None:
        raise _invalid(text, f"digest {digest!r} is malformed; expected sha256:<64 hex digits>")
    if shape.group(1) != "sha256":
        raise _invalid(
            text, f"digest algorithm {shape.group(1)!r} is not supported; only sha256 is"
        )
    if _SHA256_HEX_RE.fullmatch(shape.group(2)) is None:
        raise _invalid(text, "a sha256 digest must be exactly 64 lowercase hex digits")


def _split_tag(rest: str, text: str) -> tuple[str, str | None]:
    """Split "name[:tag]": a tag follows the last ':' only if no '/' comes after it."""
    colon = rest.rfind(":")
    if colon <= rest.rfind("/"):
        return rest, None
    name, tag = rest[:colon], rest[colon + 1 :]
    if not tag:
        raise _invalid(text, "the tag after ':' is empty")
    if _TAG_RE.fullmatch(tag) is None:
        raise _invalid(
            text,
            f"tag {tag!r} is invalid; a tag is 1-128 characters of letters, digits, '_', "
            "'.' and '-', and must not start with '.' or '-'",
        )
    return name, tag


def _split_domain(name: str, text: str) -> tuple[str, str]:
    if not name:
        raise _invalid(text, "the repository name is missing")
    slash = name.find("/")
    first = name[:slash]
    is_domain = slash != -1 and (
        "." in first or ":" in first or first == "localhost" or first.lower() != first
    )
    if is_domain:
        domain, path = first, name[slash + 1 :]
        if _DOMAIN_RE.fullmatch(domain) is None:
            raise _invalid(text, f"registry domain {domain!r} is not a valid host[:port]")
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain == _LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and path and "/" not in path:
        path = _OFFICIAL_PREFIX + path
    return domain, path


def _check_path(path: str, text: str) -> None:
    if not path:
        raise _invalid(text, "the repository path after the domain is empty")
    if path.lower() != path:
        raise _invalid(text, f"repository names must be lowercase (got {path!r})")
    for component in path.split("/"):
        if not component:
            raise _invalid(
                text, "the repository path has an empty component ('//' or a '/' at an end)"
            )
        if _COMPONENT_RE.fullmatch(component) is None:
            raise _invalid(
                text,
                f"path component {component!r} is invalid; use lowercase letters and digits, "
                "joined by single '.', '_', '__' or runs of '-'",
            )
