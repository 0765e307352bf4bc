"""S3 prefixes for ``similar``, ``dupes``, ``export`` and ``backfill``.

- :func:`list_objects`: every object under a prefix (``list_objects_v2`` pages of 1,000);
- :class:`S3SidecarSource`: the sidecars under a prefix as a
  :class:`~dinoembed.collections.collection.SidecarSource` (stamp = the sidecar's own ETag),
  read concurrently on a small thread pool;
- :func:`list_prefix`: a prefix as a :class:`~dinoembed.results.coverage.Listing` (images with
  their ETag and size, sidecars read concurrently) for ``status`` and ``backfill --manifest``;
- :func:`write_manifest`: an S3 Batch Operations CSV manifest (``backfill --manifest``);
- backfill: the images without a current sidecar (the core's rule, as the Lambda
  handler decides), then either
  embedded here in batches by the handler's own :class:`~handler.process.Processor`
  (conditional writes included), or announced to the function's SQS queue as
  S3-notification-shaped messages (``send_message_batch``, 10 per call).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, quote_plus

from botocore.exceptions import BotoCoreError, ClientError

from dinoembed.common.atomic import write_atomic
from dinoembed.errors import ConfigError, SourceGoneError, TransientError
from dinoembed.handler.clients import make_aws_client
from dinoembed.handler.events import ObjectRef
from dinoembed.handler.observability import Tally
from dinoembed.handler.process import Processor
from dinoembed.handler.s3io import S3_CONCURRENCY, S3Objects, client_config, map_error
from dinoembed.images.files import looks_like_image
from dinoembed.pipeline import Pipeline
from dinoembed.results.coverage import Coverage, Listing, assess
from dinoembed.results.schema import EmbeddingResult, SourceInfo, utc_now
from dinoembed.results.sidecars import (
    Recipe,
    image_name,
    is_sidecar,
    parse_result,
)

log = logging.getLogger(__name__)

READ_WORKERS = S3_CONCURRENCY  # the client's pool is sized for these
SQS_BATCH = 10  # the most send_message_batch accepts
EMBED_CHUNK = 64  # objects handed to the processor at a time (progress granularity)
BACKFILL_ID = "dinoembed-backfill"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``."""
    if not uri.startswith("s3://"):
        raise ConfigError(f"{uri}: not an s3://bucket/prefix URI")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ConfigError(f"{uri}: no bucket name (expected s3://bucket/prefix)")
    return bucket, prefix


@dataclass(frozen=True, slots=True)
class Listed:
    key: str
    etag: str
    size: int


def list_objects(client: Any, bucket: str, prefix: str) -> Iterator[Listed]:
    """Every object under ``prefix``, page after page."""
    paginator = client.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield Listed(obj["Key"], obj["ETag"], int(obj["Size"]))
    except (ClientError, BotoCoreError, OSError) as err:
        raise map_error(err, f"ListObjectsV2 s3://{bucket}/{prefix}") from err


def read_objects(
    client: Any, bucket: str, keys: Sequence[str], *, workers: int = READ_WORKERS
) -> Iterator[tuple[str, bytes | None]]:
    """``(key, bytes)`` for each key, in order, fetched concurrently; None for a vanished one."""
    objects = S3Objects(client)

    def get(key: str) -> tuple[str, bytes | None]:
        try:
            return key, objects.read(bucket, key, etag=None, version_id=None)
        except SourceGoneError:
            return key, None

    if not keys:
        return
    with ThreadPoolExecutor(min(workers, len(keys)), thread_name_prefix="dinoembed-s3") as pool:
        yield from pool.map(get, keys)


def list_prefix(
    client: Any,
    bucket: str,
    prefix: str,
    suffix: str,
    *,
    workers: int = READ_WORKERS,
    on_listed: Callable[[int], None] = lambda n: None,
    on_read: Callable[[int], None] = lambda n: None,
) -> Listing:
    """Every image under the prefix (as listed: ETag and size) and the sidecars of those
    images, read concurrently; orphaned sidecars are listed but not read.

    ``on_listed(1)`` after each object listed, ``on_read(1)`` after each sidecar read:
    the caller's progress line (this module never prints).
    """
    images: dict[str, SourceInfo] = {}
    sidecar_keys: list[str] = []
    others: set[str] = set()
    for obj in list_objects(client, bucket, prefix):
        on_listed(1)
        if is_sidecar(obj.key, suffix):
            sidecar_keys.append(obj.key)
        elif looks_like_image(Path(obj.key), suffix):
            images[obj.key] = SourceInfo(size=obj.size, etag=obj.etag)
        else:
            others.add(obj.key)
    sidecars: dict[str, EmbeddingResult | None] = dict.fromkeys(sidecar_keys)
    to_read = [key for key in sidecar_keys if image_name(key, suffix) in images]
    for key, data in read_objects(client, bucket, to_read, workers=workers):
        sidecars[key] = None if data is None else parse_result(data)
        on_read(1)
    return Listing(f"s3://{bucket}/{prefix}", images, sidecars, frozenset(others))


def manifest_key(key: str) -> str:
    """A key as an S3 Batch Operations CSV manifest holds it: URL-encoded (UTF-8).

    ``/`` stays as it is; a space becomes ``%20`` and ``+`` ``%2B``, so the key decodes to
    itself under ``unquote`` and ``unquote_plus`` alike (S3 hands the manifest's encoded
    key to the function, which decodes it with ``unquote_plus``), and no ``,`` ``"`` or
    line break is left for the CSV to quote.
    """
    return quote(key, safe="/")


