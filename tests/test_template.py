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

from dinoembed.collections.index import NON_FILTERABLE_KEYS, index_name
from dinoembed.images.files import IMAGE_EXTENSIONS
from dinoembed.results.schema import ModelInfo
from dinoembed.results.sidecars import Recipe
from dinoembed.settings import (
    DEFAULT_MODEL_NAME,
    DEFAULT_MODEL_SHA256,
    DEFAULT_MODEL_URL,
    DEFAULT_OUTPUT_SUFFIX,
    Settings,
)

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
doc["Resources"]["SearchFunction"]["Properties"]["CodeUri"] = "s3://packaged/http.zip"
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
@pytest.mark.parametrize("action", ["s3:PutObject", "s3:DeleteObject"])
def test_deployed_role_writes_and_deletes_only_sidecars(
    deployed: dict[str, Any], action: str
) -> None:
    # the function's role, as SAM generates it (the batch job's role writes its reports)
    statements = iam_statements(deployed["Resources"]["EmbedFunctionRole"])
    granting = [s for s in statements if action in as_list(s["Action"])]
    assert len(granting) == 1
    assert granting[0]["Effect"] == "Allow"
    assert granting[0]["Resource"] == {
        "Fn::Sub": "arn:${AWS::Partition}:s3:::${BucketName}/*${OutputSuffix}"
    }
    assert as_list(granting[0]["Action"]) == [action]
    # AND nothing grants object deletion otherwise (no s3:Delete* or version deletes)
    deletes = [
        a
        for s in statements
        if s["Effect"] == "Allow"
        for a in as_list(s["Action"])
        if str(a).startswith("s3:Delete")
    ]
    assert deletes == ["s3:DeleteObject"]


