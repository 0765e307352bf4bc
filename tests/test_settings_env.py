"""An empty ``DINOEMBED_*`` variable means unset (SPEC section 7).

``sam local invoke`` passes ``""`` for a template variable whose value is
``AWS::NoValue`` (``DINOEMBED_MODEL_PATH`` when the ModelPath parameter is empty), and
a user's shell can hold ``export DINOEMBED_MODEL_PATH=``. Read as a value, ``""`` became
the path ``.`` and every image failed with "model file not found: .".
"""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest

from dinoembed.handler import app, preload
from dinoembed.handler.s3io import make_client
from dinoembed.settings import Settings
from tests.test_lambda_support import aws_test_env


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No DINOEMBED_* variable from the caller's environment; a private cache folder."""
    for name in list(os.environ):
        if name.startswith("DINOEMBED_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return monkeypatch


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_an_empty_variable_is_the_same_as_no_variable(
    clean_env: pytest.MonkeyPatch, field: str
) -> None:
    # GIVEN the defaults, read with no variable set
    unset = Settings()
    # WHEN the option's variable is set to the empty string
    clean_env.setenv(f"DINOEMBED_{field.upper()}", "")
    empty = Settings()
    # THEN every option has its default and none counts as set by the user
    assert empty.model_dump() == unset.model_dump()
    assert empty.model_fields_set == set()


def test_an_empty_model_path_leaves_the_model_to_the_usual_search(
    clean_env: pytest.MonkeyPatch,
) -> None:
    # GIVEN what `sam local invoke` passes for the template's AWS::NoValue
    clean_env.setenv("DINOEMBED_MODEL_PATH", "")
    clean_env.setenv("DINOEMBED_MODEL_SHA256", "")
    # WHEN the Lambda handler reads its settings
    settings = app.lambda_settings()
    # THEN no model path is set (not "."), the pinned digest is not "explicit",
    # and the package's bundled model folder is still looked at
    assert settings.model_path is None
    assert not settings.sha256_is_explicit
    assert settings.bundle_dir == preload.PACKAGE_ROOT / "model"


def test_a_set_value_still_wins(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("DINOEMBED_MODEL_PATH", "/models/m.onnx")
    assert Settings().model_path == Path("/models/m.onnx")


def test_an_empty_aws_endpoint_url_leaves_the_s3_client_on_aws(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN the template's default for the variable a local run overrides (empty)
    aws_test_env(monkeypatch)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "")
    # WHEN the handler makes its S3 client
    client = make_client()
    # THEN botocore ignores the empty value: the client talks to S3 itself, as without it
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert client.meta.endpoint_url == boto3.client("s3").meta.endpoint_url
    assert client.meta.endpoint_url.startswith("https://s3.")
