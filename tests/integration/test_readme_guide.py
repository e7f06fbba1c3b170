"""The README's "Serve your own model" guide, run command for command (issue 12).

The ``sh`` block under that heading is run by bash in an empty folder, with two substitutions
only: ``.venv/bin/`` becomes this interpreter's folder, and the site port a free one. Then, through
the mesh the guide started: iris is answered (confident rows at the edge, the rest in the cloud),
no request is NOT_FOUND, and digits is served next to it. The time from the ONNX files to the
first answer is printed for the issue's note.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mesh import MeshClient
from mesh.local.servers import free_port
from tests.fixtures.commands import run_script, stop_pid

ROOT = Path(__file__).resolve().parents[2]


def guide_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Serve your own model", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match is not None, "the guide has no sh block"
    return match.group(1)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_the_readme_guide_serves_iris_next_to_digits(tmp_path: Path) -> None:
    block = guide_block()
    port = str(free_port())
    assert "--port 4333" in block
    script = block.replace(".venv/bin/", f"{Path(sys.executable).parent}/").replace("4333", port)
    # Timestamps on every command (for the note).
    traced = "PS4='+ $(date +%s.%N) '\nset -x\n" + script
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    run = await run_script(traced, tmp_path, env, 540, "guide")
    out, err, up_pid = run.out, run.err, run.background_pid
    try:
        assert run.code == 0, f"the guide failed:\n{err[-4000:]}"
        answers = [json.loads(a) for a in re.findall(r"^\{.*?^\}", out, re.S | re.M)]
        assert len(answers) == 2, out
        assert all(a["model"] == "iris" and len(a["labels"]) == 1 for a in answers)
        # As the guide says: row 0 is sure at the edge, row 77 is not and the cloud answers.
        assert [a["tier"] for a in answers] == ["edge", "cloud"], answers
        stamps = [
            (float(m.group(1)), m.group(2)) for m in re.finditer(r"^\+ (\d+\.\d+) (.*)$", err, re.M)
        ]
        imported = next(t for t, cmd in stamps if "models import iris-small.onnx" in cmd)
        first_ask = [t for t, cmd in stamps if "mesh infer iris" in cmd]
        after = [t for t, _ in stamps if t > first_ask[0]]
        first_answer = after[0] if after else first_ask[0]
        print(f"\nfrom the ONNX files to the first answer: {first_answer - imported:.1f} s")

        env_lines = dict(line.split("=", 1) for line in (tmp_path / "mesh.env").read_text().split())
        data = np.load(tmp_path / "iris.npz")
        x, y = data["x"], data["y"]
        digits = np.load(tmp_path / "demo" / "digits-test.npz")["x"].astype(np.float32)
        async with await MeshClient.connect(
            env_lines["MESH_NATS_URL"], user_credentials=env_lines["MESH_CREDS"]
        ) as client:
            iris = [await client.infer("iris", x[i : i + 1], budget_ms=3000) for i in range(150)]
            dig = [
                await client.infer("digits", digits[i : i + 1], budget_ms=3000) for i in range(100)
            ]
        tiers = Counter(r.tier for r in iris)
        print(f"iris answered by tier: {dict(tiers)}")
        assert set(tiers) == {"edge", "cloud"}, tiers
        assert not any(r.degraded for r in iris), Counter(r.reason for r in iris)
        accuracy = np.mean([r.labels[0] == int(label) for r, label in zip(iris, y, strict=True)])
        assert accuracy >= 0.9, accuracy
        assert {r.tier for r in dig} <= {"edge", "cloud"}
        assert not any(r.degraded for r in dig)
    finally:
        if up_pid is not None:
            await stop_pid(up_pid)