def test_model_object_is_readable_only_when_the_model_comes_from_s3(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    policies = resources["EmbedFunction"]["Properties"]["Policies"]
    conditional = [p for p in policies if "Fn::If" in p and p["Fn::If"][0] == "ModelFromS3"]
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
    assert glob["Architectures"] == [{"Ref": "Architecture"}]
    architecture = template["Parameters"]["Architecture"]
    assert architecture["Default"] == "x86_64"
    assert sorted(architecture["AllowedValues"]) == ["arm64", "x86_64"]
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


def matches(pattern: Any, event: Any) -> bool:
    """EventBridge's pattern matching, for the operators this template may use.

    Written here from EventBridge's documentation, independently of the template, so
    the test checks what the rule does rather than what it says. Every field of the
    pattern must match; a leaf is a list of alternatives, each an exact value or one of
    ``{"prefix"|"suffix"|"equals-ignore-case": ...}`` (``prefix``/``suffix`` may be
    ``{"equals-ignore-case": ...}``). Anything else fails the test, so a new operator in
    the template needs teaching here first.
    """
    if isinstance(pattern, dict):
        return isinstance(event, dict) and all(
            name in event and matches(sub, event[name]) for name, sub in pattern.items()
        )
    assert isinstance(pattern, list), f"a pattern leaf must be a list: {pattern!r}"
    return any(_leaf_matches(alternative, event) for alternative in pattern)


def _leaf_matches(alternative: Any, value: Any) -> bool:
    if isinstance(alternative, str | int | float | bool):
        return alternative == value
    ((operator, operand),) = alternative.items()
    if not isinstance(value, str):
        return False
    if operator == "equals-ignore-case":
        return value.lower() == str(operand).lower()
    assert operator in ("prefix", "suffix"), f"operator not modelled by this test: {operator}"
    fold = isinstance(operand, dict)
    if fold:
        ((how, operand),) = operand.items()
        assert how == "equals-ignore-case", f"modifier not modelled by this test: {how}"
    text, affix = (value.lower(), operand.lower()) if fold else (value, operand)
    return text.endswith(affix) if operator == "suffix" else text.startswith(affix)


def case_variants(ext: str) -> list[str]:
    """Every upper/lower spelling of an extension: ``.jpg`` -> ``.jpg .jpG ... .JPG``."""
    spellings = [""]
    for char in ext:
        spellings = [s + c for s in spellings for c in {char.lower(), char.upper()}]
    return sorted(spellings)


def s3_event(detail_type: str, key: str, bucket: str = "example-bucket") -> dict[str, Any]:
    """An EventBridge event from S3 (the fixture's shape) for ``key``."""
    from tests.test_lambda_support import load_event

    event = load_event("eventbridge_object_created.json")
    event["detail-type"] = detail_type
    event["detail"]["bucket"]["name"] = bucket
    event["detail"]["object"]["key"] = key
    return event


def resolved_rule_pattern(resources: dict[str, Any]) -> dict[str, Any]:
    """The rule's pattern with the bucket name parameter set to ``example-bucket``."""
    pattern = json.loads(json.dumps(resources["ImageEventsRule"]["Properties"]["EventPattern"]))
    assert pattern["detail"]["bucket"]["name"] == [{"Ref": "BucketName"}]
    pattern["detail"]["bucket"]["name"] = ["example-bucket"]
    return dict(pattern)


def test_the_matcher_itself_tells_cases_apart() -> None:
    # The independent matcher must be able to say no, or the routing tests prove nothing.
    assert matches({"k": [{"suffix": ".jpg"}]}, {"k": "a.jpg"})
    assert not matches({"k": [{"suffix": ".jpg"}]}, {"k": "a.JPG"})
    assert matches({"k": [{"suffix": {"equals-ignore-case": ".jpg"}}]}, {"k": "a.JpG"})
    assert not matches({"k": [{"suffix": {"equals-ignore-case": ".jpg"}}]}, {"k": "a.jpg.json"})
    assert not matches({"k": ["x"], "j": ["y"]}, {"k": "x"})
    assert case_variants(".jpg") == sorted(
        {".jpg", ".jpG", ".jPg", ".jPG", ".Jpg", ".JpG", ".JPg", ".JPG"}
    )


@pytest.mark.parametrize("ext", sorted(IMAGE_EXTENSIONS))
@pytest.mark.parametrize("detail_type", ["Object Created", "Object Deleted"])
def test_every_image_extension_in_every_letter_case_is_routed(
    resources: dict[str, Any], ext: str, detail_type: str
) -> None:
    pattern = resolved_rule_pattern(resources)
    for spelling in case_variants(ext):
        key = f"photos/IMG_0001{spelling}"
        assert matches(pattern, s3_event(detail_type, key)), key


@pytest.mark.parametrize("ext", sorted(IMAGE_EXTENSIONS))
def test_sidecars_and_other_keys_are_never_routed(resources: dict[str, Any], ext: str) -> None:
    pattern = resolved_rule_pattern(resources)
    for spelling in case_variants(ext):
        for detail_type in ("Object Created", "Object Deleted"):
            sidecar = f"photos/IMG_0001{spelling}{DEFAULT_OUTPUT_SUFFIX}"
            assert not matches(pattern, s3_event(detail_type, sidecar)), sidecar
    for key in ("notes.txt", "photo.jpg.part", "photos/jpg", "archive.tar.gz"):
        assert not matches(pattern, s3_event("Object Created", key)), key
    # nor events of another bucket, nor S3 event types other than created / deleted
    assert not matches(pattern, s3_event("Object Created", "a.jpg", bucket="other-bucket"))
    assert not matches(pattern, s3_event("Object Restore Completed", "a.jpg"))


def test_output_suffix_parameter_can_never_match_an_image_extension(
    template: dict[str, Any],
) -> None:
    import re

    allowed = re.compile(template["Parameters"]["OutputSuffix"]["AllowedPattern"])
    assert allowed.fullmatch(DEFAULT_OUTPUT_SUFFIX)
    assert not allowed.fullmatch(".dinov2.jpg") and not allowed.fullmatch(".JPG")
    assert all(not ext.endswith(".json") for ext in IMAGE_EXTENSIONS)


def test_bucket_sends_its_events_to_eventbridge_and_the_rule_to_the_queue(
    resources: dict[str, Any],
) -> None:
    notifications = resources["ImagesBucket"]["Properties"]["NotificationConfiguration"]
    # EventBridge only: a direct S3 -> SQS configuration would deliver a second copy
    assert notifications == {"EventBridgeConfiguration": {"EventBridgeEnabled": True}}
    (target,) = resources["ImageEventsRule"]["Properties"]["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["ImageEventsQueue", "Arn"]}
    (statement,) = resources["ImageEventsQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    assert statement["Condition"] == {
        "ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["ImageEventsRule", "Arn"]}}
    }


def test_no_circular_dependency_between_bucket_queue_and_function(
    resources: dict[str, Any],
) -> None:
    # The rule and the policies name the bucket by its parameter; nothing refers to the resource.
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


def test_env_json_overrides_only_variables_the_template_declares(template: dict[str, Any]) -> None:
    # SAM passes a function only the variables its template declares: an override in
    # infra/env.json (`sam local invoke --env-vars`) of any other name is silently dropped.
    declared = template["Resources"]["EmbedFunction"]["Properties"]["Environment"]["Variables"]
    overrides = json.loads((ROOT / "infra" / "env.json").read_text())
    assert set(overrides) == {"EmbedFunction"}
    assert overrides["EmbedFunction"]
    assert set(overrides["EmbedFunction"]) <= set(declared)
    # Deployed, the function talks to AWS itself: the endpoint is empty unless overridden.
    assert declared["AWS_ENDPOINT_URL"] == ""


def test_batch_operations_role_invokes_only_the_function_and_touches_only_its_prefix(
    resources: dict[str, Any], template: dict[str, Any]
) -> None:
    role = resources["BatchOperationsRole"]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "batchoperations.s3.amazonaws.com"}
    assert trust["Action"] == "sts:AssumeRole"
    (policy,) = role["Policies"]
    statements = {s["Sid"]: s for s in policy["PolicyDocument"]["Statement"]}
    assert all(s["Effect"] == "Allow" for s in statements.values())
    invoke = statements["InvokeTheEmbeddingFunction"]
    assert invoke["Action"] == "lambda:InvokeFunction"
    assert invoke["Resource"][0] == {"Fn::GetAtt": ["EmbedFunction", "Arn"]}
    prefix = {"Fn::Sub": "arn:${AWS::Partition}:s3:::${BucketName}/${BatchOperationsPrefix}*"}
    assert statements["ReadTheManifest"]["Resource"] == prefix
    assert statements["WriteTheCompletionReport"]["Resource"] == prefix
    assert as_list(statements["WriteTheCompletionReport"]["Action"]) == ["s3:PutObject"]
    # The report prefix holds CSV/JSON reports: never image keys, so never routed.
    assert template["Parameters"]["BatchOperationsPrefix"]["Default"].endswith("/")
    outputs = template["Outputs"]
    assert outputs["BatchOperationsRoleArn"]["Value"] == {
        "Fn::GetAtt": ["BatchOperationsRole", "Arn"]
    }
    assert outputs["FunctionArn"]["Value"] == {"Fn::GetAtt": ["EmbedFunction", "Arn"]}


def test_dead_letter_queue_alarm_fires_on_the_first_message(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    alarm = resources["DeadLetterQueueAlarm"]["Properties"]
    assert (alarm["Namespace"], alarm["MetricName"]) == (
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
    )
    assert alarm["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["ImageEventsDeadLetterQueue", "QueueName"]}}
    ]
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanThreshold", 0)
    assert alarm["TreatMissingData"] == "notBreaching"  # an empty queue publishes no data
    # notifications only when a topic is given
    for actions in (alarm["AlarmActions"], alarm["OKActions"]):
        assert actions == {
            "Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]
        }
    assert template["Parameters"]["AlarmTopicArn"]["Default"] == ""
    assert template["Conditions"]["HasAlarmTopic"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}]
    }
    import re

    allowed = re.compile(template["Parameters"]["AlarmTopicArn"]["AllowedPattern"])
    assert allowed.fullmatch("") and allowed.fullmatch("arn:aws:sns:us-east-1:123456789012:ops")
    assert not allowed.fullmatch("ops-topic")


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


