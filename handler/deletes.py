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

import logging
from collections.abc import Iterable
from pathlib import Path

from dinoembed.errors import DinoEmbedError, SourceGoneError
from dinoembed.handler.events import ObjectRef
from dinoembed.handler.process import Report
from dinoembed.handler.s3io import S3Objects
from dinoembed.local import looks_like_image
from dinoembed.sidecars import is_sidecar, sidecar_name

log = logging.getLogger(__name__)


class SidecarDeleter:
    """Removes the sidecars of deleted images; one per execution environment."""

    def __init__(self, objects: S3Objects, output_suffix: str) -> None:
        self.objects = objects
        self.suffix = output_suffix

    def process(self, refs: Iterable[ObjectRef]) -> Report:
        report = Report()
        for ref in refs:
            try:
                self._one(ref, report)
            except DinoEmbedError as err:
                report.tally.failed += 1
                report.failed.append((ref, str(err)))
                _log(ref, "failed", str(err), level=logging.WARNING)
        return report

    def _one(self, ref: ObjectRef, report: Report) -> None:
        if is_sidecar(ref.key, self.suffix):
            return self._skip(ref, report, "own output (a sidecar was deleted)")
        if not looks_like_image(Path(ref.key), self.suffix):
            return self._skip(ref, report, "not an image key")
        try:
            self.objects.head(ref.bucket, ref.key)
        except SourceGoneError:
            pass  # really gone: its sidecar goes too
        else:
            return self._skip(ref, report, "image exists (uploaded again); sidecar kept")
        key = sidecar_name(ref.key, self.suffix)
        sidecar = self.objects.read_sidecar(ref.bucket, key)
        if sidecar is None:
            return self._skip(ref, report, "no sidecar to delete")
        if not self.objects.delete_sidecar(ref.bucket, key, suffix=self.suffix, etag=sidecar.etag):
            return self._skip(ref, report, "sidecar changed meanwhile; kept")
        report.tally.deleted += 1
        _log(ref, "deleted", f"sidecar s3://{ref.bucket}/{key} deleted")
        return None

    @staticmethod
    def _skip(ref: ObjectRef, report: Report, reason: str) -> None:
        report.tally.skipped += 1
        _log(ref, "skipped", reason)


def _log(ref: ObjectRef, status: str, reason: str, *, level: int = logging.INFO) -> None:
    extra = {
        "bucket": ref.bucket,
        "key": ref.key,
        "status": status,
        "action": "delete",
        "reason": reason,
        "message_id": ref.message_id,
    }
    log.log(level, "%s %s (deletion)", status, ref.uri, extra=extra)
