"""S3 faults against the Lambda handler: moto's S3 plus real botocore responses injected
through the client's ``before-send`` event hook (what moto itself uses to answer).

Every test takes the ``s3_endpoint`` fixture (tests/s3_backends.py): the scenarios a real
server can stage run on moto *and* SeaweedFS (concurrent deliveries, a deletion racing
the read, a nearly full /tmp); the injected faults are ``moto_only``, because they are
answered in botocore (``before-send``, where moto also executes the request, or
``before-call``) and would test botocore rather than the server.

Documented outcomes (SPEC section 7, handler/process.py) checked here:

- throttling (SlowDown 503) and 500s on GetObject / PutObject / the sidecar read: the
  record is retried (SQS: exactly its message in ``batchItemFailures``; direct: raise),
  nothing is written for it, and a redelivery after the fault clears embeds it;
  botocore's own retries are bounded by ``AWS_MAX_ATTEMPTS``;
- a body cut short mid-transfer is transient too (not an error sidecar);
- an object deleted between the event and the read: skipped, not retried, no sidecar;
- AccessDenied on the image: an error sidecar saying so (a retry cannot help); on the
  sidecar write: the record is retried (it reaches the DLQ after 5 receives);
- the same event delivered to three invocations at once (own or shared execution
  environments): exactly one PutObject per image succeeds, every sidecar is current, the
  only ``batchItemFailures`` is the message that is not an S3 notification, and the CLI's
  ``backfill`` and ``dupes`` on the ``s3://`` prefix agree with what the function wrote;
- ``/tmp`` nearly full from a previous warm invocation: the model cannot be cached, every
  record is retried, nothing unverified stays in the cache; a killed download's own
  leftover is cleaned up and the cold start succeeds.

After every scenario each sidecar in the bucket parses completely (none half-written).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import json
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus, unquote, urlsplit

import pytest
from botocore.awsrequest import AWSResponse, HTTPHeaders
from botocore.exceptions import ClientError
from moto.core.botocore_stubber import MockRawResponse
from moto.s3.responses import S3Response
from PIL import Image

from dinoembed.cli import main
from dinoembed.errors import TransientError
from dinoembed.handler import app
from dinoembed.handler.observability import make_logger, make_metrics
from dinoembed.handler.s3io import make_client
from dinoembed.results.schema import EmbeddingResult, SourceInfo
from dinoembed.results.sidecars import Recipe, Verdict, judge
from dinoembed.settings import Settings
from tests.helpers import encode, tmpfs
from tests.test_lambda_support import BUCKET, SUFFIX, cold_lambda, load_event

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.reliability("S3 faults")
INJECTED = "faults injected in botocore: nothing for a real server to do"

PHOTOS = ("coffee", "chelsea", "rocket", "astronaut")


# --- events -------------------------------------------------------------------------------


def s3_record(client: S3Client, key: str) -> dict[str, Any]:
    """S3's notification record for ``key`` as uploaded (real size and ETag, encoded key)."""
    record = copy.deepcopy(load_event("s3_put.json")["Records"][0])
    obj = record["s3"]["object"]
    obj["key"] = quote_plus(key, safe="/")
    try:
        head = client.head_object(Bucket=BUCKET, Key=key)
    except ClientError:
        return record  # announced, but gone by now: the fixture's values stay
    obj["size"], obj["eTag"] = head["ContentLength"], head["ETag"].strip('"')
    return record


def direct_event(client: S3Client, keys: list[str]) -> dict[str, Any]:
    return {"Records": [s3_record(client, key) for key in keys]}


def message_id(key: str) -> str:
    return "msg-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def sqs_event(client: S3Client, keys: list[str]) -> dict[str, Any]:
    """One SQS message per key, each wrapping S3's notification (as the template wires it)."""
    template = load_event("sqs_batch.json")["Records"][0]
    records = []
    for key in keys:
        message = copy.deepcopy(template)
        message["messageId"] = message_id(key)
        message["body"] = json.dumps({"Records": [s3_record(client, key)]})
        records.append(message)
    return {"Records": records}


def failed_messages(response: dict[str, Any]) -> set[str]:
    return {item["itemIdentifier"] for item in response["batchItemFailures"]}


# --- faults -------------------------------------------------------------------------------


