"""Image verbs: pull, images, inspecti, rmi, imagefsinfo, load."""

from __future__ import annotations

import os
import sys
from typing import Any

import click
import grpc
from cri_api.v1 import api_pb2 as pb

from podling.cli.connect import Client, connect, describe, fail
from podling.cli.progress import show_progress
from podling.cli.render import (
    FORMATS,
    as_dict,
    emit,
    expand_info,
    human_size,
    short_id,
    split_repo_tag,
    table,
)


def _client(obj: dict[str, object]) -> Any:
    return connect(str(obj["endpoint"]), float(str(obj["timeout"])))


@click.command()
@click.argument("image")
@click.option("--creds", default=None, help="registry credentials as USERNAME[:PASSWORD]")
@click.option("--auth", default=None, help="base64 of USERNAME:PASSWORD")
@click.option("--no-progress", is_flag=True, help="do not draw the per-layer progress")
@click.pass_obj
def pull(
    obj: dict[str, object], image: str, creds: str | None, auth: str | None, no_progress: bool
) -> None:
    """Pull IMAGE from its registry (through the configured mirrors)."""
    req = pb.PullImageRequest(image=pb.ImageSpec(image=image), auth=_auth(creds, auth))
    with _client(obj) as c:
        future = c.images.PullImage.future(req, timeout=c.timeout)
        if not no_progress and sys.stderr.isatty():
            show_progress(c, image, future)
        try:
            resp = future.result()
        except grpc.RpcError as e:
            fail(describe(e))
    click.echo(f"Image is up to date for {resp.image_ref}")


def _auth(creds: str | None, auth: str | None) -> pb.AuthConfig | None:
    if creds:
        user, _, password = creds.partition(":")
        if not password:
            password = click.prompt("Password", hide_input=True, err=True)
        return pb.AuthConfig(username=user, password=password)
    if auth:
        return pb.AuthConfig(auth=auth)
    return None


@click.command()
@click.argument("image", required=False, default="")
@click.option("-q", "--quiet", is_flag=True, help="only image ids")
@click.option("--digests", is_flag=True, help="show digests")
@click.option("-o", "--output", type=click.Choice(FORMATS), default="table")
@click.pass_obj
def images(obj: dict[str, object], image: str, quiet: bool, digests: bool, output: str) -> None:
    """List images (optionally only IMAGE)."""
    flt = pb.ImageFilter(image=pb.ImageSpec(image=image)) if image else None
    with _client(obj) as c:
        resp = c.images.ListImages(pb.ListImagesRequest(filter=flt), timeout=c.timeout)
    if quiet:
        for img in resp.images:
            click.echo(img.id)
    elif output != "table":
        emit(as_dict(resp), output)
    else:
        _image_table(list(resp.images), digests)


def _image_table(imgs: list[pb.Image], digests: bool) -> None:
    headers = ["IMAGE", "TAG", *(["DIGEST"] if digests else []), "IMAGE ID", "SIZE"]
    rows: list[list[str]] = []
    for img in imgs:
        digest = img.repo_digests[0].rpartition("@")[2] if img.repo_digests else "<none>"
        short_digest = digest.removeprefix("sha256:")[:13]
        tags = [split_repo_tag(t) for t in img.repo_tags]
        if not tags:
            repo = img.repo_digests[0].rpartition("@")[0] if img.repo_digests else "<none>"
            tags = [(repo, "<none>")]
        for repo, tag in tags:
            rows.append(
                [
                    repo,
                    tag,
                    *([short_digest] if digests else []),
                    short_id(img.id),
                    human_size(img.size),
                ]
            )
    table(headers, rows)


@click.command()
@click.argument("image", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Choice(["json", "yaml"]), default="json")
@click.pass_obj
def inspecti(obj: dict[str, object], image: tuple[str, ...], output: str) -> None:
    """Show the status of one or more images, verbose."""
    with _client(obj) as c:
        for name in image:
            req = pb.ImageStatusRequest(image=pb.ImageSpec(image=name), verbose=True)
            st = c.images.ImageStatus(req, timeout=c.timeout)
            if not st.HasField("image"):
                fail(f"no such image {name!r}")
            emit({"status": as_dict(st.image), "info": expand_info(dict(st.info))}, output)


@click.command()
@click.argument("image", nargs=-1)
@click.option("-a", "--all", "all_", is_flag=True, help="remove all images")
@click.option("-q", "--prune", is_flag=True, help="remove every image no container uses")
@click.pass_obj
def rmi(obj: dict[str, object], image: tuple[str, ...], all_: bool, prune: bool) -> None:
    """Remove images by id, tag or digest."""
    if not image and not (all_ or prune):
        fail("give at least one image, or --all / --prune")
    with _client(obj) as c:
        targets, missing = _resolve_ids(c, image)
        if all_ or prune:
            listed = c.images.ListImages(pb.ListImagesRequest(), timeout=c.timeout).images
            used = _images_in_use(c) if prune else set()
            targets += [i.id for i in listed if i.id not in used and i.id not in targets]
        for image_id in targets:
            req = pb.RemoveImageRequest(image=pb.ImageSpec(image=image_id))
            c.images.RemoveImage(req, timeout=c.timeout)
            click.echo(f"Deleted: {image_id}")
    if missing:
        fail("no such image: " + ", ".join(missing))


def _resolve_ids(c: Client, names: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Image ids for `names` (as crictl does, through ImageStatus), and the names not found."""
    ids: list[str] = []
    missing: list[str] = []
    for name in names:
        req = pb.ImageStatusRequest(image=pb.ImageSpec(image=name))
        st = c.images.ImageStatus(req, timeout=c.timeout)
        if not st.HasField("image"):
            missing.append(name)
        elif st.image.id not in ids:
            ids.append(st.image.id)
    return ids, missing


def _images_in_use(c: Client) -> set[str]:
    try:
        resp = c.runtime.ListContainers(pb.ListContainersRequest(), timeout=c.timeout)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:
            return set()  # a runtime that cannot list containers has created none
        raise
    return {ct.image_ref for ct in resp.containers} | {ct.image_id for ct in resp.containers}


@click.command()
@click.option("-o", "--output", type=click.Choice(["json", "yaml"]), default="json")
@click.pass_obj
def imagefsinfo(obj: dict[str, object], output: str) -> None:
    """Bytes and inodes used by images and by containers' writable layers."""
    with _client(obj) as c:
        resp = c.images.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=c.timeout)
    emit(as_dict(resp), output)


@click.command()
@click.argument("archive", type=click.Path(exists=True, dir_okay=True))
@click.pass_obj
def load(obj: dict[str, object], archive: str) -> None:
    """Import an OCI image layout or `docker save` archive (tar or tar.gz)."""
    with _client(obj) as c:
        resp = c.admin_unary("LoadImage", {"path": os.path.abspath(archive)})
    for img in resp["images"]:
        names = ", ".join(img["names"]) or "<none>"
        click.echo(f"Loaded image: {names} ({img['id']})")


def register(group: click.Group) -> None:
    for cmd in (pull, images, inspecti, rmi, imagefsinfo, load):
        group.add_command(cmd)
