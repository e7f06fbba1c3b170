"""The operator's path as the issue's newcomer took it (issue 26, findings 1 and 5), with nothing
but what ``mesh up`` prints: the README's "Using it" block starts the mesh, its "Rolling out a
new version" block and docs/fleet.md's "Publishing and assigning a version" block run as
written (``.venv/bin/`` becoming this interpreter's folder, ``mesh`` on the PATH). Then:

- ``mesh up`` printed the trusted key on its own line and the operator's variables; the registry
  held what it serves; a controller it runs drove the rollout; an empty status said so;
- the rollout of an edge version reached the edge only, and read as completed with its figures;
- a selector naming another tier is refused with the reason;
- an aborted rollout returns the edge to its own version, and the gateway and the cloud never
  leave theirs.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.commands import mesh_cli, run_script, stop_pid

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def sh_block(page: str, heading: str) -> str:
    text = (ROOT / page).read_text()
    section = text.split(heading, 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match is not None, f"{page}: no sh block under {heading}"
    return match.group(1).replace(".venv/bin/", f"{BIN}/")


async def mesh(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    return await mesh_cli(*args, env=env)


async def serving(env: dict[str, str]) -> dict[str, str]:
    code, out, err = await mesh(env, "fleet", "status", "--json")
    assert code == 0, err
    return {row["node"]: row["models"].get("digits", "") for row in json.loads(out)}


async def wait_serving(env: dict[str, str], wanted: dict[str, str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    now = await serving(env)
    while any(now.get(n) != v for n, v in wanted.items()):
        assert time.monotonic() < deadline, f"waited {timeout}s for {wanted}; serving {now}"
        await asyncio.sleep(0.5)
        now = await serving(env)


async def test_the_operator_rolls_a_new_edge_version_out_with_what_mesh_up_prints(
    tmp_path: Path,
) -> None:
    up = sh_block("README.md", "## Using it")
    rollout = sh_block("README.md", "### Rolling out a new version")
    publish = sh_block("docs/fleet.md", "## Publishing and assigning a version")
    script = "\n".join([up, "echo '=== rollout'", rollout, "echo '=== publish'", publish])
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    run = await run_script(script, tmp_path, env, 600, "blocks")
    out, err, up_pid = run.out, run.err, run.background_pid
    try:
        assert run.code == 0, f"a block failed:\n{out[-3000:]}\n{err[-4000:]}"
        printed = (tmp_path / "mesh.env").read_text().splitlines()
        names = [line.split("=", 1)[0] for line in printed]
        assert names[:5] == [
            "MESH_NATS_URL", "MESH_CREDS", "MESH_HTTP_URL", "MESH_GRPC_URL",
            "MESH_INGRESS_TOKEN",
        ]  # fmt: skip
        assert re.search(r"^MESH_TRUSTED_KEYS=ed25519:\S+$", "\n".join(printed), re.M)
        fleet_env = {**env, **dict(line.split("=", 1) for line in printed)}
        assert re.search(r"^controller controller-0: pid \d+$", err, re.M), err[-3000:]

        after = out.split("=== rollout", 1)[1]
        during, published = after.split("=== publish", 1)
        # the registry held what mesh up serves; the empty status said so
        for version in ("1-edge-int8", "1-gateway", "1-cloud"):
            assert re.search(rf"^digits\s+{version}\s", during, re.M), during[:2000]
        assert "no rollouts yet" in during
        assert "pushed digits@2-edge-int8, made from digits@1-edge-int8" in during
        assert "over 1 node of tier=edge (all 1), rolls back to 1-edge-int8" in during
        # completed, and says so with each gate's figures against its bound
        completed = re.findall(r"^digits@2-edge-int8 \(\w+\): (.*)$", during, re.M)
        assert completed and completed[-1].startswith("completed on 1 node of tier=edge"), during
        assert "soaking" not in completed[-1]
        assert re.search(r"requests \d+ \(needs 20\), compared upstream \d+ \(needs 10\)", during)
        # the docs' block: a version of your own signed, pushed, assigned; the next one bumped
        assert "pushed digits@1-edge " in published, published[:3000]
        listed = json.loads(published[published.index("\n[") + 1 :])
        versions = {v["version"] for v in listed if v["model"] == "digits"}
        assert {"1-edge-int8", "2-edge-int8", "1-edge", "3-edge"} <= versions, versions

        # the edge only ever left its version; the gateway and the cloud never did
        await wait_serving(
            fleet_env, {"edge-0": "1-edge", "gateway-0": "1-gateway", "cloud-0": "1-cloud"}, 60
        )
        code, _, refused = await mesh(
            fleet_env, "rollout", "start", "digits", "3-edge", "--selector", "tier=cloud"
        )
        assert code == 2 and "made for tier edge" in refused and "tier cloud" in refused

        # an aborted rollout sends each node back to its own version
        code, started, why = await mesh(
            fleet_env, "rollout", "start", "digits", "3-edge", "--stages", "100%",
            "--soak", "10m",
        )  # fmt: skip
        assert code == 0, why
        assert "over 1 node of tier=edge" in started and "rolls back to 1-edge" in started
        await wait_serving(fleet_env, {"edge-0": "3-edge"}, 120)
        code, _, why = await mesh(fleet_env, "rollout", "abort", "digits")
        assert code == 0, why
        await wait_serving(
            fleet_env, {"edge-0": "1-edge", "gateway-0": "1-gateway", "cloud-0": "1-cloud"}, 120
        )
        deadline = time.monotonic() + 30
        code, status, _ = await mesh(fleet_env, "rollout", "status", "digits")
        while "rolling back" in status and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            code, status, _ = await mesh(fleet_env, "rollout", "status", "digits")
        assert re.search(r"^digits@3-edge \(\w+\): aborted at stage 1/1 all", status, re.M)
        assert "its nodes go back to 1-edge" in status
        test_split = str(tmp_path / "models" / "digits-test.npz")
        code, asked, why = await mesh(fleet_env, "infer", "digits", test_split, "--row", "3")
        assert code == 0, why
        answer: dict[str, Any] = json.loads(asked)
        assert answer["model_version"] in {"1-edge", "1-gateway", "1-cloud"}
        assert answer["model_version"].endswith(answer["tier"])
    finally:
        if up_pid is not None:
            await stop_pid(up_pid)
