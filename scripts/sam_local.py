"""The function under the AWS SAM CLI's own emulator: scripts/sam-local's second half.

scripts/sam-local has started a private dockerd (``DOCKER_HOST``) holding a stand-in
for the Lambda base image. This script, run by it with the project's .venv:

1. writes the ViT-S/14 stand-in model (87 MB, random weights: not real embeddings);
2. ``sam build``s the project twice: the stand-in bundled (``DINOEMBED_BUNDLE_MODEL``),
   and plain, for a model fetched from ``s3://`` on a cold start;
3. starts a moto server on 127.0.0.1 (S3 for the function; STS for the SAM CLI, which
   asks for the account id on every invoke) and uploads the images the events name;
4. runs ``sam local invoke`` with the events of infra/events/ (S3 put, SQS batch,
   EventBridge Object Created and Object Deleted, S3 Batch Operations 2.0), adapted to
   the local bucket and objects, each one in a new container (a cold start);
5. runs ``sam local start-lambda`` (warm containers) and invokes it with boto3's Lambda
   client: an SQS batch (cold: the model loads), S3 puts (warm), the batch again;
6. runs the plain build with ``ModelUrl=s3://...`` (the model downloaded at cold start);
7. checks every response and every sidecar (status success, 384 dimensions, the
   stand-in's sha256, the image's ETag), the deleted image's sidecar gone, and that no
   process it or scripts/sam-local started listens beyond loopback;
8. stops what it started, by PID, and prints the timings.

Exit status 0 only when every check passed. The work folder (``--work``) keeps the
builds, the events, env.json and each command's output until scripts/sam-local removes it.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import ipaddress
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, unquote_plus

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from PIL import Image

from dinoembed.settings import DEFAULT_OUTPUT_SUFFIX

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "infra" / "events"
FIXTURE_BUCKET = "dinoembed-example-bucket"  # the bucket infra/events/ name
BUCKET = "dinoembed-sam-local"
MODEL_BUCKET = "dinoembed-sam-local-models"
MODEL_KEY = "models/dinov2_vits14_standin.onnx"
REGION = "us-east-1"
FUNCTION = "EmbedFunction"
SUFFIX = DEFAULT_OUTPUT_SUFFIX  # the template's OutputSuffix default
DIM = 384  # ViT-S/14
PYENV_VERSION = "3.12.1:3.11.7"  # sam build needs the runtime's Python 3.12 on PATH
GARBAGE_MESSAGE = "a8f3c1d2-0b9e-4f6a-9c7d-3e2b1a0f9e8d"  # sqs_batch.json's "this is not JSON"
INVOKE_TIMEOUT = 600.0


class CheckError(Exception):
    """Something SAM ran did not do what the function promises."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckError(message)


