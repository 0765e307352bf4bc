"""template.yaml: linted by cfn-lint and `sam validate --lint`, and checked for what matters.

The IAM checks run on the template SAM actually deploys (transformed by the SAM
translator from the SAM CLI's virtual environment), so policies SAM adds are checked too.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dinoembed.local import IMAGE_EXTENSIONS
from dinoembed.settings import DEFAULT_MODEL_SHA256, DEFAULT_MODEL_URL, DEFAULT_OUTPUT_SUFFIX

ROOT = Path(__file__).parent.parent
TEMPLATE = ROOT / "template.yaml"


def sam_binary() -> Path | None:
    """``$DINOEMBED_SAM`` (set by scripts/test), else ``.venv-sam/bin/sam``."""
    path = Path(os.environ.get("DINOEMBED_SAM") or ROOT / ".venv-sam" / "bin" / "sam")
    return path if path.is_file() else None


needs_sam = pytest.mark.skipif(
    sam_binary() is None, reason="the SAM CLI is not installed (scripts/test installs it)"
)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    from cfnlint.decode import cfn_yaml  # type: ignore[import-untyped]

    return dict(cfn_yaml.load(str(TEMPLATE)))


@pytest.fixture(scope="module")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    return dict(template["Resources"])


TRANSFORM = """
import json, sys
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

class ManagedPolicies:
    def load(self):
        return {
            "AWSLambdaBasicExecutionRole":
                "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
            "AWSLambdaSQSQueueExecutionRole":
                "arn:aws:iam::aws:policy/service-role/AWSLambdaSQSQueueExecutionRole",
        }