def _matches(request: Any, key: str) -> bool:
    return unquote(urlsplit(request.url).path).endswith("/" + key)


@dataclass
class Fault:
    """S3 answers ``status``/``code`` to ``operation`` on ``key`` for the first ``times``
    requests (None: always); ``hits`` counts every matching request.

    ``stage="send"`` answers at botocore's ``before-send``, where moto (which listens there
    too, and is still called) has already executed the request: right for reads, and for a
    write it models S3 failing *after* storing the object. ``stage="call"`` refuses the
    call before any request is made (as ``botocore.stub.Stubber`` does): nothing is stored.
    """

    operation: str
    key: str
    status: int = 503
    code: str = "SlowDown"
    times: int | None = None
    stage: str = "send"
    hits: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _fires(self, path: str) -> bool:
        if not unquote(path).endswith("/" + self.key):
            return False
        with self.lock:
            self.hits += 1
            return self.times is None or self.hits <= self.times

    def _error(self) -> dict[str, Any]:
        return {
            "Error": {"Code": self.code, "Message": "injected"},
            "ResponseMetadata": {"HTTPStatusCode": self.status},
        }

    def on_send(self, request: Any, **_: Any) -> AWSResponse | None:
        if not self._fires(urlsplit(request.url).path):
            return None
        body = f"<Error><Code>{self.code}</Code><Message>injected</Message></Error>"
        return AWSResponse(request.url, self.status, HTTPHeaders(), MockRawResponse(body))

    def on_call(self, params: dict[str, Any], **_: Any) -> tuple[AWSResponse, Any] | None:
        if not self._fires(params["url_path"]):
            return None
        url = "https://s3.amazonaws.com" + params["url_path"]
        http = AWSResponse(url, self.status, HTTPHeaders(), MockRawResponse(b""))
        return http, self._error()

    def install(self, client: Any) -> Fault:
        if self.stage == "send":
            client.meta.events.register_first(f"before-send.s3.{self.operation}", self.on_send)
        else:
            client.meta.events.register_first(f"before-call.s3.{self.operation}", self.on_call)
        return self


