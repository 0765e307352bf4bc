"""Security review as tests: the SAM template's storage settings, dangerous calls in the
code (by walking the AST of every project module), and object keys that must never
become local paths.

Least privilege of the function's IAM is tested in tests/test_template.py.
"""

from __future__ import annotations

import ast
import json
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus

import pytest
from PIL import Image

from dinoembed.handler import app
from tests.helpers import encode
from tests.test_lambda_support import BUCKET, SUFFIX, cold_lambda, mocked_s3

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

pytestmark = pytest.mark.reliability("security review")

ROOT = Path(__file__).parent.parent
TEMPLATE = ROOT / "template.yaml"
PACKAGES = ("dinoembed", "handler", "watcher", "infra", "benchmarks", "scripts")


# --- the template -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resources() -> dict[str, Any]:
    from cfnlint.decode import cfn_yaml  # type: ignore[import-untyped]

    return dict(cfn_yaml.load(str(TEMPLATE))["Resources"])


def of_type(resources: dict[str, Any], kind: str) -> dict[str, Any]:
    return {name: r for name, r in resources.items() if r["Type"] == kind}


def test_no_bucket_can_be_made_public(resources: dict[str, Any]) -> None:
    buckets = of_type(resources, "AWS::S3::Bucket")
    assert buckets
    for bucket in buckets.values():
        props = bucket["Properties"]
        # THEN all four public-access blocks are on, ACLs are disabled, no canned ACL
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }
        assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
        assert "AccessControl" not in props
        assert "WebsiteConfiguration" not in props


