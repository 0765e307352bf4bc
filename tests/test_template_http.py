"""template.yaml's Function URL function (SPEC section 11): the HTTP API on AWS.

The lint and IAM checks of the whole template are tests/test_template.py's; here what this
function must be: IAM-authenticated only, the same model as the embedding function, its
handler importable, its timeout and reserved concurrency parameters, its own package.
"""

from __future__ import annotations

import importlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.test_template import ROOT, TEMPLATE, iam_statements


@pytest.fixture(scope="module")
def resources() -> dict[str, Any]:
    from cfnlint.decode import cfn_yaml  # type: ignore[import-untyped]

    return dict(cfn_yaml.load(str(TEMPLATE))["Resources"])


def test_the_function_url_accepts_only_sigv4_signed_requests(resources: dict[str, Any]) -> None:
    props = resources["SearchFunction"]["Properties"]
    assert props["FunctionUrlConfig"] == {"AuthType": "AWS_IAM"}
    # no other function of the template has a public URL or a resource policy for "*"
    for name, resource in resources.items():
        url = resource.get("Properties", {}).get("FunctionUrlConfig")
        assert url is None or url["AuthType"] == "AWS_IAM", name
        assert resource["Type"] != "AWS::Lambda::Permission", name


def test_timeout_and_reserved_concurrency_are_parameters(resources: dict[str, Any]) -> None:
    props = resources["SearchFunction"]["Properties"]
    assert props["Timeout"] == {"Ref": "SearchTimeout"}
    assert props["ReservedConcurrentExecutions"] == {"Ref": "SearchReservedConcurrency"}


def test_the_model_is_the_embedding_functions(resources: dict[str, Any]) -> None:
    search = resources["SearchFunction"]["Properties"]["Environment"]["Variables"]
    embed = resources["EmbedFunction"]["Properties"]["Environment"]["Variables"]
    for name in ("DINOEMBED_MODEL_URL", "DINOEMBED_MODEL_SHA256", "DINOEMBED_MODEL_PATH"):
        assert search[name] == embed[name]


def test_the_handler_is_importable_and_built_with_the_http_extra(
    resources: dict[str, Any],
) -> None:
    props = resources["SearchFunction"]["Properties"]
    module, _, function = props["Handler"].rpartition(".")
    assert callable(getattr(importlib.import_module(module), function))
    assert resources["SearchFunction"]["Metadata"]["BuildMethod"] == "makefile"
    make = subprocess.run(
        ["make", "-n", "-f", "infra/Makefile", "build-SearchFunction", "ARTIFACTS_DIR=/x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "DINOEMBED_EXTRAS=lambda-http infra/build_lambda.sh" in make.stdout


def test_it_may_read_images_and_search_its_index_and_write_nothing(
    resources: dict[str, Any],
) -> None:
    statements = iam_statements(resources["SearchFunction"]["Properties"]["Policies"])
    actions = {
        str(a)
        for s in statements
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert actions == {"s3:GetObject", "s3vectors:QueryVectors", "s3vectors:GetVectors"}
    (vectors,) = [s for s in statements if "s3vectors:QueryVectors" in s["Action"]]
    assert vectors["Resource"] == {"Fn::GetAtt": ["VectorIndex", "IndexArn"]}


def test_it_is_told_its_index_and_images_bucket(resources: dict[str, Any]) -> None:
    env = resources["SearchFunction"]["Properties"]["Environment"]["Variables"]
    assert env["DINOEMBED_SERVE_LOCATION"] == {"Fn::Sub": "s3://${BucketName}/"}
    assert "VectorIndex" in json.dumps(env["DINOEMBED_VECTOR_INDEX"])


def test_pyproject_keeps_the_web_framework_out_of_the_embedding_extra() -> None:
    import tomllib

    extras = tomllib.loads(Path(ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert not any("starlette" in d or "serve" in d for d in extras["lambda"])
    assert "dinoembed[lambda,serve]" in extras["lambda-http"]