def write_manifest(path: Path, bucket: str, keys: Sequence[str]) -> None:
    """``bucket,key`` rows (format ``S3BatchOperations_CSV_20180820``, fields Bucket, Key),
    written atomically: a manifest is complete or absent."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerows((bucket, manifest_key(key)) for key in keys)
    write_atomic(path, buffer.getvalue().encode())


class S3SidecarSource:
    """The sidecars under ``s3://bucket/prefix``; names are keys, stamps their ETags."""

    def __init__(
        self, client: Any, bucket: str, prefix: str, suffix: str, *, workers: int = READ_WORKERS
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.suffix = suffix
        self.workers = workers

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def listing(self) -> dict[str, str]:
        return {
            obj.key: obj.etag
            for obj in list_objects(self.client, self.bucket, self.prefix)
            if is_sidecar(obj.key, self.suffix)
        }

    def read(self, names: Sequence[str]) -> Iterator[tuple[str, bytes | None]]:
        return read_objects(self.client, self.bucket, names, workers=self.workers)

    def open_image(self, sidecar: str) -> BinaryIO:
        """The image object (its key is the sidecar's minus the suffix), read whole: hashing
        needs every byte anyway, and a thumbnail decoder needs a seekable stream."""
        key = image_name(sidecar, self.suffix)
        if key is None:
            raise SourceGoneError(f"s3://{self.bucket}/{sidecar}: not a sidecar key, so no image")
        data = S3Objects(self.client).read(self.bucket, key, etag=None, version_id=None)
        return io.BytesIO(data)


@dataclass
class BackfillSummary:
    """What a backfill found and did; printed as one JSON line."""

    location: str
    images: int = 0
    current: int = 0
    todo: int = 0
    embedded: int = 0
    errors: int = 0
    skipped: int = 0
    failed: int = 0
    queued: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def stale_images(
    client: Any, bucket: str, prefix: str, suffix: str, recipe: Recipe
) -> tuple[list[ObjectRef], Coverage]:
    """Images under the prefix whose sidecar is missing or stale for ``recipe``, and the
    prefix's coverage: the same listing and the same counting as ``dinoembed status``."""
    listing = list_prefix(client, bucket, prefix, suffix)
    coverage = assess(listing, recipe, suffix)
    todo = [
        ObjectRef(bucket, key, size=listing.images[key].size, etag=listing.images[key].etag)
        for key in coverage.todo
    ]
    return todo, coverage


def embed_here(
    client: Any,
    refs: Sequence[ObjectRef],
    embedder: Pipeline,
    suffix: str,
    *,
    on_progress: Callable[[int], None] = lambda n: None,
) -> Tally:
    """Embed ``refs`` in this process and write their sidecars, as the function would;
    ``on_progress(n)`` after every chunk of ``n`` objects (the caller's progress line)."""
    processor = Processor(S3Objects(client), lambda: embedder, suffix)
    tally = Tally()
    for start in range(0, len(refs), EMBED_CHUNK):
        chunk = refs[start : start + EMBED_CHUNK]
        report = processor.process(chunk)
        tally.merge(report.tally)
        on_progress(len(chunk))
    return tally


def notification(ref: ObjectRef, region: str) -> dict[str, Any]:
    """An S3 ``ObjectCreated`` notification for ``ref``, as S3 would send it (key encoded)."""
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": region,
        "eventTime": utc_now(),
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": BACKFILL_ID},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": BACKFILL_ID,
            "bucket": {"name": ref.bucket, "arn": f"arn:aws:s3:::{ref.bucket}"},
            "object": {
                "key": quote_plus(ref.key, safe="/"),
                "size": ref.size,
                "eTag": (ref.etag or "").strip('"'),
            },
        },
    }
    return {"Records": [record]}


def send_to_queue(sqs: Any, queue_url: str, refs: Sequence[ObjectRef], region: str) -> int:
    """One message per object, 10 per ``send_message_batch``; returns how many were sent.

    Entries SQS refuses are retried once; what still fails raises :class:`QueueError`
    once everything else was sent.
    """
    sent = 0
    refused: list[str] = []
    for start in range(0, len(refs), SQS_BATCH):
        entries = [
            {"Id": str(i), "MessageBody": json.dumps(notification(ref, region))}
            for i, ref in enumerate(refs[start : start + SQS_BATCH])
        ]
        failed = _send_batch(sqs, queue_url, entries)
        if failed:
            failed = _send_batch(sqs, queue_url, [e for e in entries if e["Id"] in failed])
        sent += len(entries) - len(failed)
        refused.extend(refs[start + int(i)].key for i in failed)
    if refused:
        raise QueueError(f"SQS refused {len(refused)} message(s), e.g. for {refused[0]}")
    return sent


class QueueError(TransientError):
    """Some messages could not be queued; running backfill again sends them."""


def _send_batch(sqs: Any, queue_url: str, entries: list[dict[str, str]]) -> set[str]:
    try:
        resp = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
    except (ClientError, BotoCoreError, OSError) as err:
        raise map_error(err, f"SendMessageBatch {queue_url}") from err
    for failure in resp.get("Failed", []):
        log.warning("SQS refused a message: %s %s", failure.get("Code"), failure.get("Message"))
    return {str(f["Id"]) for f in resp.get("Failed", [])}


def make_sqs_client() -> Any:
    """An SQS client (endpoint and region from the standard AWS variables)."""
    return make_aws_client("sqs", client_config())