def test_buckets_encrypt_at_rest(resources: dict[str, Any]) -> None:
    for bucket in of_type(resources, "AWS::S3::Bucket").values():
        rules = bucket["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        algorithms = {rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] for rule in rules}
        assert algorithms and algorithms <= {"AES256", "aws:kms", "aws:kms:dsse"}


def test_queues_encrypt_at_rest(resources: dict[str, Any]) -> None:
    queues = of_type(resources, "AWS::SQS::Queue")
    assert len(queues) == 2  # the event queue and its dead-letter queue
    for name, queue in queues.items():
        props = queue["Properties"]
        assert props.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in props, name


def test_bucket_policy_denies_every_request_without_tls(resources: dict[str, Any]) -> None:
    # GIVEN the bucket policies that apply to the images bucket (referred to by name)
    bucket_name = resources["ImagesBucket"]["Properties"]["BucketName"]
    policies = [
        p
        for p in of_type(resources, "AWS::S3::BucketPolicy").values()
        if p["Properties"]["Bucket"] == bucket_name
    ]
    assert len(policies) == 1
    # THEN it is created after the bucket and denies anything over plain HTTP, to anyone,
    # on the bucket and on every object in it
    assert policies[0]["DependsOn"] == "ImagesBucket"
    denials = [
        s
        for s in policies[0]["Properties"]["PolicyDocument"]["Statement"]
        if s["Effect"] == "Deny"
        and s.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
    ]
    assert len(denials) == 1
    (deny,) = denials
    assert deny["Principal"] == "*" and deny["Action"] in ("s3:*", ["s3:*"])
    assert sorted(json.dumps(r) for r in deny["Resource"]) == sorted(
        [
            json.dumps({"Fn::Sub": "arn:${AWS::Partition}:s3:::${BucketName}"}),
            json.dumps({"Fn::Sub": "arn:${AWS::Partition}:s3:::${BucketName}/*"}),
        ]
    )


# --- dangerous calls in the code ----------------------------------------------------------

UNSAFE_MODULES = frozenset({"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill"})
SAFE_YAML_LOADERS = frozenset({"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"})


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def _dotted(node: ast.AST) -> str:
    """``np.load`` -> "np.load"; ``open(p).extractall`` -> "<expr>.extractall"."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "<expr>"


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _call_problem(call: ast.Call) -> str | None:
    name = _dotted(call.func)
    last = name.rsplit(".", 1)[-1]
    if name in ("eval", "exec"):
        return f"{name}()"
    if name in ("os.system", "os.popen") or last == "getoutput":
        return f"{name}() runs a shell"
    shell = _keyword(call, "shell")
    if shell is not None and not _is_const(shell, False):
        return f"{name}(shell=...)"
    if name in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all"):
        return f"{name}()"
    if name in ("yaml.load", "yaml.load_all"):
        loader = _keyword(call, "Loader") or (call.args[1] if len(call.args) > 1 else None)
        if loader is None or _dotted(loader).rsplit(".", 1)[-1] not in SAFE_YAML_LOADERS:
            return f"{name}() without SafeLoader"
    if name in ("np.load", "numpy.load") and not _is_const(_keyword(call, "allow_pickle"), False):
        return f"{name}() without allow_pickle=False"
    if last == "extractall" and not (
        isinstance(f := _keyword(call, "filter"), ast.Constant) and f.value == "data"
    ):
        return f"{name}() without filter='data' (archive path traversal)"
    return None


def find_problems(source: str, path: str = "<source>") -> list[Finding]:
    """Dangerous imports and calls in one module's source."""
    found = []
    for node in ast.walk(ast.parse(source)):
        what = None
        if isinstance(node, ast.Import):
            bad = [a.name for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
            what = f"import {', '.join(bad)}" if bad else None
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in UNSAFE_MODULES:
                what = f"from {node.module} import ..."
        elif isinstance(node, ast.Call):
            what = _call_problem(node)
        if what is not None:
            found.append(Finding(path, getattr(node, "lineno", 0), what))
    return found


WORK_FOLDERS = (ROOT / "benchmarks" / "out",)  # git-ignored output (e.g. a built Lambda package)


def project_modules() -> list[Path]:
    return sorted(
        p
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
        if not any(p.is_relative_to(work) for work in WORK_FOLDERS)
    )


@pytest.mark.parametrize(
    "source",
    [
        "import pickle",
        "import marshal as m",
        "import shelve",
        "from pickle import loads",
        "from _pickle import loads",
        "import yaml\nyaml.load(text)",
        "import yaml\nyaml.load(text, Loader=yaml.Loader)",
        "import yaml\nyaml.load(text, yaml.FullLoader)",
        "import yaml\nyaml.unsafe_load(text)",
        "import subprocess\nsubprocess.run(cmd, shell=True)",
        "import subprocess\nsubprocess.Popen(cmd, shell=flag)",
        "import os\nos.system('ls')",
        "eval(text)",
        "exec(code)",
        "import numpy as np\nnp.load(path)",
        "import numpy as np\nnp.load(path, allow_pickle=True)",
        "import tarfile\ntarfile.open(p).extractall(dest)",
        "import tarfile\ntf.extractall(dest, filter='fully_trusted')",
    ],
)
def test_the_checker_finds_each_dangerous_pattern(source: str) -> None:
    assert len(find_problems(source)) == 1, find_problems(source)


@pytest.mark.parametrize(
    "source",
    [
        "import yaml\nyaml.load(text, Loader=yaml.SafeLoader)",
        "import yaml\nyaml.safe_load(text)",
        "import subprocess\nsubprocess.run(['ls'], shell=False)",
        "import numpy as np\nnp.load(path, allow_pickle=False)",
        "import tarfile\ntf.extractall(dest, filter='data')",
        "model.eval_metrics(x)",
        "import json\njson.loads(text)",
    ],
)
def test_the_checker_accepts_the_safe_forms(source: str) -> None:
    assert find_problems(source) == []


def test_no_project_module_uses_unsafe_deserialisation_shells_or_eval() -> None:
    # GIVEN every Python module of the project (core, both adapters, infra, benchmarks)
    modules = project_modules()
    assert len(modules) > 20 and any(p.parent.name == "handler" for p in modules)
    # WHEN each is parsed and walked
    findings = [
        str(finding)
        for path in modules
        for finding in find_problems(path.read_text(), str(path.relative_to(ROOT)))
    ]
    # THEN none imports pickle & co. or calls yaml.load/eval/exec/shell=True/np.load unsafely
    assert findings == []


# --- object keys never become local paths -------------------------------------------------

HOSTILE_KEYS = [
    "../../escape-{m}.jpg",
    "/abs/escape-{m}.jpg",
    "a/../../../escape-{m}.jpg",
    "..\\..\\escape-{m}.jpg",
    "~/escape-{m}.jpg",
    "./././escape-{m}.jpg",
    "%2e%2e/escape-{m}.jpg",
    "photos/\u202eescape-{m}.jpg",
]


class _FileAudit:
    """Every path the process opens, creates, renames or deletes while ``active``.

    ``sys.addaudithook`` cannot be removed again, so one hook is installed once and
    records only while a test has switched it on.
    """

    EVENTS = frozenset(
        {"open", "os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.symlink", "os.link"}
    )

    def __init__(self) -> None:
        self.active = False
        self.paths: list[str] = []
        self.lock = threading.Lock()
        sys.addaudithook(self.hook)

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active or event not in self.EVENTS:
            return
        with self.lock:
            self.paths.extend(str(a) for a in args[:2] if isinstance(a, (str, bytes, Path)))


_AUDIT: list[_FileAudit] = []


@pytest.fixture
def file_audit() -> Iterator[_FileAudit]:
    if not _AUDIT:
        _AUDIT.append(_FileAudit())
    audit = _AUDIT[0]
    audit.paths.clear()
    audit.active = True
    try:
        yield audit
    finally:
        audit.active = False


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Client]:
    with mocked_s3(monkeypatch) as client:
        yield client


def test_object_keys_never_become_local_paths(
    monkeypatch: pytest.MonkeyPatch,
    s3: S3Client,
    file_audit: _FileAudit,
    photos: dict[str, Image.Image],
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    # GIVEN images under keys that would escape any folder they were joined to
    marker = "k3ymark"
    keys = [template.format(m=f"{marker}{i}") for i, template in enumerate(HOSTILE_KEYS)]
    body = encode(photos["coffee"].resize((64, 48)), "JPEG")
    for key in keys:
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    records = []
    for key in keys:
        etag = s3.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"')
        obj = {"key": quote_plus(key, safe="/"), "size": len(body), "eTag": etag}
        records.append(
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": BUCKET}, "object": obj},
            }
        )
    monkeypatch.chdir(tmp_path)
    # WHEN the function embeds them, with every file operation of the process audited
    with cold_lambda(monkeypatch, tmp_path / "cache", model_path=str(tiny_model)):
        response = app.lambda_handler({"Records": records}, None)
    # THEN every image was embedded, its sidecar written to S3 beside the exact key
    assert response["embedded"] == len(keys)
    for key in keys:
        assert s3.head_object(Bucket=BUCKET, Key=key + SUFFIX)["ContentLength"] > 0
    # AND no file operation anywhere named a key: keys never reach the file system
    assert file_audit.paths, "the audit hook saw nothing (is it working?)"
    assert [p for p in file_audit.paths if marker in p] == []
    near = [tmp_path, tmp_path.parent, tmp_path.parent.parent]
    assert [p for folder in near for p in folder.glob(f"*{marker}*")] == []
    assert [p for p in tmp_path.rglob(f"*{marker}*")] == []


def test_the_file_audit_sees_a_key_joined_to_a_path(file_audit: _FileAudit, tmp_path: Path) -> None:
    # The check above can fail: a key written to disk shows up in the audit.
    (tmp_path / "k3ymark-local.jpg").write_bytes(b"x")
    assert any("k3ymark-local" in p for p in file_audit.paths)


def test_handler_code_has_no_file_system_calls() -> None:
    # GIVEN the Lambda adapter's modules; THEN none opens, creates or removes files: it
    # only talks to S3 (the model cache is the core's, under DINOEMBED_CACHE_DIR)
    fs_calls = {"open", "mkdir", "makedirs", "write_bytes", "write_text", "unlink", "remove"}
    fs_calls |= {"rename", "replace", "rmtree", "mkstemp", "NamedTemporaryFile", "extractall"}
    found = []
    for path in sorted((ROOT / "handler").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = _dotted(node.func).rsplit(".", 1)[-1]
                if name in fs_calls:
                    found.append(f"{path.name}:{node.lineno}: {name}()")
    assert found == []
