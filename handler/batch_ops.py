"""S3 Batch Operations: one task per object, answered with the result S3 records.

S3 Batch Operations (AWS's engine for running a function over millions of objects,
from a manifest, with a per-object completion report) invokes the function with
``tasks`` and expects, for each, a ``resultCode``:

- ``Succeeded``: after this run the object has a current success sidecar (embedded
  now, or already current: replaying a job writes nothing); keys that need no sidecar
  (sidecars themselves, non-images, both common in an S3 Inventory manifest) succeed
  with a ``resultString`` saying they were skipped;
- ``PermanentFailure``: the object is missing, or the image is bad and got an error
  sidecar; ``resultString`` is the one-line reason;
- ``TemporaryFailure``: throttling, S3 trouble, the model unobtainable: S3 retries.

The embedding itself is the handler's ordinary path (:class:`Processor`); afterwards
each task's sidecar is read back and judged by the one currency rule
(:func:`dinoembed.results.sidecars.judge`), so ``Succeeded`` means what it says.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dinoembed.errors import DinoEmbedError, SourceGoneError, TransientError
from dinoembed.handler.events import BatchJob, ObjectRef
from dinoembed.handler.process import Processor, Report
from dinoembed.handler.s3io import S3Objects
from dinoembed.images.files import looks_like_image
from dinoembed.results.schema import SourceInfo
from dinoembed.results.sidecars import Recipe, Verdict, is_sidecar, judge, sidecar_name

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.data_classes.s3_batch_operation_event import (
        S3BatchOperationResponseRecord,
    )

log = logging.getLogger(__name__)

ResultCode = Literal["Succeeded", "TemporaryFailure", "PermanentFailure"]
MAX_RESULT_STRING = 1000  # the completion report keeps a short string per task


@dataclass(frozen=True, slots=True)
class TaskResult:
    code: ResultCode
    reason: str


class BatchOperations:
    """Runs the tasks of one S3 Batch Operations invocation."""

    def __init__(
        self,
        objects: S3Objects,
        processor: Processor,
        recipe: Callable[[], Recipe],
        output_suffix: str,
    ) -> None:
        self.objects = objects
        self.processor = processor
        self._recipe = recipe
        self.suffix = output_suffix

    def run(self, job: BatchJob, refs: list[ObjectRef]) -> tuple[dict[str, Any], Report]:
        """The response S3 expects, and what happened (for the metrics)."""
        results: dict[str, TaskResult] = {}
        to_embed: list[ObjectRef] = []
        for ref in refs:
            early = self._precheck(ref)
            if early is None:
                to_embed.append(self._with_meta(ref, results))
            else:
                results[_task(ref)] = early
        to_embed = [ref for ref in to_embed if _task(ref) not in results]
        report = self.processor.process(to_embed)
        failed = {_task(ref): why for ref, why in report.failed}
        for ref in to_embed:
            task = _task(ref)
            if task in failed:
                results[task] = TaskResult("TemporaryFailure", failed[task])
            else:
                results[task] = self._verify(ref)
        # Powertools' event classes: imported for a Batch Operations job only (~15 ms that
        # every other cold start would pay)
        from aws_lambda_powertools.utilities.data_classes.s3_batch_operation_event import (
            S3BatchOperationResponseRecord,
        )

        records = [
            S3BatchOperationResponseRecord(
                task_id=_task(ref),
                result_code=results[_task(ref)].code,
                result_string=_one_line(results[_task(ref)].reason),
            )
            for ref in refs
        ]
        for ref, record in zip(refs, records, strict=True):
            log.info(
                "batch task %s %s: %s",
                record.task_id,
                record.result_code,
                record.result_string,
                extra={"bucket": ref.bucket, "key": ref.key, "job_id": job.job_id},
            )
        return _response(job, records), report

    def _precheck(self, ref: ObjectRef) -> TaskResult | None:
        if is_sidecar(ref.key, self.suffix):
            return TaskResult("Succeeded", "skipped: a dinoembed sidecar")
        if not looks_like_image(Path(ref.key), self.suffix):
            return TaskResult("Succeeded", "skipped: not an image key")
        return None

    def _with_meta(self, ref: ObjectRef, results: dict[str, TaskResult]) -> ObjectRef:
        """The task's object with its current size and ETag (tasks carry neither)."""
        try:
            meta = self.objects.head(ref.bucket, ref.key)
        except SourceGoneError as err:
            results[_task(ref)] = TaskResult("PermanentFailure", f"object missing: {err}")
            return ref
        except TransientError as err:
            results[_task(ref)] = TaskResult("TemporaryFailure", str(err))
            return ref
        except DinoEmbedError as err:
            results[_task(ref)] = TaskResult("PermanentFailure", str(err))
            return ref
        return ObjectRef(
            bucket=ref.bucket,
            key=ref.key,
            size=meta.size,
            etag=meta.etag,
            version_id=meta.version_id,
            task_id=ref.task_id,
        )

    def _verify(self, ref: ObjectRef) -> TaskResult:
        """Read the sidecar back: is it current for the object as it was announced?"""
        key = sidecar_name(ref.key, self.suffix)
        try:
            sidecar = self.objects.read_sidecar(ref.bucket, key)
            recipe = self._recipe()
        except TransientError as err:
            return TaskResult("TemporaryFailure", str(err))
        except DinoEmbedError as err:
            return TaskResult("PermanentFailure", str(err))
        result = sidecar.result if sidecar else None
        image = SourceInfo(size=ref.size, etag=ref.etag, version_id=ref.version_id)
        verdict = judge(result, image, recipe)
        if verdict is Verdict.NEWER:
            return TaskResult("PermanentFailure", "sidecar written by a newer dinoembed; kept")
        if verdict is not Verdict.CURRENT or result is None:
            return TaskResult(
                "TemporaryFailure", "sidecar not current after this run (object changed?)"
            )
        if not result.ok:
            return TaskResult("PermanentFailure", result.error or "error sidecar written")
        return TaskResult("Succeeded", f"sidecar current: s3://{ref.bucket}/{key}")


def _task(ref: ObjectRef) -> str:
    assert ref.task_id is not None, "batch refs always carry their task id"
    return ref.task_id


def _one_line(text: str) -> str:
    return " ".join(text.split())[:MAX_RESULT_STRING]


def _response(job: BatchJob, records: list[S3BatchOperationResponseRecord]) -> dict[str, Any]:
    from aws_lambda_powertools.utilities.data_classes.s3_batch_operation_event import (
        S3BatchOperationResponse,
    )

    response = S3BatchOperationResponse(
        job.schema_version, job.invocation_id, "PermanentFailure", records
    )
    if len(records) == 1:  # what S3 sends today; Powertools' asdict() insists on exactly one
        return dict(response.asdict())
    return {
        "invocationSchemaVersion": response.invocation_schema_version,
        "treatMissingKeysAs": response.treat_missing_keys_as,
        "invocationId": response.invocation_id,
        "results": [record.asdict() for record in records],
    }
