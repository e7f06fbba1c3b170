"""Every mistake is told at once (issue 26, finding 3): a permission the identity lacks, the
credentials of another fleet, an address that is no NATS URL, a server that cannot be reached,
each as its own typed error naming what to do, from the SDK, from JetStream calls and from the
``mesh`` commands, never as a timeout or a traceback.

Real servers, real credentials: the session's fleet issues every identity used here.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import nats.errors
import numpy as np
import pytest

from mesh import MeshClient
from mesh.errors import (
    InvalidArgumentError,
    PermissionDeniedError,
    UnauthenticatedError,
    UnavailableError,
)
from mesh.local.servers import APPLICATION, NatsServer, free_port, server_binary
from mesh.security.identities import IdentitySpec
from mesh.security.keystore import KeyStore
from mesh.security.permissions import Role
from mesh.topology.streams import NODES_BUCKET
from mesh.transport.connection import open_connection

CONTROLLER = IdentitySpec("controller", Role.CONTROLLER)
#: what tells "at once" from waiting out a timeout: every timeout met here is 5 s or more.
AT_ONCE_S = 2.0
X = np.zeros((1, 64), np.float32)


async def test_publishing_events_as_another_source_is_refused_at_once_naming_the_rights(
    nats_server: NatsServer,
) -> None:
    async with await MeshClient.connect(nats_server.url, **nats_server.client_options("app")) as c:
        started = time.monotonic()
        with pytest.raises(PermissionDeniedError) as raised:
            await c.publish("digits", X, source="cam-7")  # the README's old example
        took = time.monotonic() - started
        message = raised.value.message
        assert took < AT_ONCE_S, took
        assert "identity app may not publish to mesh.events.digits.cam-7" in message
        assert "mesh.events.*.app" in message
        assert "source= must be the identity's name" in message
        started = time.monotonic()
        with pytest.raises(PermissionDeniedError) as raised:
            async for _ in c.results("digits", source="cam-7"):
                break
        assert time.monotonic() - started < AT_ONCE_S
        assert "CONSUMER.CREATE.MESH_RESULTS.cam-7" in raised.value.message
        # the connection is still good for what the identity may do
        assert c.nc.is_connected


async def test_a_request_the_identity_may_not_send_fails_at_once_not_at_its_deadline(
    nats_server: NatsServer,
) -> None:
    creds = await nats_server.issue(CONTROLLER)
    async with await MeshClient.connect(nats_server.url, user_credentials=str(creds)) as c:
        started = time.monotonic()
        with pytest.raises(PermissionDeniedError) as raised:
            await c.infer("digits", X, budget_ms=5000)
        assert time.monotonic() - started < AT_ONCE_S
        assert "identity controller may not publish to mesh.infer.digits" in raised.value.message
        assert "$SRV.INFO" in raised.value.message  # some of what it may publish


async def test_a_jetstream_call_the_identity_may_not_make_fails_at_once(
    nats_server: NatsServer,
) -> None:
    nc = await open_connection(
        nats_server.url, first_connect_s=5.0, **nats_server.client_options("app")
    )
    try:
        started = time.monotonic()
        with pytest.raises(PermissionDeniedError) as raised:
            await nc.jetstream(timeout=5.0).key_value(NODES_BUCKET)
        assert time.monotonic() - started < AT_ONCE_S
        # the subject as it was sent, though nats-py lowercases what the server said
        assert f"$JS.API.STREAM.INFO.KV_{NODES_BUCKET}" in raised.value.message
        assert "identity app" in raised.value.message
        assert nc.denials == 1
        # a request the identity may send still goes out on the same connection
        with pytest.raises(nats.errors.NoRespondersError):
            await nc.request("mesh.infer.nobody-serves-this", b"", timeout=2.0)
    finally:
        await nc.close()


async def test_replies_to_an_inbox_the_identity_may_not_read_fail_the_request_at_once(
    nats_server: NatsServer,
) -> None:
    options = {**nats_server.client_options("app"), "inbox_prefix": "_INBOX"}
    async with await MeshClient.connect(nats_server.url, **options) as c:
        started = time.monotonic()
        with pytest.raises(PermissionDeniedError) as raised:
            await c.infer("digits", X, budget_ms=5000)
        assert time.monotonic() - started < AT_ONCE_S
        assert "identity app may not subscribe to _INBOX." in raised.value.message
        assert "_INBOX_app.>" in raised.value.message


async def test_credentials_of_another_fleet_are_rejected_at_once(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    alien = await asyncio.to_thread(other_fleet_app, tmp_path)
    started = time.monotonic()
    with pytest.raises(UnauthenticatedError) as raised:
        await MeshClient.connect(nats_server.url, user_credentials=str(alien), connect_timeout=10)
    assert time.monotonic() - started < AT_ONCE_S
    assert f"rejected credentials {alien} (identity app)" in raised.value.message
    assert "Authorization Violation" in raised.value.message


def other_fleet_app(tmp_path: Path) -> Path:
    """The creds of an application of a fleet the test's servers do not trust."""
    return KeyStore.create(tmp_path / "other-fleet").ensure(APPLICATION)


