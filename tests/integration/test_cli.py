"""The ``mesh`` command as a user runs it: a node from a config file, ``infer``, ``up``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import psutil
import yaml

from mesh.dev.models.demo import DemoArtifacts
from mesh.local.layout import node_identity
from mesh.local.servers import NatsServer

MESH = [sys.executable, "-m", "mesh.cli"]


async def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *MESH,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_node_runs_from_a_config_file_with_env_overrides_and_answers_mesh_infer(
    nats_server: NatsServer, demo: DemoArtifacts, tmp_path: Path
) -> None:
    config = tmp_path / "edge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "tier": "edge",
                "node": "from-file",
                "entry": True,
                "nats": {"servers": ["nats://127.0.0.1:1"]},
                "models": [{"name": "digits", "manifest": str(demo.edge)}],
                "http_port": None,
            }
        )
    )
    proc = await asyncio.create_subprocess_exec(
        *MESH,
        "node",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={
            **os.environ,
            "MESH_NATS__SERVERS": json.dumps([nats_server.url]),
            "MESH_NATS__CREDENTIALS": str(
                await nats_server.issue(node_identity("from-env", "edge", entry=True))
            ),
            "MESH_NODE": "from-env",
        },
    )
    try:
        assert proc.stdout is not None
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            assert line, "node exited before it was ready"
            if line.startswith("MESH_NODE_READY"):
                break
        assert "node=from-env" in line

        sample = tmp_path / "one.npy"
        import numpy as np

        app = ("--creds", str(nats_server.creds("app")))

        np.save(sample, np.load(demo.test)["x"][:1].astype(np.float32))
        code, out, err = await run("infer", "digits", str(sample), "--servers", nats_server.url)
        assert code == 2 and "credentials" in err, "an anonymous client was let in"
        code, out, err = await run(
            "infer", "digits", str(sample), "--servers", nats_server.url, *app
        )
        assert code == 0, err
        answer = json.loads(out)
        assert answer["tier"] == "edge" and answer["node"] == "from-env"
        assert answer["labels"] == [int(np.load(demo.test)["y"][0])]

        many = tmp_path / "many.npy"
        np.save(many, np.load(demo.test)["x"][:300].astype(np.float64))
        code, out, err = await run("infer", "digits", str(many), "--servers", nats_server.url, *app)
        assert code == 0, err
        assert "sent as float32" in err
        chunked = json.loads(out)
        assert chunked["rows"] == 300
        assert [len(c["labels"]) for c in chunked["chunks"]] == [256, 44]

        code, out, err = await run(
            "infer", "nosuch", str(sample), "--servers", nats_server.url, *app
        )
        assert code == 2
        assert "NOT_FOUND" in err or "UNAVAILABLE" in err
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0


async def test_mesh_up_prints_the_site_url_serves_and_ends_every_process_it_started(
    demo: DemoArtifacts, tmp_path: Path
) -> None:
    proc = await asyncio.create_subprocess_exec(
        *MESH,
        "up",
        "--cache",
        str(demo.root),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode().strip()
        assert line.startswith("MESH_NATS_URL=nats://"), line
        url = line.split("=", 1)[1]
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        assert line.startswith("MESH_CREDS=/"), line
        creds = line.split("=", 1)[1]
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 5  # hub, site, cloud, gateway, edge (and ingress, review)

        sample = tmp_path / "x.npz"
        import numpy as np

        np.savez(sample, x=np.load(demo.test)["x"][:1].astype(np.float32))
        code, out, err = await run("infer", "digits", str(sample), "--servers", url)
        assert code == 2, "the site server took an anonymous connection"
        code, out, err = await run(
            "infer", "digits", str(sample), "--servers", url, "--creds", creds
        )
        assert code == 0, err
        assert json.loads(out)["tier"] in {"edge", "gateway", "cloud"}

        # the Open Inference Protocol ingress at the site, behind a bearer token, and a
        # reviewer's credentials; the token's line is the last
        lines: list[str] = []
        while not lines or not lines[-1].startswith("MESH_TRUSTED_KEYS="):  # the last line
            lines.append((await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip())
        env = dict(line.split("=", 1) for line in lines)
        assert env["MESH_HTTP_URL"].startswith("http://127.0.0.1:"), lines
        assert env["MESH_GRPC_URL"].startswith("127.0.0.1:"), lines
        token = env["MESH_INGRESS_TOKEN"]
        reviewer = env["MESH_REVIEWER_CREDS"]
        body = {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [1, 64],
                    "data": np.load(demo.test)["x"][0].astype(float).tolist(),
                }
            ],
            "parameters": {"mesh_human_review": "always"},
        }
        async with aiohttp.ClientSession() as session:
            url_infer = f"{env['MESH_HTTP_URL']}/v2/models/digits/infer"
            async with session.post(url_infer, json=body) as resp:
                assert resp.status == 401
            headers = {"Authorization": f"Bearer {token}"}
            async with session.post(url_infer, json=body, headers=headers) as resp:
                answer = await resp.json()
                assert resp.status == 200, answer
        assert answer["parameters"]["tier"] in {"edge", "gateway", "cloud"}

        # the caller asked a person to look: the case is in the review queue at the hub
        items: list[dict[str, object]] = []
        for _ in range(60):
            code, out, err = await run(
                "review", "list", "--json", "--servers", url, "--creds", reviewer
            )
            assert code == 0, err
            items = json.loads(out)
            if items:
                break
            await asyncio.sleep(0.5)
        [item] = items
        assert {"id", "model", "reason", "answers"} <= set(item)
        assert (item["model"], item["reason"]) == ("digits", "requested")
        assert item["caller"] == "ingress"

        # the site's event stream: publish a row, wait for its result
        code, out, err = await run(
            "publish", "digits", str(sample), "--wait", "--servers", url, "--creds", creds
        )
        assert code == 0, err
        stored, result = (json.loads(line) for line in out.splitlines())
        assert result["event_id"] == stored["event_id"] and result["tier"] in {
            "edge", "gateway", "cloud",
        }  # fmt: skip
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 60)
    assert code == 0
    _, still = psutil.wait_procs(children, timeout=10)
    assert still == [], f"left running: {still}"


async def test_mesh_node_with_invalid_yaml_or_invalid_settings_prints_one_line_and_exits_2(
    tmp_path: Path,
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("tier: edge\nmodels: [unclosed\n")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump({"tier": "edge", "models": "not a list", "http_port": "x"}))
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    for config in (broken, wrong, scalar):
        code, out, err = await run("node", "--config", str(config))
        assert code == 2, err
        assert out == ""
        assert len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err
        assert err.startswith("error: invalid node settings") and str(config) in err


async def test_mesh_infer_where_no_server_listens_exits_2_with_one_line(tmp_path: Path) -> None:
    import numpy as np

    from mesh.local.servers import free_port

    sample = tmp_path / "x.npy"
    np.save(sample, np.zeros((1, 64), np.float32))
    code, out, err = await run(
        "infer", "digits", str(sample), "--servers", f"nats://127.0.0.1:{free_port()}"
    )
    assert code == 2
    assert out == ""
    assert err.strip().splitlines() == [err.strip()]
    assert err.startswith("error: UNAVAILABLE: cannot connect")


async def test_mesh_infer_of_a_row_the_file_does_not_have_exits_2_naming_the_range(
    tmp_path: Path,
) -> None:
    import numpy as np

    sample = tmp_path / "x.npz"
    np.savez(sample, x=np.zeros((3, 64), np.float32))
    for args in (["--row", "9999"], ["--row", "-4"]):
        code, out, err = await run("infer", "digits", str(sample), *args)
        assert code == 2, err
        assert out == ""
        assert err.strip() == (
            f"error: INVALID_ARGUMENT: --row {args[1]} is out of range: x.npz has 3 rows (0 to 2)"
        )
    empty = tmp_path / "empty.npz"
    np.savez(empty, y=np.zeros(3))
    code, _, err = await run("infer", "digits", str(empty))
    assert code == 2 and "holds no array named x" in err and "Traceback" not in err


async def test_a_misspelt_setting_variable_stops_a_node_with_one_line_naming_it(
    tmp_path: Path,
) -> None:
    config = tmp_path / "edge.yaml"
    config.write_text(yaml.safe_dump({"tier": "edge"}))
    code, out, err = await run(
        "node", "--config", str(config), env={"MESH_UPSTREM__TIMEOUT_MS": "500"}
    )
    assert code == 2, err
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert "MESH_UPSTREM__TIMEOUT_MS names no setting of NodeSettings" in err
    assert "did you mean MESH_UPSTREAM?" in err


async def test_mesh_up_whose_output_pipe_is_gone_still_removes_its_folder_on_ctrl_c(
    demo: DemoArtifacts,
) -> None:
    """As ``mesh up 2>&1 | tee log`` then Ctrl-C: tee dies with the same signal, so everything
    mesh up writes while stopping goes to a closed pipe; its folder (credentials included) must
    go all the same."""
    import os

    read_end, write_end = os.pipe()
    proc = await asyncio.create_subprocess_exec(
        *MESH, "up", "--cache", str(demo.root), stdout=write_end, stderr=write_end
    )
    os.close(write_end)
    reader = os.fdopen(read_end, "rb", buffering=0)
    work: Path | None = None
    try:
        seen = b""
        async with asyncio.timeout(120):
            while b"MESH_CREDS=" not in seen:
                chunk = await asyncio.to_thread(reader.read, 4096)
                assert chunk, seen.decode(errors="replace")[-2000:]
                seen += chunk
        for line in seen.decode().splitlines():
            if "; logs in " in line:
                work = Path(line.rsplit("; logs in ", 1)[1].strip())
        assert work is not None and work.exists()
        assert (work / "nats" / "keys" / "fleet.json").exists() or any(work.rglob("*.creds"))
    finally:
        reader.close()  # the pipe's reader is gone, as tee is after Ctrl-C
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 60)
    assert not work.exists(), f"{work} left behind"
