"""Image reference parsing: normalisation as Docker/containerd/kubelet do it, and rejections."""

from __future__ import annotations

import dataclasses

import pytest

from podling.errors import InvalidArgument
from podling.image.reference import Reference, is_image_id, parse_reference

HEX = "0123456789abcdef" * 4
DIGEST = f"sha256:{HEX}"

# (input, domain, path, tag, digest)
VALID = [
    ("busybox", "docker.io", "library/busybox", "latest", None),
    ("busybox:1.36", "docker.io", "library/busybox", "1.36", None),
    ("user/app", "docker.io", "user/app", "latest", None),
    ("user/app:v1", "docker.io", "user/app", "v1", None),
    ("docker.io/busybox", "docker.io", "library/busybox", "latest", None),
    ("docker.io/library/busybox:latest", "docker.io", "library/busybox", "latest", None),
    ("index.docker.io/busybox", "docker.io", "library/busybox", "latest", None),
    ("index.docker.io/user/app:v1", "docker.io", "user/app", "v1", None),
    ("quay.io/team/app:v1.2", "quay.io", "team/app", "v1.2", None),
    ("quay.io/app", "quay.io", "app", "latest", None),
    ("localhost/app", "localhost", "app", "latest", None),
    ("localhost:5000/app", "localhost:5000", "app", "latest", None),
    ("localhost:5000/team/app:dev", "localhost:5000", "team/app", "dev", None),
    ("127.0.0.1:5000/team/app:dev", "127.0.0.1:5000", "team/app", "dev", None),
    ("[::1]:5000/app", "[::1]:5000", "app", "latest", None),
    ("registry.example.com/a/b/c:t", "registry.example.com", "a/b/c", "t", None),
    ("a/b/c/d", "docker.io", "a/b/c/d", "latest", None),
    (f"busybox@{DIGEST}", "docker.io", "library/busybox", None, DIGEST),
    (f"busybox:1.36@{DIGEST}", "docker.io", "library/busybox", "1.36", DIGEST),
    (f"localhost:5000/app@{DIGEST}", "localhost:5000", "app", None, DIGEST),
    ("foo_bar/a__b/a-b/a--b/a.b", "docker.io", "foo_bar/a__b/a-b/a--b/a.b", "latest", None),
    ("app:_under", "docker.io", "library/app", "_under", None),
    ("app:V1.0-RC_1", "docker.io", "library/app", "V1.0-RC_1", None),
    ("app:" + "t" * 128, "docker.io", "library/app", "t" * 128, None),
    # A lone word is a Docker Hub repository, even if it looks like a host.
    ("localhost", "docker.io", "library/localhost", "latest", None),
    ("localhost:5000", "docker.io", "library/localhost", "5000", None),
    ("example.com", "docker.io", "library/example.com", "latest", None),
    # Docker's rule: an uppercase first component is a registry host, not a namespace.
    ("Registry/app", "Registry", "app", "latest", None),
    ("0/app", "docker.io", "0/app", "latest", None),
]


@pytest.mark.parametrize(("text", "domain", "path", "tag", "digest"), VALID)
def test_valid_references_normalise(
    text: str, domain: str, path: str, tag: str | None, digest: str | None
) -> None:
    ref = parse_reference(text)
    assert ref == Reference(domain=domain, path=path, tag=tag, digest=digest)


LONG_PATH = "/".join(["a" * 50] * 5)  # 254 chars; with "docker.io/" well over 255

