"""Deleted images: their sidecars go too, but only when the image is really gone.

A delete event may arrive after the image was uploaded again (S3 and EventBridge
deliver at least once, in no guaranteed order), so each announced deletion is
checked when it is handled:

1. keys ending in the output suffix (a sidecar deleted by someone) and keys that are
   not images are ignored;
2. ``HeadObject`` on the image: if it exists (re-uploaded, or only an older version
   was deleted), the sidecar stays;
3. otherwise the sidecar is read for its ETag and deleted with ``IfMatch``, so a
   sidecar rewritten in the meantime (for a re-upload) survives.

No model is needed: an invocation with only deletions loads none. Transient S3
trouble marks the object *failed*, to be retried like an embedding.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from dinoembed.errors import DinoEmbedError, SourceGoneError
from dinoembed.handler.events import ObjectRef
from dinoembed.handler.indexing import Indexer
from dinoembed.handler.process import Report, log_image
from dinoembed.handler.s3io import S3Objects
from dinoembed.images.files import looks_like_image
from dinoembed.results.sidecars import is_sidecar, sidecar_name


class SidecarDeleter:
    """Removes the sidecars of deleted images; one per execution environment."""

    def __init__(
        self, objects: S3Objects, output_suffix: str, indexer: Indexer | None = None
    ) -> None:
        self.objects = objects
        self.suffix = output_suffix
        self.indexer = indexer

    def process(self, refs: Iterable[ObjectRef]) -> Report:
        report = Report()
        for ref in refs:
            try:
                self._one(ref, report)
            except DinoEmbedError as err:
                report.fail(ref, str(err), deletion=True)
        return report

    def _one(self, ref: ObjectRef, report: Report) -> None:
        if is_sidecar(ref.key, self.suffix):
            return report.skip(ref, "own output (a sidecar was deleted)", deletion=True)
        if not looks_like_image(Path(ref.key), self.suffix):
            return report.skip(ref, "not an image key", deletion=True)
        try:
            self.objects.head(ref.bucket, ref.key)
        except SourceGoneError:
            pass  # really gone: its sidecar goes too
        else:
            return report.skip(ref, "image exists (uploaded again); sidecar kept", deletion=True)
        key = sidecar_name(ref.key, self.suffix)
        sidecar = self.objects.read_sidecar(ref.bucket, key)
        if sidecar is None:
            report.skip(ref, "no sidecar to delete", deletion=True)
        elif not self.objects.delete_sidecar(
            ref.bucket, key, suffix=self.suffix, etag=sidecar.etag
        ):
            return report.skip(ref, "sidecar changed meanwhile; kept", deletion=True)
        else:
            report.tally.deleted += 1
            log_image(
                ref,
                "deleted",
                0.0,
                reason=f"sidecar s3://{ref.bucket}/{key} deleted",
                deletion=True,
            )
        # Its vector goes too (a retry after a failed delete finds no sidecar and gets here).
        if self.indexer is not None and self.indexer.delete(ref, self.objects, self.suffix):
            report.tally.vectors_deleted += 1
        return None