doc = yaml_parse(open(sys.argv[1]).read())
doc["Resources"]["EmbedFunction"]["Properties"]["CodeUri"] = "s3://packaged/code.zip"
params = {"BucketName": "example-bucket", "AWS::Region": "us-east-1"}
json.dump(transform(doc, params, ManagedPolicies()), sys.stdout, default=str)
"""


@pytest.fixture(scope="module")
def deployed() -> dict[str, Any]:
    """The CloudFormation template SAM turns template.yaml into."""
    sam = sam_binary()
    assert sam is not None
    env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1"}
    proc = subprocess.run(
        [str(sam.parent / "python"), "-c", TRANSFORM, str(TEMPLATE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=env,
    )
    return dict(json.loads(proc.stdout))


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every mapping in a template fragment, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def iam_statements(fragment: Any) -> list[dict[str, Any]]:
    return [node for node in walk(fragment) if "Effect" in node and "Action" in node]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_cfn_lint_passes() -> None:
    from cfnlint.api import lint_file  # type: ignore[import-untyped]

    problems = lint_file(TEMPLATE)
    assert [str(p) for p in problems] == []


@needs_sam
def test_sam_validate_lint_passes() -> None:
    sam = sam_binary()
    assert sam is not None
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": "us-east-1"}
    proc = subprocess.run(
        [str(sam), "validate", "--lint", "--template-file", str(TEMPLATE)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "is a valid SAM Template" in proc.stdout + proc.stderr


@needs_sam
def test_deployed_iam_has_no_wildcard_s3_actions_or_resources(deployed: dict[str, Any]) -> None:
    # GIVEN every IAM statement of the deployed template (SAM's generated role included)
    statements = iam_statements(deployed["Resources"])
    s3 = [s for s in statements if any(str(a).startswith("s3:") for a in as_list(s["Action"]))]
    assert s3, "the function must be granted S3 access somewhere"
    for statement in (s for s in statements if s["Effect"] == "Allow"):
        actions = [str(a) for a in as_list(statement["Action"])]
        # THEN no statement grants s3:* or * (the TLS-only Deny of s3:* grants nothing)
        assert not any(a in ("*", "s3:*") or a.startswith("s3:*") for a in actions), statement
    for statement in s3:
        # AND no S3 statement applies to every resource or to every bucket
        for resource in as_list(statement["Resource"]):
            text = json.dumps(resource)
            assert resource != "*" and "s3:::*" not in text, statement


@needs_sam
def test_deployed_role_puts_only_sidecars(deployed: dict[str, Any]) -> None:
    statements = iam_statements(deployed["Resources"])
    puts = [s for s in statements if "s3:PutObject" in as_list(s["Action"])]
    assert len(puts) == 1
    assert puts[0]["Resource"] == {
        "Fn::Sub": "arn:${AWS::Partition}:s3:::${BucketName}/*${OutputSuffix}"
    }
    assert as_list(puts[0]["Action"]) == ["s3:PutObject"]


def test_model_object_is_readable_only_when_the_model_comes_from_s3(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    policies = resources["EmbedFunction"]["Properties"]["Policies"]
    conditional = [p for p in policies if "Fn::If" in p]
    assert len(conditional) == 1
    condition, granted, otherwise = conditional[0]["Fn::If"]
    assert condition == "ModelFromS3" and otherwise == {"Ref": "AWS::NoValue"}
    assert as_list(granted["Statement"][0]["Action"]) == ["s3:GetObject"]
    assert template["Conditions"]["ModelFromS3"] == {
        "Fn::Equals": [{"Fn::Select": [0, {"Fn::Split": ["://", {"Ref": "ModelUrl"}]}]}, "s3"]
    }


def test_s3_to_sqs_to_lambda_with_partial_batch_failures(resources: dict[str, Any]) -> None:
    events = resources["EmbedFunction"]["Properties"]["Events"]
    (source,) = events.values()
    assert source["Type"] == "SQS"
    assert source["Properties"]["Queue"] == {"Fn::GetAtt": ["ImageEventsQueue", "Arn"]}
    assert source["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    queue = resources["ImageEventsQueue"]["Properties"]
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": ["ImageEventsDeadLetterQueue", "Arn"]
    }
    assert queue["RedrivePolicy"]["maxReceiveCount"] >= 3


def test_visibility_timeout_is_at_least_six_times_the_function_timeout(
    resources: dict[str, Any],
) -> None:
    timeout = resources["EmbedFunction"]["Properties"]["Timeout"]
    assert resources["ImageEventsQueue"]["Properties"]["VisibilityTimeout"] >= 6 * timeout


def test_function_runtime_memory_and_handler(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    props = resources["EmbedFunction"]["Properties"]
    glob = template["Globals"]["Function"]
    assert glob["Runtime"] in ("python3.12", "python3.13")
    assert glob["Architectures"] == ["x86_64"]
    assert template["Parameters"]["MemorySize"]["MinValue"] >= 2048
    assert template["Parameters"]["MemorySize"]["Default"] >= 2048
    assert props["EphemeralStorage"]["Size"] >= 512
    module, _, function = props["Handler"].rpartition(".")
    assert module == "dinoembed.handler.app" and function == "lambda_handler"
    from dinoembed.handler import app

    assert callable(getattr(app, function))
    metadata = resources["EmbedFunction"]["Metadata"]
    assert metadata["BuildMethod"] == "makefile"
    assert (ROOT / metadata["ContextPath"] / "Makefile").is_file()


def test_notification_filters_are_image_suffixes_that_never_match_json(
    resources: dict[str, Any],
) -> None:
    configs = resources["ImagesBucket"]["Properties"]["NotificationConfiguration"][
        "QueueConfigurations"
    ]
    suffixes = []
    for config in configs:
        assert config["Event"] == "s3:ObjectCreated:*"
        assert config["Queue"] == {"Fn::GetAtt": ["ImageEventsQueue", "Arn"]}
        (rule,) = config["Filter"]["S3Key"]["Rules"]
        assert rule["Name"] == "suffix"
        suffixes.append(rule["Value"])
    assert len(set(suffixes)) == len(suffixes)
    for suffix in suffixes:
        assert suffix.lower() in IMAGE_EXTENSIONS
        assert not DEFAULT_OUTPUT_SUFFIX.endswith(suffix) and not suffix.endswith(".json")
    for ext in (".jpg", ".jpeg", ".png", ".webp"):
        assert ext in suffixes and ext.upper() in suffixes


def test_no_circular_dependency_between_bucket_queue_and_function(
    resources: dict[str, Any],
) -> None:
    # The bucket depends on the queue policy; nothing may refer back to the bucket resource.
    refs_to_bucket = [
        name
        for name, resource in resources.items()
        if name != "ImagesBucket"
        for node in walk(resource)
        if node.get("Ref") == "ImagesBucket" or node.get("Fn::GetAtt", [None])[0] == "ImagesBucket"
    ]
    assert refs_to_bucket == []
    assert resources["ImagesBucket"]["Properties"]["BucketName"] == {"Ref": "BucketName"}


def test_parameters_default_to_the_core_settings(template: dict[str, Any]) -> None:
    params = template["Parameters"]
    assert params["ModelUrl"]["Default"] == DEFAULT_MODEL_URL
    assert params["ModelSha256"]["Default"] == DEFAULT_MODEL_SHA256
    assert params["OutputSuffix"]["Default"] == DEFAULT_OUTPUT_SUFFIX
    env = template["Resources"]["EmbedFunction"]["Properties"]["Environment"]["Variables"]
    assert env["DINOEMBED_MODEL_URL"] == {"Ref": "ModelUrl"}
    assert env["DINOEMBED_MODEL_SHA256"] == {"Ref": "ModelSha256"}
    assert env["DINOEMBED_OUTPUT_SUFFIX"] == {"Ref": "OutputSuffix"}


def test_outputs_name_the_bucket_and_the_queue(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    assert outputs["BucketName"]["Value"] == {"Ref": "ImagesBucket"}
    assert outputs["QueueName"]["Value"] == {"Fn::GetAtt": ["ImageEventsQueue", "QueueName"]}
    assert "DeadLetterQueueName" in outputs


def test_container_image_bakes_the_pinned_model_and_the_same_handler(
    resources: dict[str, Any],
) -> None:
    # infra/Dockerfile cannot be built here (no Docker engine): check what it pins instead.
    dockerfile = (ROOT / "infra" / "Dockerfile").read_text()
    assert f"ARG MODEL_URL={DEFAULT_MODEL_URL}\n" in dockerfile
    assert f"ARG MODEL_SHA256={DEFAULT_MODEL_SHA256}\n" in dockerfile
    assert "sha256sum -c -" in dockerfile
    handler = resources["EmbedFunction"]["Properties"]["Handler"]
    assert dockerfile.rstrip().endswith(f'CMD ["{handler}"]')
    ignore = (ROOT / "infra" / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignore and "!handler/**" in ignore and "!dinoembed/**" in ignore