# (input, substring of the error message)
INVALID = [
    ("", "empty"),
    ("Busybox", "must be lowercase"),
    ("docker.io/Library/busybox", "must be lowercase"),
    ("quay.io/Team/app", "must be lowercase"),
    (HEX, "looks like an image id"),
    (DIGEST, "looks like an image id"),
    ("busybox:", "tag after ':' is empty"),
    ("busybox:bad tag", "tag 'bad tag' is invalid"),
    ("busybox:-x", "is invalid"),
    ("busybox:.x", "is invalid"),
    ("busybox:" + "t" * 129, "1-128 characters"),
    ("busybox@sha256:abc", "64 lowercase hex"),
    (f"busybox@sha256:{HEX.upper()}", "64 lowercase hex"),
    (f"busybox@sha256:{HEX}0", "64 lowercase hex"),
    ("busybox@sha512:" + "ab" * 64, "'sha512' is not supported"),
    ("busybox@md5:" + "a" * 32, "'md5' is not supported"),
    ("busybox@", "malformed"),
    (f"busybox@{HEX}", "malformed"),
    (f"a@{DIGEST}@{DIGEST}", "more than one '@'"),
    (":latest", "repository name is missing"),
    (f"@{DIGEST}", "repository name is missing"),
    ("foo//bar", "empty component"),
    ("foo/", "empty component"),
    ("/foo", "empty component"),
    ("quay.io/", "path after the domain is empty"),
    ("-foo", "path component '-foo' is invalid"),
    ("foo-", "is invalid"),
    ("foo..bar", "is invalid"),
    ("foo___bar", "is invalid"),
    ("foo._bar", "is invalid"),
    ("busy box", "is invalid"),
    ("my_registry:5000/app", "registry domain 'my_registry:5000'"),
    ("localhost:port/app", "not a valid host[:port]"),
    ("-bad.com/app", "not a valid host[:port]"),
    (LONG_PATH, "longer than 255"),
    ("docker.io/" + LONG_PATH, "longer than 255"),
]


@pytest.mark.parametrize(("text", "why"), INVALID)
def test_invalid_references_say_why(text: str, why: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_reference(text)
    assert why in exc.value.message
    assert repr(text) in exc.value.message


def test_name_length_limit_counts_the_normalised_name() -> None:
    path = "a/" + "b" * (255 - len("docker.io/a/"))
    assert len(parse_reference(path).name) == 255
    with pytest.raises(InvalidArgument, match="longer than 255"):
        parse_reference(path + "b")


def test_properties_and_str() -> None:
    ref = parse_reference("busybox:1.36")
    assert ref.name == "docker.io/library/busybox"
    assert ref.repo_tag == "docker.io/library/busybox:1.36"
    assert ref.repo_digest is None
    assert str(ref) == "docker.io/library/busybox:1.36"

    pinned = parse_reference(f"localhost:5000/app@{DIGEST}")
    assert pinned.repo_tag is None
    assert pinned.repo_digest == f"localhost:5000/app@{DIGEST}"
    assert str(pinned) == f"localhost:5000/app@{DIGEST}"

    both = parse_reference(f"quay.io/team/app:v1@{DIGEST}")
    assert str(both) == f"quay.io/team/app:v1@{DIGEST}"


@pytest.mark.parametrize("text", [t for t, *_ in VALID])
def test_str_round_trips(text: str) -> None:
    ref = parse_reference(text)
    assert parse_reference(str(ref)) == ref


def test_with_digest_keeps_name_and_tag() -> None:
    ref = parse_reference("user/app:v2")
    pinned = ref.with_digest(DIGEST)
    assert pinned == Reference("docker.io", "user/app", "v2", DIGEST)
    assert ref.digest is None  # the original is unchanged
    assert str(pinned) == f"docker.io/user/app:v2@{DIGEST}"


@pytest.mark.parametrize("bad", ["sha256:abc", "md5:" + "a" * 32, HEX, ""])
def test_with_digest_rejects_malformed_digests(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_reference("busybox").with_digest(bad)


def test_reference_is_frozen() -> None:
    ref = parse_reference("busybox")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.tag = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (HEX, True),
        (DIGEST, True),
        (HEX.upper(), False),
        (HEX[:-1], False),
        (HEX + "0", False),
        ("sha512:" + HEX, False),
        ("busybox", False),
        ("", False),
    ],
)
def test_is_image_id(text: str, expected: bool) -> None:
    assert is_image_id(text) is expected