VECTOR_RESOURCES = ("VectorBucket", "VectorIndex")


def test_vector_index_is_float32_cosine_of_the_model_dimension(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    # GIVEN the index the template creates
    index = resources["VectorIndex"]["Properties"]
    params = template["Parameters"]
    # THEN it is float32, cosine, of the dimension parameter (384 by default: ViT-S/14)
    assert index["DataType"] == "float32" and index["DistanceMetric"] == "cosine"
    assert index["Dimension"] == {"Ref": "VectorDimension"}
    assert params["VectorDimension"]["Default"] == 384
    assert index["VectorBucketArn"] == {"Fn::GetAtt": ["VectorBucket", "VectorBucketArn"]}
    # AND its metadata that may exceed 2 KB is declared non-filterable
    assert index["MetadataConfiguration"]["NonFilterableMetadataKeys"] == list(NON_FILTERABLE_KEYS)
    # AND its default name is the one the default recipe needs (SPEC section 10)
    model = ModelInfo(
        name=DEFAULT_MODEL_NAME,
        sha256=DEFAULT_MODEL_SHA256,
        preprocess="center-crop",
        input_size=224,
    )
    assert params["VectorIndexName"]["Default"] == index_name(Recipe(model, normalize=True))
    assert index["IndexName"] == {"Ref": "VectorIndexName"}


def test_vector_index_is_on_by_default_and_off_leaves_the_stack_as_before(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    assert template["Parameters"]["EnableVectorIndex"]["Default"] == "true"
    assert template["Conditions"]["HasVectorIndex"] == {
        "Fn::Equals": [{"Ref": "EnableVectorIndex"}, "true"]
    }
    # every piece of it hangs on the condition: resources, output, variable, policy
    for name in VECTOR_RESOURCES:
        assert resources[name]["Condition"] == "HasVectorIndex"
    assert template["Outputs"]["VectorIndexArn"]["Condition"] == "HasVectorIndex"
    env = resources["EmbedFunction"]["Properties"]["Environment"]["Variables"]
    assert env["DINOEMBED_VECTOR_INDEX"] == {
        "Fn::If": [
            "HasVectorIndex",
            {"Fn::GetAtt": ["VectorIndex", "IndexArn"]},
            {"Ref": "AWS::NoValue"},
        ]
    }
    policies = resources["EmbedFunction"]["Properties"]["Policies"]
    vector_policies = [p for p in policies if "s3vectors:" in json.dumps(p)]
    assert len(vector_policies) == 1 and vector_policies[0]["Fn::If"][0] == "HasVectorIndex"
    assert vector_policies[0]["Fn::If"][2] == {"Ref": "AWS::NoValue"}


def test_the_index_arn_the_template_passes_is_a_setting_the_function_accepts() -> None:
    arn = "arn:aws:s3vectors:us-east-1:123456789012:bucket/vb/index/dinov2-vits14-4df36ef0-crop-l2"
    assert Settings(vector_index=arn).vector_index == arn
    assert Settings(vector_index="").vector_index is None


def test_function_may_only_put_get_delete_and_query_vectors_of_its_index(
    resources: dict[str, Any],
) -> None:
    policies = resources["EmbedFunction"]["Properties"]["Policies"]
    (policy,) = [p for p in policies if "s3vectors:" in json.dumps(p)]
    statements = iam_statements(policy)
    assert len(statements) == 1
    assert sorted(as_list(statements[0]["Action"])) == [
        "s3vectors:DeleteVectors",
        "s3vectors:GetVectors",
        "s3vectors:PutVectors",
        "s3vectors:QueryVectors",
    ]
    assert statements[0]["Resource"] == {"Fn::GetAtt": ["VectorIndex", "IndexArn"]}


@needs_sam
def test_deployed_template_grants_no_wildcard_vector_actions(deployed: dict[str, Any]) -> None:
    statements = iam_statements(deployed["Resources"])
    actions = [str(a) for s in statements for a in as_list(s["Action"])]
    vector_actions = [a for a in actions if a.startswith("s3vectors:")]
    # the embedding function's four, and the search function's two reading ones
    assert sorted(vector_actions) == [
        "s3vectors:DeleteVectors",
        "s3vectors:GetVectors",
        "s3vectors:GetVectors",
        "s3vectors:PutVectors",
        "s3vectors:QueryVectors",
        "s3vectors:QueryVectors",
    ]
