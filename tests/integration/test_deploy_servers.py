"""The compose servers' configuration runs: a real hub and site ``nats-server`` from
``compose/config/*.conf``, with a key store from ``mesh identities init`` where the compose file
mounts it, take no anonymous client, link over mutual TLS with the site's leaf credentials, and
carry an application's request to a node on the hub."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import nats
import nats.errors
import pytest
from click.testing import CliRunner

from mesh.cli import main
from mesh.local.servers import free_port, server_binary
from mesh.local.supervisor import ChildProcess
from mesh.transport.guard import flush_in_order

ROOT = Path(__file__).resolve().parents[2]


def _config(name: str, etc: Path, port: int, leaf_port: int, http_port: int) -> Path:
    """``compose/config/<name>.conf`` with the container paths and ports moved to ``etc``."""
    text = (ROOT / "compose" / "config" / f"{name}.conf").read_text()
    text = text.replace("/etc/nats/", f"{etc}/").replace("/data", str(etc / f"data-{name}"))
    text = text.replace("0.0.0.0:4222", f"127.0.0.1:{port}")
    text = text.replace("0.0.0.0:8222", f"127.0.0.1:{http_port}")
    text = text.replace("0.0.0.0:7422", f"127.0.0.1:{leaf_port}")
    path = etc / f"{name}.conf"
    path.write_text(text)
    return path


async def _healthy(http_port: int) -> None:
    from urllib.request import urlopen

    def ok() -> bool:
        try:
            with urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    async with asyncio.timeout(15):
        while not await asyncio.to_thread(ok):  # noqa: ASYNC110 (polls another process)
            await asyncio.sleep(0.1)


@pytest.mark.timeout(60)
async def test_the_compose_servers_take_only_fleet_credentials_and_link_over_mutual_tls(
    tmp_path: Path,
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["identities", "init", str(etc / "secrets"), "--host", "nats-hub"]
    )
    assert result.exit_code == 0, result.output
    binary = await asyncio.to_thread(server_binary)
    ports = {name: (free_port(), free_port()) for name in ("hub", "site")}
    leaf_port = free_port()
    env = {"NATS_HUB_LEAF_URL": f"nats-leaf://127.0.0.1:{leaf_port}"}
    for name in ("hub", "site"):
        conf = _config(name, etc, *ports[name][:1], leaf_port, ports[name][1])
        checked = await asyncio.to_thread(
            subprocess.run,
            [binary, "-c", str(conf), "-t"],
            capture_output=True,
            text=True,
            check=False,
            env=env,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
    servers = [
        ChildProcess(
            f"nats-{name}",
            [binary, "-c", str(etc / f"{name}.conf")],
            tmp_path / f"{name}.log",
            env=env,
        )
        for name in ("hub", "site")
    ]
    for server in servers:
        await server.start()
    for name in ("hub", "site"):
        await _healthy(ports[name][1])
    ca = etc / "secrets" / "tls" / "ca.pem"
    import ssl

    tls = ssl.create_default_context(cafile=str(ca))
    hub_url = f"tls://127.0.0.1:{ports['hub'][0]}"
    site_url = f"tls://127.0.0.1:{ports['site'][0]}"
    try:
        with pytest.raises(nats.errors.Error):
            await nats.connect(site_url, tls=tls, allow_reconnect=False, max_reconnect_attempts=0)
        node = await nats.connect(
            hub_url,
            tls=tls,
            user_credentials=str(etc / "secrets/creds/edge-0.creds"),
            inbox_prefix="_INBOX_edge-0",
        )
        app = await nats.connect(
            site_url,
            tls=tls,
            user_credentials=str(etc / "secrets/creds/app.creds"),
            inbox_prefix="_INBOX_app",
        )

        async def answer(msg: nats.aio.msg.Msg) -> None:
            await msg.respond(b"from the hub")

        await node.subscribe("mesh.infer.compose", queue="mesh.entry", cb=answer)
        await flush_in_order(node)
        async with asyncio.timeout(20):
            while True:
                try:
                    reply = await app.request("mesh.infer.compose", b"x", timeout=1)
                    break
                except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                    await asyncio.sleep(0.2)  # the leaf link is coming up
        assert reply.data == b"from the hub"
        await node.close()
        await app.close()
    finally:
        for server in reversed(servers):
            await server.stop()
        shutil.rmtree(etc, ignore_errors=True)