def say(message: str) -> None:
    print(message, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CheckError(f"{what} exited ({process.returncode}) before listening on {port}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise CheckError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def stop(process: subprocess.Popen[bytes], first: int = signal.SIGTERM, grace: float = 30) -> None:
    """Stop a process this script started, by its PID: ``first``, then SIGKILL."""
    if process.poll() is not None:
        return
    for sig, wait in ((first, grace), (signal.SIGKILL, 10.0)):
        os.kill(process.pid, sig)
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def picture(seed: int, fmt: str) -> bytes:
    """A small photo-like image (a gradient and a few blocks), in ``fmt``."""
    width, height = 320 + 16 * seed, 240
    image = Image.new("RGB", (width, height))
    image.putdata(
        [
            ((x * 255) // width, (y * 255) // height, (seed * 53) % 256)
            for y in range(height)
            for x in range(width)
        ]
    )
    for i in range(4):
        box = (20 + 60 * i, 30 + 10 * seed, 60 + 60 * i, 90 + 10 * seed)
        image.paste(((seed + i) * 71 % 256, i * 40, 200), box)
    out = io.BytesIO()
    if fmt == "HEIF":
        from pillow_heif import register_heif_opener

        register_heif_opener()
    image.save(out, fmt)
    return out.getvalue()


# --- Listening sockets --------------------------------------------------------------------


def _listening_inodes() -> dict[int, str]:
    """TCP sockets in LISTEN state in this network namespace: inode -> address:port."""
    found: dict[int, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            address_hex, port_hex = fields[1].split(":")
            raw = bytes.fromhex(address_hex)
            # /proc prints each 32-bit word in host (little-endian) order
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            address = ipaddress.ip_address(words)
            found[int(fields[9])] = f"{address}:{int(port_hex, 16)}"
    return found


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.rsplit(":", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def _started_here(pid: int, owner_pid: int, exec_root: str) -> bool:
    """Started by scripts/sam-local (``owner_pid``), or in a container of its dockerd (whose
    containerd-shim, reparented away from it, names the exec root's containerd socket)."""
    while pid > 1:
        if pid == owner_pid or exec_root in _cmdline(pid):
            return True
        pid = _parent(pid)
    return False


def public_listeners(owner_pid: int, exec_root: str) -> list[str]:
    """Listening sockets beyond loopback held by a process started here."""
    public = {inode: addr for inode, addr in _listening_inodes().items() if not _is_loopback(addr)}
    problems = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            links = [str(fd.readlink()) for fd in (proc / "fd").iterdir()]
            for link in links:
                if link.startswith("socket:["):
                    inode = int(link[8:-1])
                    if inode in public and _started_here(int(proc.name), owner_pid, exec_root):
                        problems.append(f"{public[inode]} ({_cmdline(int(proc.name))[:120]})")
        except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError):
            continue  # gone meanwhile, or not ours to read
    return problems


# --- The run ------------------------------------------------------------------------------


@dataclass
class Timings:
    rows: list[tuple[str, float]] = field(default_factory=list)

    def add(self, what: str, seconds: float) -> None:
        self.rows.append((what, seconds))

    @contextmanager
    def timed(self, what: str) -> Iterator[None]:
        start = time.monotonic()
        yield
        self.add(what, time.monotonic() - start)


@dataclass
class Invoked:
    response: Any
    seconds: float
    report: str  # the emulator's REPORT line ("" through start-lambda)


class SamLocal:
    def __init__(self, args: argparse.Namespace) -> None:
        self.work: Path = args.work
        self.sam = str(Path(args.sam).resolve())
        self.arch: str = args.arch
        self.owner_pid: int = args.owner_pid
        self.exec_root: str = args.exec_root
        self.started: float = args.started
        self.timings = Timings()
        self.processes: list[subprocess.Popen[bytes]] = []
        self.s3_port = free_port()
        self.s3_url = f"http://127.0.0.1:{self.s3_port}"
        self.model = self.work / "model" / "dinov2_vits14_standin.onnx"
        self.model_sha256 = ""
        self.s3: Any = None
        self.count = 0
        self.passed: list[str] = []
        self.failed: list[str] = []

    # -- environment --

    def sam_env(self) -> dict[str, str]:
        """The SAM CLI's environment: fake credentials, STS on the moto server, no metadata
        service, nothing of the caller's AWS or dinoembed configuration."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DINOEMBED_"))}
        (self.work / "tmp").mkdir(exist_ok=True)
        env.update(
            SAM_CLI_TELEMETRY="0",
            PYENV_VERSION=PYENV_VERSION,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION=REGION,
            AWS_ENDPOINT_URL_STS=self.s3_url,
            AWS_EC2_METADATA_DISABLED="true",
            AWS_CONFIG_FILE=str(self.work / "no-aws-config"),
            AWS_SHARED_CREDENTIALS_FILE=str(self.work / "no-aws-credentials"),
            # SAM's image-build lock files: private to this run
            TMPDIR=str(self.work / "tmp"),
        )
        return env

    def overrides(self, **extra: str) -> list[str]:
        params = {"BucketName": BUCKET, "ModelSha256": self.model_sha256, **extra}
        if self.arch != "x86_64":  # the template's default; SAM picks the base image by it
            params["Architecture"] = self.arch
        return ["--parameter-overrides", " ".join(f"{k}={v}" for k, v in params.items())]

    def run(
        self, argv: Sequence[str], *, cwd: Path, env: dict[str, str], timeout: float, log: str
    ) -> subprocess.CompletedProcess[str]:
        shown = " ".join(argv).replace(self.sam, "sam")
        say(f"\n$ {shown}")
        proc = subprocess.run(
            list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
        logs = self.work / "logs"
        logs.mkdir(exist_ok=True)
        name = "".join(c if c.isalnum() else "-" for c in log)
        (logs / f"{name}.out").write_text(proc.stdout)
        (logs / f"{name}.err").write_text(proc.stderr)
        if proc.returncode != 0:
            say(proc.stdout[-3000:] + proc.stderr[-6000:])
            raise CheckError(f"{shown}: exit status {proc.returncode}")
        return proc

    # -- steps --

    def make_model(self) -> None:
        self.model.parent.mkdir(parents=True)
        dinoembed = Path(sys.executable).parent / "dinoembed"
        with self.timings.timed("stand-in model written (87 MB)"):
            subprocess.run([str(dinoembed), "model", "standin", str(self.model)], check=True)
        self.model_sha256 = sha256_file(self.model)
        say(f"stand-in model (random weights, not DINOv2): sha256 {self.model_sha256}")

    def build(self, name: str, bundle: bool) -> Path:
        env = self.sam_env()
        if bundle:
            env["DINOEMBED_BUNDLE_MODEL"] = str(self.model)
            env["DINOEMBED_BUNDLE_SHA256"] = self.model_sha256
        if self.arch == "arm64":
            env["LAMBDA_ARCH"] = "arm64"
        out = self.work / name
        argv = [self.sam, "build", "--build-dir", str(out)]
        if self.arch == "arm64":
            argv += ["--parameter-overrides", "Architecture=arm64"]
        what = "bundled (stand-in model)" if bundle else "plain (model from s3://)"
        with self.timings.timed(f"sam build, {what}"):
            proc = self.run(argv, cwd=ROOT, env=env, timeout=1200, log=f"build-{name}")
        output = (proc.stdout + proc.stderr).splitlines()
        say("\n".join(line for line in output if line.startswith("Lambda package")))
        check((out / FUNCTION / "model").is_dir() == bundle, f"{name}: model/ folder {bundle=}")
        return out

    def start_s3(self) -> None:
        moto = Path(sys.executable).parent / "moto_server"
        log = (self.work / "moto.log").open("wb")
        process = subprocess.Popen(
            [str(moto), "-H", "127.0.0.1", "-p", str(self.s3_port)], stdout=log, stderr=log
        )
        self.processes.append(process)
        wait_for_port(self.s3_port, process, 60, "moto server")
        say(f"moto server (S3, STS) on {self.s3_url}, pid {process.pid}")
        self.s3 = boto3.client(
            "s3",
            endpoint_url=self.s3_url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        self.s3.create_bucket(Bucket=BUCKET)
        self.s3.create_bucket(Bucket=MODEL_BUCKET)
        env_json = {FUNCTION: {"AWS_ENDPOINT_URL": self.s3_url}}
        (self.work / "env.json").write_text(json.dumps(env_json, indent=2) + "\n")

    def upload(self, key: str, fmt: str = "JPEG") -> None:
        self.count += 1
        self.s3.put_object(Bucket=BUCKET, Key=key, Body=picture(self.count, fmt))

    # -- events --

    def fixture(self, name: str) -> dict[str, Any]:
        """An event of infra/events/, naming the local bucket."""
        text = (EVENTS / name).read_text().replace(FIXTURE_BUCKET, BUCKET)
        return dict(json.loads(text))

    def stamp(self, event: dict[str, Any]) -> dict[str, Any]:
        """``event`` with each named object's real size and ETag (as S3 would send them)."""

        def fix(obj: dict[str, Any], etag_field: str) -> None:
            try:
                head = self.s3.head_object(Bucket=BUCKET, Key=unquote_plus(obj["key"]))
            except ClientError:
                return  # a deleted or never-uploaded object keeps the fixture's values
            obj["size"] = head["ContentLength"]
            obj[etag_field] = head["ETag"].strip('"')

        def walk(node: Any) -> Any:
            if isinstance(node, list):
                return [walk(child) for child in node]
            if not isinstance(node, dict):
                return node
            if isinstance(node.get("s3"), dict) and "object" in node["s3"]:
                fix(node["s3"]["object"], "eTag")
            if node.get("source") == "aws.s3" and isinstance(node.get("detail"), dict):
                fix(node["detail"]["object"], "etag")
            for name, value in node.items():
                if name in ("body", "Message") and isinstance(value, str) and value[:1] == "{":
                    node[name] = json.dumps(walk(json.loads(value)))
                else:
                    node[name] = walk(value)
            return node

        return dict(walk(copy.deepcopy(event)))

    def s3_put(self, key: str) -> dict[str, Any]:
        event = self.fixture("s3_put.json")
        event["Records"][0]["s3"]["object"]["key"] = quote_plus(key, safe="/")
        return self.stamp(event)

    def sqs_batch(self, keys: Sequence[str]) -> dict[str, Any]:
        template = self.fixture("sqs_batch.json")["Records"][0]
        records = []
        for i, key in enumerate(keys):
            record = copy.deepcopy(template)
            record["messageId"] = f"00000000-0000-4000-8000-{i:012d}"
            record["body"] = json.dumps(self.s3_put(key))
            records.append(record)
        return {"Records": records}

    def write_event(self, name: str, event: dict[str, Any]) -> str:
        (self.work / "events").mkdir(exist_ok=True)
        (self.work / "events" / name).write_text(json.dumps(event, indent=2) + "\n")
        return f"events/{name}"

    # -- invocations --

    def invoke(self, build: Path, event: str, label: str, **params: str) -> Invoked:
        argv = [
            self.sam, "local", "invoke", FUNCTION,
            "-t", f"{build.name}/template.yaml",
            "-e", event,
            "--env-vars", "env.json",
            "--skip-pull-image",
            *self.overrides(**params),
        ]  # fmt: skip
        start = time.monotonic()
        proc = self.run(argv, cwd=self.work, env=self.sam_env(), timeout=INVOKE_TIMEOUT, log=label)
        seconds = time.monotonic() - start
        report = next((ln for ln in proc.stderr.splitlines() if ln.startswith("REPORT ")), "")
        try:
            response, _ = json.JSONDecoder().raw_decode(proc.stdout.lstrip())
        except ValueError as err:
            say(proc.stderr[-6000:])
            raise CheckError(f"{label}: no JSON response on stdout: {proc.stdout[:500]!r}") from err
        say(json.dumps(response))
        say(report.replace("\t", "  ").strip())
        if isinstance(response, dict) and "errorMessage" in response:
            say(proc.stderr[-6000:])
            raise CheckError(f"{label}: the function failed: {response['errorMessage']}")
        self.timings.add(f"sam local invoke, {label}", seconds)
        return Invoked(response, seconds, report)

    # -- checks --

    def sidecar(self, key: str) -> dict[str, Any]:
        """The sidecar of ``key``, checked: a success from the stand-in, for this object."""
        try:
            body = self.s3.get_object(Bucket=BUCKET, Key=key + SUFFIX)["Body"].read()
        except ClientError as err:
            raise CheckError(f"no sidecar for {key}: {err}") from err
        result = json.loads(body)
        head = self.s3.head_object(Bucket=BUCKET, Key=key)
        check(result.get("status") == "success", f"{key}: sidecar status {result.get('status')}")
        embedding = result.get("embedding") or {}
        vector = embedding.get("embedding") or []
        check(len(vector) == DIM and embedding.get("embedding_dim") == DIM, f"{key}: not {DIM}-dim")
        check(all(isinstance(x, float) for x in vector), f"{key}: non-float values")
        model = result.get("model", {}).get("sha256")
        check(model == self.model_sha256, f"{key}: model sha256 {model}, not the stand-in's")
        etag, actual = str(result.get("source", {}).get("etag")), str(head["ETag"])
        check(etag.strip('"') == actual.strip('"'), f"{key}: sidecar of ETag {etag}, not {actual}")
        check(
            result.get("file_path") == f"s3://{BUCKET}/{key}", f"{key}: {result.get('file_path')}"
        )
        return result

    def sidecar_etag(self, key: str) -> str:
        return str(self.s3.head_object(Bucket=BUCKET, Key=key + SUFFIX)["ETag"])

    def no_sidecar(self, key: str) -> None:
        try:
            self.s3.head_object(Bucket=BUCKET, Key=key + SUFFIX)
        except ClientError:
            return
        raise CheckError(f"{key}: the sidecar is still there")

    def no_public_listeners(self, when: str) -> None:
        problems = public_listeners(self.owner_pid, self.exec_root)
        check(not problems, f"{when}: listening beyond loopback: {problems}")
        say(f"listening sockets checked ({when}): all on loopback")

    # -- phases --

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """One invocation and its checks: counted in the closing "N passed, N failed" line."""
        try:
            yield
        except BaseException:
            self.failed.append(name)
            raise
        self.passed.append(name)

    def invokes(self, build: Path) -> None:
        """Each event of infra/events/ through `sam local invoke` (a new container each)."""
        self.upload("photos/red flower.jpg")
        self.upload("photos/cat.jpg")
        self.upload("photos/café été.jpeg")
        self.upload("photos/IMG_0001.HEIC", "HEIF")
        empty = {"embedded": 0, "errors": 0, "skipped": 0, "deleted": 0}

        with self.step("sam local invoke: S3 put"):
            event = self.write_event("s3_put.json", self.stamp(self.fixture("s3_put.json")))
            got = self.invoke(build, event, "S3 put (first: SAM builds its emulator image)")
            check(got.response == {"kind": "s3", **empty, "embedded": 1}, f"S3 put: {got}")
            first = self.sidecar("photos/red flower.jpg")

        with self.step("sam local invoke: SQS batch"):
            event = self.write_event("sqs_batch.json", self.stamp(self.fixture("sqs_batch.json")))
            got = self.invoke(build, event, "SQS batch")
            # cat.jpg embedded; red flower.jpg (through SNS) already current; the garbage
            # message handed back; the missing object and the test event skipped.
            failures = [{"itemIdentifier": GARBAGE_MESSAGE}]
            check(got.response == {"batchItemFailures": failures}, f"SQS: {got.response}")
            self.sidecar("photos/cat.jpg")
            check(self.sidecar("photos/red flower.jpg") == first, "a current sidecar was rewritten")

        with self.step("sam local invoke: EventBridge Object Created"):
            created = self.stamp(self.fixture("eventbridge_object_created.json"))
            event = self.write_event("eventbridge_object_created.json", created)
            got = self.invoke(build, event, "EventBridge Object Created")
            expected = {"kind": "eventbridge", **empty, "embedded": 1}
            check(got.response == expected, f"EventBridge: {got.response}")
            self.sidecar("photos/café été.jpeg")

        with self.step("sam local invoke: S3 Batch Operations 2.0"):
            batch = self.fixture("s3_batch_v2.json")
            batch["tasks"][0]["s3Key"] = quote_plus("photos/IMG_0001.HEIC", safe="/")
            event = self.write_event("s3_batch_v2.json", batch)
            got = self.invoke(build, event, "S3 Batch Operations 2.0 (HEIC)")
            (result,) = got.response["results"]
            check(got.response["invocationId"] == batch["invocationId"], f"batch: {got}")
            check(got.response["treatMissingKeysAs"] == "PermanentFailure", f"batch: {got}")
            check(result["taskId"] == batch["tasks"][0]["taskId"], f"batch: {got}")
            check(result["resultCode"] == "Succeeded", f"batch: {got}")
            self.sidecar("photos/IMG_0001.HEIC")

        with self.step("sam local invoke: EventBridge Object Deleted"):
            self.s3.delete_object(Bucket=BUCKET, Key="photos/IMG_0001.HEIC")
            deleted = self.stamp(self.fixture("eventbridge_object_deleted.json"))
            event = self.write_event("eventbridge_object_deleted.json", deleted)
            got = self.invoke(build, event, "EventBridge Object Deleted")
            expected = {"kind": "eventbridge", **empty, "deleted": 1}
            check(got.response == expected, f"deleted: {got.response}")
            self.no_sidecar("photos/IMG_0001.HEIC")
            for key in ("photos/red flower.jpg", "photos/cat.jpg", "photos/café été.jpeg"):
                self.sidecar(key)

    def start_lambda(self, build: Path) -> None:
        """`sam local start-lambda` with a warm container, driven by boto3's Lambda client."""
        port = free_port()
        argv = [
            self.sam, "local", "start-lambda",
            "-t", f"{build.name}/template.yaml",
            "--host", "127.0.0.1", "--port", str(port),
            "--env-vars", "env.json",
            "--warm-containers", "EAGER",
            "--skip-pull-image",
            *self.overrides(),
        ]  # fmt: skip
        say("\n$ " + " ".join(argv).replace(self.sam, "sam"))
        (self.work / "logs").mkdir(exist_ok=True)
        start = time.monotonic()
        with (self.work / "logs" / "start-lambda.log").open("wb") as log:
            # Its own session, so that SIGINT (SAM's clean shutdown) reaches only it, with
            # SIGINT's default action: a shell starting us in the background ignores it,
            # and a Python that starts with SIGINT ignored never raises KeyboardInterrupt.
            process = subprocess.Popen(
                argv,
                cwd=self.work,
                env=self.sam_env(),
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )
        self.processes.append(process)
        try:
            with self.step("sam local start-lambda: listening"):
                wait_for_port(port, process, 300, "sam local start-lambda")
            self.timings.add("sam local start-lambda, listening", time.monotonic() - start)
            say(f"sam local start-lambda on 127.0.0.1:{port}, pid {process.pid}")
            client = boto3.client(
                "lambda",
                endpoint_url=f"http://127.0.0.1:{port}",
                region_name=REGION,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
                config=Config(read_timeout=INVOKE_TIMEOUT, retries={"max_attempts": 1}),
            )

            def call(label: str, event: dict[str, Any]) -> tuple[Any, float]:
                begin = time.monotonic()
                answer = client.invoke(FunctionName=FUNCTION, Payload=json.dumps(event).encode())
                seconds = time.monotonic() - begin
                payload = json.loads(answer["Payload"].read())
                say(f">>> lambda.invoke({label}): {json.dumps(payload)}  [{seconds:.2f} s]")
                check("FunctionError" not in answer, f"{label}: {answer.get('FunctionError')}")
                return payload, seconds

            keys = ["warm/a.jpg", "warm/b.png", "warm/c.webp"]
            for key, fmt in zip(keys, ("JPEG", "PNG", "WEBP"), strict=True):
                self.upload(key, fmt)
            batch = self.sqs_batch(keys)
            with self.step("start-lambda: SQS batch (the model loads)"):
                got, seconds = call("SQS batch of 3, first: the model loads", batch)
                self.timings.add("start-lambda, first invoke (SQS batch of 3, model load)", seconds)
                check(got == {"batchItemFailures": []}, f"start-lambda SQS: {got}")
                etags = {key: (self.sidecar(key), self.sidecar_etag(key))[1] for key in keys}
            with self.step("listening sockets: loopback only"):
                self.no_public_listeners("start-lambda, container warm")

            warm = []
            for i in range(3):
                key = f"warm/put-{i}.jpg"
                with self.step(f"start-lambda: S3 put {key}"):
                    self.upload(key)
                    got, seconds = call(f"S3 put {key}", self.s3_put(key))
                    check(got["embedded"] == 1 and got["errors"] == 0, f"S3 put: {got}")
                    self.sidecar(key)
                    warm.append(seconds)
            with self.step("start-lambda: the SQS batch again (all current)"):
                got, seconds = call("the same SQS batch again: all current", batch)
                check(got == {"batchItemFailures": []}, f"start-lambda SQS again: {got}")
                now = {key: self.sidecar_etag(key) for key in keys}
                check(now == etags, "current sidecars were rewritten")
                warm.append(seconds)
            self.timings.add(
                f"start-lambda, warm invokes (n={len(warm)}): median "
                f"{statistics.median(warm):.2f} s, max",
                max(warm),
            )
        finally:
            stop(process, signal.SIGINT, grace=30)
            say(f"sam local start-lambda (pid {process.pid}) stopped")
        with self.step("listening sockets after start-lambda: loopback only"):
            self.no_public_listeners("after start-lambda")

    def model_from_s3(self, build: Path) -> None:
        """The plain package: the cold start downloads the model from s3:// (sha256 checked)."""
        with self.step("sam local invoke: S3 put, model from s3://"):
            self.s3.upload_file(str(self.model), MODEL_BUCKET, MODEL_KEY)
            key = "fetched/red flower.jpg"
            self.upload(key)
            event = self.write_event("s3_put_fetched.json", self.s3_put(key))
            url = f"s3://{MODEL_BUCKET}/{MODEL_KEY}"
            got = self.invoke(build, event, "S3 put, model from s3:// (plain build)", ModelUrl=url)
            check(got.response["embedded"] == 1, f"model from S3: {got.response}")
            self.sidecar(key)

    def main(self) -> None:
        self.work.mkdir(parents=True)
        try:
            self.make_model()
            bundled = self.build("build-bundled", bundle=True)
            plain = self.build("build-s3", bundle=False)
            self.start_s3()
            self.invokes(bundled)
            self.start_lambda(bundled)
            self.model_from_s3(plain)
        finally:
            for process in reversed(self.processes):
                stop(process)
        self.print_timings()

    def print_timings(self) -> None:
        say("\nTimings (2-core machine; stand-in base image: no real Init Duration or memory)")
        for what, seconds in self.timings.rows:
            say(f"  {seconds:7.1f} s  {what}")
        total = time.time() - self.started
        say(f"  {total:7.1f} s  in all, scripts/sam-local from its start (base image included)")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The function under `sam local` (scripts/sam-local)."
    )
    parser.add_argument("--work", type=Path, required=True, help="a new folder for this run")
    parser.add_argument("--sam", required=True, help="the SAM CLI")
    parser.add_argument("--arch", choices=("x86_64", "arm64"), default="x86_64")
    parser.add_argument("--exec-root", required=True, help="the private dockerd's exec root")
    parser.add_argument("--owner-pid", type=int, required=True, help="scripts/sam-local's PID")
    parser.add_argument(
        "--started", type=float, default=time.time(), help="when scripts/sam-local started (epoch)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # SIGTERM (scripts/sam-local's trap, CI's time limit) unwinds like an error: the
    # finally blocks stop what was started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run = SamLocal(args)
    status = 1
    try:
        run.main()
        status = 0
    except (CheckError, subprocess.TimeoutExpired, subprocess.CalledProcessError) as err:
        say(f"\nsam-local: FAILED: {err}")
    finally:
        # The closing line CI reads (like a test runner's): the steps, each with its checks;
        # a failure outside any step (a build, the S3 server) counts as one.
        failed = len(run.failed) or status
        say(f"sam-local: {len(run.passed)} passed, {failed} failed")
    return status


if __name__ == "__main__":
    sys.exit(main())