@pytest.mark.parametrize("url", ["http://127.0.0.1:4222", "nats//127.0.0.1:4222"])
async def test_an_address_that_is_no_nats_url_is_refused_before_dialling(url: str) -> None:
    started = time.monotonic()
    with pytest.raises(InvalidArgumentError, match="nats://HOST:PORT"):
        await MeshClient.connect(url, connect_timeout=10)
    assert time.monotonic() - started < AT_ONCE_S


async def test_unreachable_servers_say_why() -> None:
    refused = f"nats://127.0.0.1:{free_port()}"
    with pytest.raises(UnavailableError, match="connection refused, nothing listens there"):
        await MeshClient.connect(refused, connect_timeout=1)
    with pytest.raises(UnavailableError, match=r"unknown host no-such-host\.invalid"):
        await MeshClient.connect("nats://no-such-host.invalid:4222", connect_timeout=1)


async def listening(port: int) -> None:
    async with asyncio.timeout(10):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return


def tls_server_config(keystore: KeyStore, directory: Path, port: int) -> Path:
    """A server taking clients over TLS only, with the fleet's development certificate."""
    pki = keystore.pki
    assert pki is not None
    conf = directory / "tls.conf"
    conf.write_text(
        f'listen: "127.0.0.1:{port}"\n'
        f'tls {{ cert_file: "{pki.server.cert_file}", key_file: "{pki.server.key_file}" }}\n'
    )
    return conf


async def test_a_server_whose_certificate_is_not_trusted_is_told_as_tls(
    keystore: KeyStore, tmp_path: Path
) -> None:
    port = free_port()
    conf = await asyncio.to_thread(tls_server_config, keystore, tmp_path, port)
    server = await asyncio.create_subprocess_exec(server_binary(), "-c", str(conf))
    try:
        await listening(port)
        with pytest.raises(UnavailableError, match="TLS failed") as raised:
            # the system's CAs, not the fleet's: the development CA is trusted by nobody else
            await MeshClient.connect(f"tls://127.0.0.1:{port}", connect_timeout=2)
        assert "--tls-ca" in raised.value.message
    finally:
        server.terminate()
        await server.wait()


# --- the mesh commands ----------------------------------------------------------------------


async def mesh(*args: str, env: dict[str, str]) -> tuple[int, str, str, float]:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mesh.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode(), time.monotonic() - started


async def test_mesh_commands_with_the_wrong_identity_say_so_in_one_error_line(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    app = str(nats_server.creds("app"))
    controller = str(await nats_server.issue(CONTROLLER))
    sample = tmp_path / "x.npy"
    np.save(sample, X)
    env = {"MESH_NATS_URL": nats_server.url}
    cases = [
        (["fleet", "status", "--creds", app], "identity app may not publish to $JS."),
        (["infer", "digits", str(sample), "--creds", controller, "--budget-ms", "5000"],
         "identity controller may not publish to mesh.infer.digits"),
        (["publish", "digits", str(sample), "--creds", app, "--source", "cam-7"],
         "identity app may not publish to mesh.events.digits.cam-7"),
    ]  # fmt: skip
    for args, says in cases:
        code, _, err, took = await mesh(*args, env=env)
        assert code == 2, err
        assert "Traceback" not in err, err
        lines = err.strip().splitlines()
        assert lines[0].startswith("error: PERMISSION_DENIED: ") and says in lines[0], err
        assert lines[1:] and lines[-1].startswith("hint: "), err
        print(f"\nmesh {' '.join(args[:2])}: {took:.1f} s: {lines[0][:160]}")


async def test_mesh_commands_with_a_wrong_url_or_foreign_credentials_say_which(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    sample = tmp_path / "x.npy"
    np.save(sample, X)
    alien = str(await asyncio.to_thread(other_fleet_app, tmp_path))
    cases = [
        (["--servers", f"http://127.0.0.1:{nats_server.client_port}"], "INVALID_ARGUMENT"),
        (["--servers", f"nats//127.0.0.1:{nats_server.client_port}"], "INVALID_ARGUMENT"),
        (["--servers", nats_server.url, "--creds", alien], "UNAUTHENTICATED"),
    ]
    for extra, code_name in cases:
        code, _, err, took = await mesh("infer", "digits", str(sample), *extra, env={})
        assert code == 2, err
        assert err.strip().splitlines() == [err.strip()], err
        assert err.startswith(f"error: {code_name}: "), err
        assert took < 30
