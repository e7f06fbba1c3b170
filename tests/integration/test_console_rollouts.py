"""A rollout as people watch and steer it in the console, in a real headless browser: a
simulated fleet on real servers under load, a controller, and ``mesh console`` as its own
process with the console identity. The stages advance on the page without a reload; a pause
asked on the page (with its confirmation) holds the rollout, a resume lets it finish, and both
are in the action log with who did them."""

from __future__ import annotations

import asyncio
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mesh.dev.fleetsim.simulate import CONTROLLER, FleetSimulation, SimLoad
from mesh.dev.models.demo import DemoArtifacts
from mesh.local.supervisor import ChildProcess, child_env
from mesh.models.manifest import copy_as_version
from mesh.security.identities import IdentitySpec
from mesh.security.permissions import Role
from tests.fixtures.browser import Browser
from tests.fixtures.commands import mesh_cli
from tests.fixtures.fleet import (
    LATENCY_NOT_JUDGED,
    hub_args,
    push_version,
    rollout_of,
    simulation,
)
from tests.integration.test_rollouts import start_controller

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

GOOD = "2-edge"


@pytest.fixture
async def sim(tmp_path: Path, demo: DemoArtifacts) -> AsyncIterator[FleetSimulation]:
    async with simulation(tmp_path, demo, nodes=4) as s:
        yield s


async def start_console(sim: FleetSimulation, token: str) -> ChildProcess:
    creds = await sim.issue(IdentitySpec("console", Role.CONSOLE))
    child = ChildProcess(
        "console",
        [sys.executable, "-m", "mesh.cli", "console", "--servers", sim.hub.url, "--creds",
         str(creds), "--port", "0", "--offline-after", "3"],
        sim.work / "console.log",
        ready_prefix="MESH_CONSOLE_READY",
        env=child_env({"MESH_CONSOLE_TOKEN": token}),
    )  # fmt: skip
    await child.start()
    return child


def stage_status(browser: Browser, n: int) -> str:
    return str(
        browser.driver.execute_script(
            "const r = document.getElementById('stage-digits-' + arguments[0]);"
            "return r ? r.dataset.status : '';",
            n,
        )
    )


async def test_a_rollouts_stages_advance_on_the_page_and_a_person_pauses_and_resumes_it(
    sim: FleetSimulation, demo: DemoArtifacts, tmp_path: Path, browser: Browser
) -> None:
    assert sim.key is not None
    await push_version(sim, copy_as_version, demo.edge, GOOD, tmp_path / "good")
    load = SimLoad(sim, rate_per_node=6.0)
    await load.start()
    token = secrets.token_urlsafe(24)
    console = await start_console(sim, token)
    controller = await start_controller(sim, "ctl-a")
    run = asyncio.to_thread
    try:
        url = console.info["http"]
        await run(browser.open, f"{url}/rollouts?token={token}")
        await asyncio.sleep(2.0)  # every node has beaten, with evidence
        # each stage soaks 12 s, so that the pause below lands while the rollout still runs:
        # with 3 s a loaded CI machine's browser took longer than stages 2 and 3 together
        code, _, err = await mesh_cli(
            "rollout", "start", "digits", GOOD, "--stages", "1,50%,100%", "--soak", "12s",
            "--gate", "min_requests=20", "--gate", "min_samples=20",
            "--gate", "max_agreement_drop=0.2", "--gate", LATENCY_NOT_JUDGED,
            "--trusted-key", sim.key.public,
            *hub_args(sim), "--offline-after", "2",
        )  # fmt: skip
        assert code == 0, err
        await run(browser.wait_for, "the rollout on the page",
                  lambda: stage_status(browser, 1) != "", 20)  # fmt: skip
        await run(browser.mark)
        await run(browser.screenshot, "stage-1")
        await run(browser.wait_for, "stage 1 passed on the page",
                  lambda: stage_status(browser, 1) == "passed", 90)  # fmt: skip
        await run(browser.screenshot, "stage-1-passed")

        # a person pauses it: the button, then the confirmation
        await run(browser.open, f"{url}/rollouts/digits/pause")
        await run(browser.screenshot, "confirm-pause")
        violations = await run(browser.axe)
        assert violations == [], violations
        button = await run(browser.driver.find_element, "css selector", "main form button")
        await run(button.click)
        await run(browser.wait_for, "the rollout paused",
                  lambda: "paused" in browser.text(".rollout"), 15)  # fmt: skip
        held = await rollout_of(sim)
        assert held.state == "paused" and held.reason == "paused by operator (console)"
        await run(browser.screenshot, "paused")
        await run(browser.open, f"{url}/rollouts/digits/resume")
        button = await run(browser.driver.find_element, "css selector", "main form button")
        await run(button.click)
        # the confirmation's form posts, then the browser is sent back to the rollouts page:
        # mark that page, not the confirmation it leaves
        await run(browser.wait_for, "back on the rollouts page",
                  lambda: "/resume" not in browser.driver.current_url
                  and "paused" not in browser.text(".rollout"), 15)  # fmt: skip
        await run(browser.mark)
        await run(browser.wait_for, "every stage passed on the page",
                  lambda: all(stage_status(browser, n) == "passed" for n in (1, 2, 3)),
                  120)  # fmt: skip
        assert await run(browser.marked), "the page reloaded"
        await run(browser.screenshot, "completed")
        log = await run(browser.text, ".actions-log")
        assert "rollout.pause" in log and "rollout.resume" in log and "operator" in log
        done = await rollout_of(sim)
        assert done.state == "completed", done.reason
        violations = await run(browser.axe)
        assert violations == [], violations
    finally:
        await load.stop()
        await controller.stop()
        await console.stop()
    assert load.figures.errors == []
    # the controller's credentials could do this too; the console's could not rewrite the lease
    assert CONTROLLER.name == "controller"
