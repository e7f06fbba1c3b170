"""How a process starts and stops: its settings from a file, variables and flags, in that
order of precedence; the stop helper cancels a start at once and bounds a teardown."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from mesh.cli.options import flag_settings, server_list
from mesh.services.stopping import Shutdown, run_until_signalled
from mesh.settings import ControllerSettings, IngressSettings, NodeSettings


def test_flags_given_beat_variables_which_beat_the_file_which_beats_the_flag_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "ingress.yaml"
    config.write_text(
        "host: 0.0.0.0\nhttp_port: 9000\ngrpc_port: 9001\ntoken: from-file\n"
        "manifests: [models/digits.json]\nnats: {servers: [nats://file:4222]}\n"
    )
    monkeypatch.setenv("MESH_INGRESS_GRPC_PORT", "9101")
    monkeypatch.setenv("MESH_INGRESS_TOKEN", "from-env")
    settings = IngressSettings.load(
        config,
        flags={"token": "from-flag"},
        defaults={"http_port": 8080, "default_budget_ms": 250.0, "nats": {"tls_ca": "/ca.pem"}},
    )
    assert settings.token == "from-flag"
    assert settings.grpc_port == 9101
    assert (settings.host, settings.http_port) == ("0.0.0.0", 9000)
    assert settings.default_budget_ms == 250.0
    assert settings.nats.servers == ["nats://file:4222"]
    assert settings.nats.tls_ca == Path("/ca.pem")
    assert settings.manifests == [tmp_path / "models" / "digits.json"]


def test_only_the_flags_typed_on_the_command_line_override_the_settings() -> None:
    seen: dict[str, tuple[dict[str, object], dict[str, object]]] = {}

    @click.command()
    @click.option("--servers", default="nats://127.0.0.1:4222")
    @click.option("--tick", default=1.0)
    @click.option("--creds", default=None)
    @click.pass_context
    def command(ctx: click.Context, /, **_: object) -> None:
        seen["layers"] = flag_settings(
            ctx,
            {"servers": ("nats.servers", server_list), "tick": "tick_s", "creds": "credentials"},
        )

    result = CliRunner().invoke(command, ["--servers", "nats://a:1, nats://b:2"])
    assert result.exit_code == 0, result.output
    given, defaults = seen["layers"]
    assert given == {"nats": {"servers": ["nats://a:1", "nats://b:2"]}}
    assert defaults == {"tick_s": 1.0}


@pytest.mark.parametrize(
    ("cls", "variable", "value", "field"),
    [
        (ControllerSettings, "MESH_CONTROLLER_LEASE_S", "0", "lease_s"),
        (ControllerSettings, "MESH_CONTROLLER_DOMAIN", "a.b", "domain"),
        (IngressSettings, "MESH_INGRESS_LOG_LEVEL", "chatty", "log_level"),
        (IngressSettings, "MESH_INGRESS_NATS__SERVRS", '["x"]', "servrs"),
    ],
)
def test_each_process_reads_its_own_variables_and_names_a_bad_field(
    monkeypatch: pytest.MonkeyPatch, cls: type[IngressSettings], variable: str, value: str,
    field: str,
) -> None:  # fmt: skip
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as refused:
        cls.load()
    assert field in str(refused.value)
    NodeSettings.load(tier="edge")  # a node reads MESH_*, not another process's variables


async def test_a_signal_while_starting_cancels_the_start_and_exits_0() -> None:
    reached: list[str] = []

    async def serve(shutdown: Shutdown) -> int:
        try:
            await asyncio.sleep(3600)  # a connect that never succeeds
        except asyncio.CancelledError:
            reached.append("cancelled")
            raise
        await shutdown.wait()
        return 5

    loop = asyncio.get_running_loop()
    loop.call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(run_until_signalled(serve), 10) == 0
    assert reached == ["cancelled"]


async def test_a_signal_while_serving_lets_the_teardown_run_and_cuts_one_that_hangs() -> None:
    stages: list[str] = []

    async def serve(shutdown: Shutdown) -> int:
        await shutdown.wait()
        stages.append(f"stopping on {shutdown.signal.name if shutdown.signal else None}")
        try:
            await asyncio.sleep(3600)  # a part that never finishes stopping
        except asyncio.CancelledError:
            stages.append("cut")
            raise
        return 0

    loop = asyncio.get_running_loop()
    loop.call_later(0.05, os.kill, os.getpid(), signal.SIGINT)
    assert await asyncio.wait_for(run_until_signalled(serve, grace_s=0.2), 10) == 0
    assert stages == ["stopping on SIGINT", "cut"]


async def test_a_part_that_asks_to_stop_sets_the_status_even_when_its_teardown_is_cut() -> None:
    async def serve(shutdown: Shutdown) -> int:
        asyncio.get_running_loop().call_soon(shutdown.request, "connection died", 70)
        await shutdown.wait()
        return shutdown.status

    async def hangs(shutdown: Shutdown) -> int:
        asyncio.get_running_loop().call_soon(shutdown.request, "connection died", 70)
        await shutdown.wait()
        await asyncio.sleep(3600)  # a drain of a connection that answers nothing
        return 0

    assert await run_until_signalled(serve) == 70
    assert await asyncio.wait_for(run_until_signalled(hangs, grace_s=0.2), 10) == 70
