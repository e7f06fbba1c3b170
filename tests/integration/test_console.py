"""The operator console as people use it, in a real headless browser (Debian's Chromium), against
``mesh up``: the fleet page lists the running nodes, a node frozen with SIGSTOP shows offline
and comes back online without a reload, nothing is served without the credential, and every
page passes axe-core's accessibility check with no serious or critical violation. Screenshots go
to ``test-artifacts/console/``."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from mesh.dev.models.demo import DemoArtifacts
from tests.fixtures.browser import Browser

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

#: ``mesh up``'s nodes beat every second and the console counts a node offline after 10 s
#: without a beat; a frozen node must show offline within that plus a few seconds.
OFFLINE_AFTER_S = 10.0
HEARTBEAT_S = 1.0
SLACK_S = 6.0


@dataclass
class MeshUp:
    proc: subprocess.Popen[str]
    env: dict[str, str]
    pids: dict[str, int]
    stderr: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.env["MESH_CONSOLE_URL"]

    @property
    def token(self) -> str:
        return self.env["MESH_CONSOLE_TOKEN"]

    def pid(self, node: str) -> int:
        for line in reversed(self.stderr):
            found = re.match(rf"node {re.escape(node)}(?: restarted)?: pid (\d+)", line)
            if found:
                return int(found.group(1))
        return self.pids[node]


def _pump(stream: Any, into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line.rstrip("\n"))


@pytest.fixture(scope="module")
def mesh_up(demo: DemoArtifacts) -> Iterator[MeshUp]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mesh.cli", "up", "--cache", str(demo.root)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    out: queue.Queue[str] = queue.Queue()
    err: queue.Queue[str] = queue.Queue()
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, out), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, err), daemon=True),
    ]
    for pump in pumps:
        pump.start()
    env: dict[str, str] = {}
    up = MeshUp(proc, env, {})
    deadline = time.monotonic() + 180
    try:
        while "MESH_CONSOLE_TOKEN" not in env:
            try:
                line = out.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"mesh up printed no console lines: {env}") from None
            name, _, value = line.partition("=")
            env[name] = value
        while not err.empty():
            up.stderr.append(err.get())
        for line in up.stderr:
            found = re.match(r"node (\S+): pid (\d+), http ", line)
            if found:
                up.pids[found.group(1)] = int(found.group(2))
        up.stderr_queue = err  # type: ignore[attr-defined]
        yield up
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        for pump in pumps:
            pump.join(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _drain(up: MeshUp) -> None:
    pending: queue.Queue[str] = up.stderr_queue  # type: ignore[attr-defined]
    while not pending.empty():
        up.stderr.append(pending.get())


def _status(url: str, headers: dict[str, str] | None = None, method: str = "GET",
            data: bytes | None = None) -> tuple[int, str, Any]:  # fmt: skip
    request = urllib.request.Request(url, headers=headers or {}, method=method, data=data)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(4_000_000).decode(), response.headers
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), error.headers


def _row(browser: Browser, node: str) -> str:
    return browser.text(f"#node-{node}")


def test_mesh_up_prints_the_console_and_every_node_it_starts(mesh_up: MeshUp) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", mesh_up.url), mesh_up.url
    assert len(mesh_up.token) >= 16
    assert set(mesh_up.pids) == {"cloud-0", "gateway-0", "edge-0"}, mesh_up.stderr


def test_the_fleet_page_shows_a_frozen_node_offline_then_online_without_a_reload(
    mesh_up: MeshUp, browser: Browser
) -> None:
    browser.open(f"{mesh_up.url}/?token={mesh_up.token}")
    nodes = ("cloud-0", "gateway-0", "edge-0")
    browser.wait_for(
        "every node listed online",
        lambda: all("online" in _row(browser, n) for n in nodes),
        timeout=20,
    )
    assert "token=" not in browser.driver.current_url, "the token stayed in the address bar"
    browser.wait_for("live updates on", lambda: "on" in browser.text("#connection"), 10)
    browser.mark()
    browser.screenshot("fleet")

    _drain(mesh_up)
    pid = mesh_up.pid("edge-0")
    os.kill(pid, signal.SIGSTOP)
    try:
        took = browser.wait_for(
            "edge-0 shown offline",
            lambda: "offline" in _row(browser, "edge-0"),
            timeout=OFFLINE_AFTER_S + HEARTBEAT_S + SLACK_S,
        )
        shot = browser.screenshot("edge-0-offline")
        assert "online" in _row(browser, "gateway-0") and "online" in _row(browser, "cloud-0")
        assert browser.marked(), "the page reloaded"
    finally:
        os.kill(pid, signal.SIGCONT)
    back = browser.wait_for(
        "edge-0 online again", lambda: "online" in _row(browser, "edge-0"), timeout=30
    )
    browser.screenshot("edge-0-online-again")
    assert browser.marked(), "the page reloaded"
    print(json.dumps({"offline_shown_after_s": round(took, 1), "online_again_after_s":
                      round(back, 1), "screenshot": str(shot)}))  # fmt: skip
    # its own page tells the story
    browser.open(f"{mesh_up.url}/nodes/edge-0")
    browser.wait_for("the journal names the outage", lambda: "offline" in browser.text("#node"), 10)
    browser.screenshot("edge-0-journal")


def test_without_the_credential_pages_api_streams_and_actions_are_refused(
    mesh_up: MeshUp, browser: Browser
) -> None:
    url = mesh_up.url
    for path in ("/", "/nodes/edge-0", "/rollouts", "/review", "/quality"):
        code, body, _ = _status(url + path)
        assert code == 401 and "token" in body, (path, code)
        assert "edge-0" not in body
    for path in ("/api/fleet", "/api/rollouts", "/api/review", "/api/quality", "/api/actions"):
        code, body, headers = _status(url + path)
        assert code == 401 and json.loads(body)["error"]["code"] == "UNAUTHENTICATED", path
        assert headers["WWW-Authenticate"].startswith("Bearer")
        code, _, _ = _status(url + path, {"Authorization": "Bearer not-the-token-at-all"})
        assert code == 401, path
    code, _, _ = _status(f"{url}/events?page=fleet")
    assert code == 401
    code, _, _ = _status(f"{url}/?token=not-the-token-at-all")
    assert code == 401
    code, _, _ = _status(f"{url}/api/rollouts/digits/abort", method="POST", data=b"{}")
    assert code == 401
    # with the token, the same requests are served
    bearer = {"Authorization": f"Bearer {mesh_up.token}"}
    code, body, _ = _status(f"{url}/api/fleet", bearer)
    assert code == 200 and "edge-0" in body
    # a page opened with the token sets an HttpOnly cookie; an action with the cookie alone
    # (as another site could make a browser send) is refused without the page's CSRF token
    code, _, headers = _status(f"{url}/?token={mesh_up.token}")
    cookie = headers["Set-Cookie"]
    assert code == 200 and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    session = {"Cookie": cookie.split(";", 1)[0]}
    code, _, _ = _status(f"{url}/api/fleet", session)
    assert code == 200
    code, _, _ = _status(f"{url}/rollouts/digits/abort", session, "POST", b"csrf=forged")
    assert code == 403
    code, _, _ = _status(
        f"{url}/api/rollouts/digits/abort", {**session, "Origin": "http://evil.example"},
        "POST", b"{}",
    )  # fmt: skip
    assert code == 403
    browser.open(url + "/")
    assert "token" in browser.text("main")
    browser.screenshot("refused")


def test_every_page_passes_axe_with_no_serious_or_critical_violation(
    mesh_up: MeshUp, browser: Browser
) -> None:
    browser.open(f"{mesh_up.url}/?token={mesh_up.token}")
    browser.wait_for("the fleet listed", lambda: "edge-0" in browser.text("#fleet"), 20)
    found: dict[str, list[str]] = {}
    for path in ("/", "/nodes/edge-0", "/rollouts", "/review", "/quality"):
        browser.open(mesh_up.url + path)
        time.sleep(1.0)  # the stream's first fragments are in
        violations = browser.axe()
        browser.screenshot(path.strip("/").replace("/", "-") or "fleet")
        found[path] = [f"{v['id']} ({v['impact']}): {v.get('help', '')}" for v in violations]
    browser.driver.delete_all_cookies()
    browser.open(mesh_up.url + "/")
    found["refusal"] = [f"{v['id']} ({v['impact']})" for v in browser.axe()]
    assert all(not v for v in found.values()), found


async def _ask_for_people(up: MeshUp, rows: int) -> list[str]:
    """Requests whose callers ask for a person (``human_review=always``): review items."""
    import numpy as np

    from mesh import MeshClient

    x = np.load(up.demo_test)["x"][:rows].astype(np.float32)  # type: ignore[attr-defined]
    ids = []
    options = {"user_credentials": up.env["MESH_CREDS"]}
    async with await MeshClient.connect(up.env["MESH_NATS_URL"], **options) as client:
        for row in x:
            result = await client.infer("digits", row[None, :], human_review="always")
            ids.append(result.id)
    return ids


async def _stored_labels(up: MeshUp, items: list[str]) -> dict[str, Any]:
    """The label records of ``items`` as the store holds them (the hub's KV, read as the
    administrator: what the review desk reads too)."""
    from pathlib import Path

    import nats

    from mesh.review.records import decode_label
    from mesh.topology.streams import REVIEW_LABELS_BUCKET

    admin = Path(up.env["MESH_CREDS"]).with_name("admin.creds")
    hub = next(line.split()[1].rstrip(";") for line in up.stderr if line.startswith("hub "))
    nc = await nats.connect(hub, user_credentials=str(admin), inbox_prefix="_INBOX_admin")
    try:
        kv = await nc.jetstream(domain="hub").key_value(REVIEW_LABELS_BUCKET)
        out = {}
        for item in items:
            entry = await kv.get(item)
            out[item] = decode_label(entry.value or b"", revision=int(entry.revision or 0))
        return out
    finally:
        await nc.close()


def test_items_are_labelled_with_a_click_and_with_a_key_and_leave_the_queue(
    mesh_up: MeshUp, browser: Browser, demo: DemoArtifacts
) -> None:
    import asyncio

    mesh_up.demo_test = demo.test  # type: ignore[attr-defined]
    bearer = {"Authorization": f"Bearer {mesh_up.token}"}

    def queued() -> list[dict[str, Any]]:
        code, body, _ = _status(f"{mesh_up.url}/api/review", bearer)
        return list(json.loads(body)["items"]) if code == 200 else []

    asyncio.run(_ask_for_people(mesh_up, 3))
    browser.wait_for("three items queued", lambda: len(queued()) >= 3, timeout=60)
    browser.open(f"{mesh_up.url}/review?token={mesh_up.token}")
    browser.wait_for("an item to label", lambda: "Label this item" in browser.text("main"), 10)
    browser.mark()
    first = str(browser.driver.execute_script(
        "return document.getElementById('item-heading').dataset.item;"))  # fmt: skip
    browser.screenshot("item-to-label")
    browser.driver.find_element("css selector", "#review-item button.label[value='3']").click()
    browser.wait_for(
        "the next item shown",
        lambda: browser.driver.execute_script(
            "const h = document.getElementById('item-heading');"
            "return h ? h.dataset.item : '';") not in ("", first),
        timeout=15,
    )  # fmt: skip
    second = str(browser.driver.execute_script(
        "return document.getElementById('item-heading').dataset.item;"))  # fmt: skip
    browser.screenshot("labelled-by-click")
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(browser.driver).send_keys("5").perform()
    browser.wait_for(
        "the item labelled by key gone from the page",
        lambda: browser.driver.execute_script(
            "const h = document.getElementById('item-heading');"
            "return h ? h.dataset.item : 'none';") != second,
        timeout=15,
    )  # fmt: skip
    browser.wait_for(
        "both items gone from the queue on the page",
        lambda: (
            first[:12] not in browser.text("#review-queue")
            and second[:12] not in browser.text("#review-queue")
        ),
        timeout=15,
    )
    browser.screenshot("labelled-by-key")
    assert browser.marked(), "the page reloaded"
    pending = {i["id"] for i in queued()}
    assert first not in pending and second not in pending
    stored = asyncio.run(_stored_labels(mesh_up, [first, second]))
    assert stored[first].label == 3 and stored[second].label == 5, stored
    assert {s.by for s in stored.values()} == {"console-reviewer"}, stored
    code, body, _ = _status(f"{mesh_up.url}/api/actions", bearer)
    assert code == 200
    done = [a for a in json.loads(body) if a["action"] == "review.label"]
    assert {a["target"] for a in done} >= {first, second}
    assert all(a["person"] == "operator" and a["outcome"] == "done" for a in done)
