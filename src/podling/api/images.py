"""CRI ImageService: proto in, service call, proto out. No logic beyond conversion."""

from __future__ import annotations

import json
from typing import Any

from cri_api.v1 import api_pb2 as pb

from podling.api.unimplemented import fill_unimplemented
from podling.errors import InvalidArgument
from podling.image.registry import Credentials
from podling.services.images import FsUsage, ImageService, image_user
from podling.store.metadata import ImageRecord


def credentials(auth: pb.AuthConfig | None) -> Credentials | None:
    """CRI AuthConfig → Credentials (None when it carries none); `auth` is
    base64("user:password") as in Docker's config and wins over username/password."""
    if auth is None:
        return None
    if auth.auth:
        return Credentials.from_auth_field(auth.auth)
    creds = Credentials(
        username=auth.username,
        password=auth.password,
        identity_token=auth.identity_token,
        registry_token=auth.registry_token,
    )
    return None if creds.empty else creds


def image_proto(rec: ImageRecord, pinned: bool) -> pb.Image:
    user = image_user(json.loads(rec.config))
    return pb.Image(
        id=rec.id,
        repo_tags=rec.repo_tags,
        repo_digests=rec.repo_digests,
        size=rec.size,
        uid=pb.Int64Value(value=user.uid) if user.uid is not None else None,
        username=user.username,
        spec=pb.ImageSpec(image=rec.id),
        pinned=pinned,
    )


def _verbose_info(rec: ImageRecord) -> dict[str, str]:
    info = {
        "id": rec.id,
        "manifestDigest": rec.manifest_digest,
        "chainIDs": list(rec.chain_ids),
        "imageSpec": json.loads(rec.config),
    }
    return {"info": json.dumps(info)}


def _fs_proto(u: FsUsage) -> pb.FilesystemUsage:
    return pb.FilesystemUsage(
        timestamp=u.timestamp_ns,
        fs_id=pb.FilesystemIdentifier(mountpoint=u.mountpoint),
        used_bytes=pb.UInt64Value(value=u.used_bytes),
        inodes_used=pb.UInt64Value(value=u.inodes_used),
    )


def _spec(image: pb.ImageSpec | None, field: str = "image") -> str:
    text = image.image if image is not None else ""
    if not text:
        raise InvalidArgument(f"{field}.image must not be empty")
    return text


class ImageServicer:
    def __init__(self, images: ImageService, snapshots_dir: Any) -> None:
        self._images = images
        self._snapshots_dir = snapshots_dir

    def ListImages(self, request: pb.ListImagesRequest, context: Any) -> pb.ListImagesResponse:
        flt = request.filter.image.image if request.HasField("filter") else ""
        return pb.ListImagesResponse(
            images=[
                image_proto(r, self._images.is_pinned(r)) for r in self._images.list_images(flt)
            ]
        )

    def ImageStatus(self, request: pb.ImageStatusRequest, context: Any) -> pb.ImageStatusResponse:
        rec = self._images.status(_spec(request.image))
        if rec is None:
            # CRI: "If the image isn't present, returns a response with
            # ImageStatusResponse.Image set to nil."
            return pb.ImageStatusResponse()
        info = _verbose_info(rec) if request.verbose else {}
        return pb.ImageStatusResponse(
            image=image_proto(rec, self._images.is_pinned(rec)), info=info
        )

    async def PullImage(self, request: pb.PullImageRequest, context: Any) -> pb.PullImageResponse:
        creds = credentials(request.auth if request.HasField("auth") else None)
        image_id = await self._images.pull(_spec(request.image), creds)
        return pb.PullImageResponse(image_ref=image_id)

    async def RemoveImage(
        self, request: pb.RemoveImageRequest, context: Any
    ) -> pb.RemoveImageResponse:
        await self._images.remove(_spec(request.image))
        return pb.RemoveImageResponse()

    async def ImageFsInfo(
        self, request: pb.ImageFsInfoRequest, context: Any
    ) -> pb.ImageFsInfoResponse:
        image_fs, container_fs = await self._images.fs_usage(self._snapshots_dir)
        return pb.ImageFsInfoResponse(
            image_filesystems=[_fs_proto(image_fs)],
            container_filesystems=[_fs_proto(container_fs)],
        )


fill_unimplemented(ImageServicer, pb.DESCRIPTOR.services_by_name["ImageService"])