def cut_body(client: Any, key: str, data: bytes) -> list[int]:
    """GetObject of ``key`` answers 200 with the full Content-Length but half the bytes."""
    hits: list[int] = []

    def hook(request: Any, **_: Any) -> AWSResponse | None:
        if not _matches(request, key):
            return None
        hits.append(1)
        headers = HTTPHeaders()
        headers["Content-Length"] = str(len(data))
        return AWSResponse(request.url, 200, headers, MockRawResponse(data[: len(data) // 2]))

    client.meta.events.register_first("before-send.s3.GetObject", hook)
    return hits


def successful_puts(client: Any) -> list[str]:
    """Keys of PutObject calls S3 accepted (after-call sees every answer, errors included)."""
    keys: list[str] = []
    lock = threading.Lock()

    def hook(http_response: Any, context: Any, **_: Any) -> None:
        if http_response.status_code < 300:
            with lock:
                path = unquote(urlsplit(http_response.url).path).lstrip("/")
                keys.append(path.removeprefix(BUCKET + "/"))  # path- or virtual-host style

    client.meta.events.register("after-call.s3.PutObject", hook)
    return keys


# --- fixtures and checks ------------------------------------------------------------------


@pytest.fixture
def images(s3: S3Client, photos: dict[str, Image.Image]) -> list[str]:
    """Four real photos in the bucket."""
    keys = [f"in/{name} {i}.jpg" for i, name in enumerate(PHOTOS)]
    for key, name in zip(keys, PHOTOS, strict=True):
        s3.put_object(Bucket=BUCKET, Key=key, Body=encode(photos[name].resize((160, 120)), "JPEG"))
    return keys


def sidecars(client: S3Client) -> dict[str, EmbeddingResult]:
    """Every sidecar in the bucket, each parsed completely (a half-written one fails here)."""
    listing = client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    found = {}
    for obj in listing:
        if obj["Key"].endswith(SUFFIX):
            body = client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
            found[obj["Key"].removesuffix(SUFFIX)] = EmbeddingResult.model_validate_json(body)
    return found


def embedded(client: S3Client) -> set[str]:
    return {key for key, result in sidecars(client).items() if result.ok}


def invoke(event: dict[str, Any]) -> dict[str, Any]:
    return app.lambda_handler(event, None)


def client_of_the_function() -> Any:
    return app.runtime().s3_client


# --- throttling and 5xx -------------------------------------------------------------------

TRANSIENT = [(503, "SlowDown"), (500, "InternalError")]
OPERATIONS = [
    ("GetObject", "", "send"),  # reading the image
    ("GetObject", SUFFIX, "send"),  # reading its sidecar (the idempotency check)
    ("PutObject", SUFFIX, "call"),  # writing its sidecar (refused, nothing stored)
]


@pytest.mark.moto_only(INJECTED)
@pytest.mark.usefixtures("lam")
@pytest.mark.parametrize(("status", "code"), TRANSIENT, ids=["SlowDown-503", "500"])
@pytest.mark.parametrize(
    ("operation", "suffix", "stage"), OPERATIONS, ids=["image", "sidecar", "put"]
)
def test_sqs_transient_fault_fails_exactly_its_message_then_redelivery_embeds_it(
    s3: S3Client,
    images: list[str],
    operation: str,
    suffix: str,
    stage: str,
    status: int,
    code: str,
) -> None:
    # GIVEN S3 keeps answering `code` to one operation on one object of an SQS batch
    victim = images[1]
    fault = Fault(operation, victim + suffix, status, code, stage=stage).install(
        client_of_the_function()
    )
    puts = successful_puts(client_of_the_function())
    # WHEN the batch is processed
    response = invoke(sqs_event(s3, images))
    # THEN exactly that object's message is handed back, nothing is written for it
    assert fault.hits >= 1
    assert failed_messages(response) == {message_id(victim)}
    assert embedded(s3) == set(images) - {victim}
    assert sorted(puts) == sorted(key + SUFFIX for key in set(images) - {victim})
    # AND when SQS redelivers that message after the fault cleared, it is embedded
    fault.times = 0
    response = invoke(sqs_event(s3, [victim]))
    assert response == {"batchItemFailures": []}
    assert embedded(s3) == set(images)


@pytest.mark.moto_only(INJECTED)
@pytest.mark.usefixtures("lam")
@pytest.mark.parametrize(("status", "code"), TRANSIENT, ids=["SlowDown-503", "500"])
@pytest.mark.parametrize(
    ("operation", "suffix", "stage"), OPERATIONS, ids=["image", "sidecar", "put"]
)
def test_direct_event_with_a_transient_fault_raises_and_keeps_the_rest(
    s3: S3Client,
    images: list[str],
    operation: str,
    suffix: str,
    stage: str,
    status: int,
    code: str,
) -> None:
    # GIVEN a direct S3 event of four objects, one of which S3 keeps refusing
    victim = images[2]
    Fault(operation, victim + suffix, status, code, stage=stage).install(client_of_the_function())
    # WHEN it is invoked THEN it raises (Lambda retries, then the failure destination)
    with pytest.raises(TransientError, match="1 object\\(s\\) must be retried") as info:
        invoke(direct_event(s3, images))
    assert victim in str(info.value)
    # AND the other three were embedded; the retry of the whole event skips them
    assert embedded(s3) == set(images) - {victim}
    # WHEN Lambda retries the event (in a fresh execution environment) after the fault cleared
    app.reset()
    puts = successful_puts(client_of_the_function())
    response = invoke(direct_event(s3, images))
    # THEN only the victim is written; the other three are skipped as current
    assert response["embedded"] == 1 and response["skipped"] == 3
    assert puts == [victim + SUFFIX]


@pytest.mark.moto_only(INJECTED)
@pytest.mark.usefixtures("lam")
def test_500_after_s3_stored_the_sidecar_is_retried_then_skipped(
    s3: S3Client, images: list[str]
) -> None:
    # GIVEN S3 stores a sidecar but answers 500 (the write's outcome is unknown to the caller)
    victim = images[0]
    Fault("PutObject", victim + SUFFIX, 500, "InternalError").install(client_of_the_function())
    response = invoke(sqs_event(s3, images))
    assert failed_messages(response) == {message_id(victim)}
    stored = s3.head_object(Bucket=BUCKET, Key=victim + SUFFIX)["ETag"]
    # WHEN the message is redelivered (to a fresh environment)
    app.reset()
    puts = successful_puts(client_of_the_function())
    response = invoke(sqs_event(s3, [victim]))
    # THEN the stored sidecar is recognised as current: done, not written twice
    assert response == {"batchItemFailures": []}
    assert puts == []
    assert s3.head_object(Bucket=BUCKET, Key=victim + SUFFIX)["ETag"] == stored
    assert embedded(s3) == set(images)


@pytest.mark.moto_only(INJECTED)
@pytest.mark.parametrize(("fail_first", "embedded_after"), [(2, True), (5, False)])
def test_botocore_retries_throttling_a_bounded_number_of_times(
    monkeypatch: pytest.MonkeyPatch,
    s3: S3Client,
    images: list[str],
    tiny_model: Path,
    tmp_path: Path,
    fail_first: int,
    embedded_after: bool,
) -> None:
    # GIVEN the function's client allows 3 attempts and S3 throttles the first `fail_first`
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    with cold_lambda(monkeypatch, tmp_path / "cache", model_path=str(tiny_model)):
        fault = Fault("GetObject", images[0], times=fail_first).install(client_of_the_function())
        # WHEN the object is announced
        response = invoke(sqs_event(s3, images[:1]))
    # THEN botocore tried exactly 3 times, never more; 2 throttles are absorbed, 5 are not
    assert fault.hits == 3
    assert (response == {"batchItemFailures": []}) is embedded_after
    assert (images[0] in embedded(s3)) is embedded_after


@pytest.mark.moto_only(INJECTED)
@pytest.mark.usefixtures("lam")
def test_body_cut_short_is_retried_not_an_error_sidecar(s3: S3Client, images: list[str]) -> None:
    # GIVEN S3 drops the connection halfway through the image's body
    victim = images[0]
    data = s3.get_object(Bucket=BUCKET, Key=victim)["Body"].read()
    hits = cut_body(client_of_the_function(), victim, data)
    # WHEN its message is processed
    response = invoke(sqs_event(s3, images[:2]))
    # THEN the message is retried and no error sidecar records a network hiccup as bad input
    assert hits
    assert failed_messages(response) == {message_id(victim)}
    assert victim not in sidecars(s3)
    assert embedded(s3) == {images[1]}


# --- gone, forbidden ----------------------------------------------------------------------


@pytest.mark.usefixtures("lam")
def test_object_deleted_between_event_and_read_is_skipped(s3: S3Client, images: list[str]) -> None:
    # GIVEN a batch whose event names the object's size and ETag, and the object is deleted
    # just before the function reads it (after the sidecar check)
    victim = images[3]
    event = sqs_event(s3, images)
    reads: list[int] = []

    def delete_first(request: Any, **_: Any) -> None:
        if _matches(request, victim) and not reads:
            reads.append(1)
            s3.delete_object(Bucket=BUCKET, Key=victim)

    client_of_the_function().meta.events.register_first("before-send.s3.GetObject", delete_first)
    # WHEN the batch is processed
    response = invoke(event)
    # THEN nothing is retried, the deleted object has no sidecar, the rest were embedded
    assert reads == [1]
    assert response == {"batchItemFailures": []}
    assert set(sidecars(s3)) == set(images) - {victim}


@pytest.mark.moto_only(INJECTED)
@pytest.mark.usefixtures("lam")
def test_access_denied_on_the_image_writes_an_error_sidecar(
    s3: S3Client, images: list[str]
) -> None:
    # GIVEN the function may not read one object (e.g. encrypted with a key it cannot use)
    victim = images[0]
    Fault("GetObject", victim, 403, "AccessDenied").install(client_of_the_function())
    # WHEN the batch is processed
    response = invoke(sqs_event(s3, images))
    # THEN nothing is retried (a retry cannot help); its sidecar says what went wrong
    assert response == {"batchItemFailures": []}
    result = sidecars(s3)[victim]
    assert result.status == "error" and result.embedding is None
    assert result.error is not None and "AccessDenied" in result.error
    assert result.error.startswith("cannot read: GetObject") and "\n" not in result.error
    assert embedded(s3) == set(images) - {victim}


@pytest.mark.moto_only(INJECTED)
@pytest.mark.usefixtures("lam")
def test_access_denied_on_the_sidecar_write_retries_the_record(
    s3: S3Client, images: list[str]
) -> None:
    # GIVEN the function may not write one sidecar (a policy changed under it)
    victim = images[1]
    fault = Fault("PutObject", victim + SUFFIX, 403, "AccessDenied", stage="call")
    fault.install(client_of_the_function())
    # WHEN the batch is processed
    response = invoke(sqs_event(s3, images))
    # THEN the record goes back to the queue (after 5 receives: the DLQ), nothing is lost
    assert failed_messages(response) == {message_id(victim)}
    assert set(sidecars(s3)) == set(images) - {victim}


# --- the same event twice, at the same time -----------------------------------------------


@pytest.fixture
def atomic_conditional_puts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real S3 evaluates If-None-Match and stores the object atomically; moto checks, then
    stores, so two threads could both pass the check. Give moto S3's atomicity (no effect
    on SeaweedFS, whose own atomicity is what the ``[seaweedfs]`` cases test)."""
    lock = threading.Lock()
    original = S3Response.put_object

    def put_object(self: S3Response) -> Any:
        with lock:
            return original(self)

    monkeypatch.setattr(S3Response, "put_object", put_object)


DELIVERIES = 3


def environments(how: str) -> list[app.Runtime]:
    """``DELIVERIES`` execution environments, cold (own client, own model), or one shared
    by every delivery (a warm environment running the invocations on threads)."""
    count = DELIVERIES if how == "own" else 1
    runtimes = [
        app.Runtime(Settings(), make_client(), make_logger(), make_metrics()) for _ in range(count)
    ]
    return runtimes * (DELIVERIES // count)


def hold_puts_until_all_arrive(runtimes: list[app.Runtime], key: str) -> None:
    """The PutObject of ``key``'s sidecar waits until every delivery has reached it: all of
    them are then past their sidecar check, and race on the conditional write."""
    all_ready = threading.Barrier(DELIVERIES, timeout=60)

    def wait_for_the_others(request: Any, **_: Any) -> None:
        if _matches(request, key + SUFFIX):
            all_ready.wait()

    for rt in unique(runtimes):
        rt.s3_client.meta.events.register_first("before-send.s3.PutObject", wait_for_the_others)


def unique(runtimes: list[app.Runtime]) -> list[app.Runtime]:
    return list({id(rt): rt for rt in runtimes}.values())


def sidecar_etags(client: S3Client) -> dict[str, str]:
    listing = client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return {obj["Key"]: obj["ETag"] for obj in listing if obj["Key"].endswith(SUFFIX)}


def assert_current(client: S3Client, keys: list[str], model: Path) -> None:
    """Each key's sidecar records the object as it is now and the model file's digest
    (hashed here, not taken from the code), and the one currency rule agrees."""
    found = sidecars(client)
    for key in keys:
        head = client.head_object(Bucket=BUCKET, Key=key)
        result = found[key]
        assert result.source.etag == head["ETag"] and result.source.size == head["ContentLength"]
        assert result.model.sha256 == hashlib.sha256(model.read_bytes()).hexdigest()
        image = SourceInfo(size=head["ContentLength"], etag=head["ETag"])
        assert judge(result, image, Recipe(result.model, normalize=True)) is Verdict.CURRENT


@pytest.mark.usefixtures("atomic_conditional_puts")
@pytest.mark.parametrize("how", ["own", "shared"])
@pytest.mark.parametrize("shape", ["sqs", "direct"])
def test_same_event_in_three_concurrent_invocations_writes_one_sidecar_each(
    monkeypatch: pytest.MonkeyPatch,
    s3: S3Client,
    images: list[str],
    tiny_model: Path,
    tmp_path: Path,
    shape: str,
    how: str,
) -> None:
    # GIVEN three deliveries of the same event, all past their sidecar check before any writes
    keys = images[:2]
    event = sqs_event(s3, keys) if shape == "sqs" else direct_event(s3, keys)
    with cold_lambda(monkeypatch, tmp_path / "cache", model_path=str(tiny_model)):
        runtimes = environments(how)
        puts = [successful_puts(rt.s3_client) for rt in unique(runtimes)]
        hold_puts_until_all_arrive(runtimes, keys[0])
        # WHEN they run at once
        responses = run_concurrently(monkeypatch, runtimes, event)
    # THEN each sidecar was written exactly once, by one of them, and is complete and current
    assert sorted(itertools.chain.from_iterable(puts)) == sorted(key + SUFFIX for key in keys)
    assert embedded(s3) == set(keys)
    assert_current(s3, keys, tiny_model)
    # AND every invocation reports success: the losers count the object as done
    if shape == "sqs":
        assert responses == [{"batchItemFailures": []}] * DELIVERIES
    else:
        assert sum(r["embedded"] for r in responses) == len(keys)
        assert sum(r["skipped"] for r in responses) == len(keys) * (DELIVERIES - 1)


@pytest.mark.usefixtures("atomic_conditional_puts")
@pytest.mark.parametrize("how", ["own", "shared"])
def test_three_deliveries_of_one_sqs_batch_then_backfill_and_dupes_agree(
    monkeypatch: pytest.MonkeyPatch,
    s3: S3Client,
    images: list[str],
    tiny_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    how: str,
) -> None:
    # GIVEN a batch of four photos, a byte-identical copy of one, a file that is not an image,
    # and a message that is not an S3 notification; delivered three times at once
    copy_key, broken = "in/copy of coffee.jpg", "in/broken.jpg"
    original = s3.get_object(Bucket=BUCKET, Key=images[0])["Body"].read()
    s3.put_object(Bucket=BUCKET, Key=copy_key, Body=original)
    s3.put_object(Bucket=BUCKET, Key=broken, Body=b"not a JPEG at all")
    keys = [*images, copy_key, broken]
    event = sqs_event(s3, keys)
    garbage = {**event["Records"][0], "messageId": "not-s3", "body": '{"hello": "world"}'}
    event["Records"].append(garbage)
    with cold_lambda(monkeypatch, tmp_path / "cache", model_path=str(tiny_model)):
        runtimes = environments(how)
        puts = [successful_puts(rt.s3_client) for rt in unique(runtimes)]
        hold_puts_until_all_arrive(runtimes, images[0])
        # WHEN the three deliveries run at once
        responses = run_concurrently(monkeypatch, runtimes, event)
    # THEN each hands back only the message that is not an S3 notification
    assert responses == [{"batchItemFailures": [{"itemIdentifier": "not-s3"}]}] * DELIVERIES
    # AND every object got exactly one sidecar, current; the broken one an error sidecar
    assert sorted(itertools.chain.from_iterable(puts)) == sorted(key + SUFFIX for key in keys)
    assert_current(s3, keys, tiny_model)
    assert embedded(s3) == set(keys) - {broken}
    assert (sidecars(s3)[broken].error or "").startswith("not an image")
    # WHEN the command line backfills the prefix with the same model
    prefix = f"s3://{BUCKET}/in/"
    written = sidecar_etags(s3)
    capsys.readouterr()  # the function's own JSON log lines (Powertools logs to stdout)
    code = main(["backfill", prefix, "--model", str(tiny_model)])
    summary = json.loads(capsys.readouterr().out)
    # THEN it finds the function's sidecars current and writes nothing; the broken image's
    # error sidecar counts as an error, as `status` counts it (exit 1)
    assert code == 1
    assert (summary["images"], summary["todo"], summary["embedded"]) == (len(keys), 0, 0)
    assert (summary["current"], summary["errors"]) == (len(keys) - 1, 1)
    assert sidecar_etags(s3) == written
    # AND `dupes` finds the byte-identical copy among the function's sidecars
    assert main(["dupes", prefix, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    exact = [sorted(g["paths"]) for g in doc["groups"] if g["kind"] == "exact"]
    assert exact == [sorted(f"s3://{BUCKET}/{key}" for key in (images[0], copy_key))]
    assert doc["images"] == len(keys) - 1  # the error sidecar is no image to compare


def run_concurrently(
    monkeypatch: pytest.MonkeyPatch, runtimes: list[app.Runtime], event: dict[str, Any]
) -> list[dict[str, Any]]:
    """``lambda_handler`` on one thread per execution environment."""
    local = threading.local()
    monkeypatch.setattr(app, "runtime", lambda: local.runtime)
    publish_lock = threading.Lock()  # Powertools' metric set is per process, not per thread
    real_publish = app.publish

    def publish(*args: Any) -> None:
        with publish_lock:
            real_publish(*args)

    monkeypatch.setattr(app, "publish", publish)
    results: list[Any] = [None] * len(runtimes)

    def run(i: int) -> None:
        local.runtime = runtimes[i]
        try:
            results[i] = app.lambda_handler(copy.deepcopy(event), None)
        except Exception as err:  # reported by the assertion below
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(runtimes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(isinstance(r, Exception) for r in results), results
    return results


# --- /tmp nearly full ---------------------------------------------------------------------

MODEL_KEY = "models/tiny.onnx"  # in the images' bucket: not an image key, never embedded


@pytest.fixture
def tiny_tmp(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs standing in for the execution environment's /tmp."""
    with tmpfs(tmp_path / "tmp", "64k") as mount:
        yield mount


@pytest.fixture
def model_in_s3(s3: S3Client, tiny_model: Path) -> dict[str, str]:
    """The model in S3 and the settings that point the function at it."""
    s3.put_object(Bucket=BUCKET, Key=MODEL_KEY, Body=tiny_model.read_bytes())
    sha = hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    return {"model_url": f"s3://{BUCKET}/{MODEL_KEY}", "model_sha256": sha}


def fill(path: Path, leave: int) -> None:
    """Write junk into ``path`` until less than ``leave`` bytes are free on its filesystem."""
    chunk = b"\0" * 4096
    # ENOSPC ends the loop: the filesystem is full
    with path.open("wb", buffering=0) as out, contextlib.suppress(OSError):
        while out.write(chunk):
            pass
    os.truncate(path, max(0, path.stat().st_size - leave + 4096))
    assert shutil.disk_usage(path.parent).free < leave


def test_tmp_nearly_full_retries_every_record_and_caches_nothing(
    monkeypatch: pytest.MonkeyPatch,
    s3: S3Client,
    images: list[str],
    tiny_tmp: Path,
    tiny_model: Path,
    model_in_s3: dict[str, str],
) -> None:
    # GIVEN a previous warm invocation left /tmp with less room than the model needs
    junk = tiny_tmp / "left-by-a-previous-invocation.bin"
    fill(junk, leave=8192)
    assert tiny_model.stat().st_size > 8192
    cache = tiny_tmp / "dinoembed"
    with cold_lambda(monkeypatch, cache, **model_in_s3):
        # WHEN a batch arrives on the cold start
        response = invoke(sqs_event(s3, images))
        loads = app.runtime().model_loads
    # THEN every message is retried, nothing is written, and no partial model stays behind
    assert failed_messages(response) == {message_id(key) for key in images}
    assert loads == 0
    assert sidecars(s3) == {}
    assert [p.name for p in cache.rglob("*") if p.is_file() and p.suffix != ".lock"] == []
    # AND once the space is back, the redelivered batch is embedded in full
    junk.unlink()
    with cold_lambda(monkeypatch, cache, **model_in_s3):
        assert invoke(sqs_event(s3, images)) == {"batchItemFailures": []}
    assert embedded(s3) == set(images)


def test_partial_download_left_by_a_killed_invocation_is_cleaned_up(
    monkeypatch: pytest.MonkeyPatch,
    s3: S3Client,
    images: list[str],
    tiny_tmp: Path,
    tiny_model: Path,
    model_in_s3: dict[str, str],
) -> None:
    # GIVEN the previous invocation was killed mid-download, leaving its partial file to
    # take up nearly all of /tmp
    source = model_in_s3
    models = tiny_tmp / "dinoembed" / "models"
    models.mkdir(parents=True)
    fill(models / f".{source['model_sha256']}.killed.part", leave=8192)
    # WHEN the next cold start needs the model
    with cold_lambda(monkeypatch, tiny_tmp / "dinoembed", **source):
        response = invoke(direct_event(s3, images))
    # THEN it removes the leftover, downloads, verifies, and embeds everything
    assert response["embedded"] == len(images)
    assert sorted(p.name for p in models.iterdir() if p.suffix != ".lock") == [
        f"{source['model_sha256']}.onnx",
    ]
    assert embedded(s3) == set(images)
