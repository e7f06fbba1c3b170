"""The fleet key store on disk and `mesh identities`: what it writes, and that it refuses what
would break a fleet (a second init over a fleet, opening a folder with no keys)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from mesh.cli import main
from mesh.security.creds import inbox_prefix_of, user_claims
from mesh.security.identities import IdentitySpec
from mesh.security.keystore import KeyStore, KeyStoreError
from mesh.security.permissions import Role


def test_init_writes_the_server_config_creds_and_tls_and_keeps_the_seeds_private(
    tmp_path: Path,
) -> None:
    result = CliRunner().invoke(main, ["identities", "init", str(tmp_path / "fleet")])
    assert result.exit_code == 0, result.output
    fleet = tmp_path / "fleet"
    assert "resolver: MEMORY" in (fleet / "auth.conf").read_text()
    assert (fleet / "account.conf").read_text().startswith('MESH_ACCOUNT: "A')
    for private in (fleet / "fleet.json", fleet / "creds" / "app.creds"):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert (fleet / "tls" / "ca.pem").exists()
    names = {p.stem for p in (fleet / "creds").glob("*.creds")}
    assert {"app", "edge-0", "gateway-0", "cloud-0", "site-leaf", "admin"} <= names
    again = CliRunner().invoke(main, ["identities", "init", str(fleet)])
    assert again.exit_code == 2 and "already holds" in again.output


def test_add_issues_a_node_identity_with_its_tier_and_list_shows_it(tmp_path: Path) -> None:
    KeyStore.create(tmp_path, tls=False)
    added = CliRunner().invoke(
        main,
        ["identities", "add", str(tmp_path), "cam-7", "--role", "node", "--tier", "edge",
         "--upstream-tier", "gateway", "--entry"],
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    creds = Path(added.output.strip())
    claims = user_claims(creds)
    assert claims["name"] == "cam-7"
    assert "mesh.edge.infer.> mesh.edge" in claims["nats"]["sub"]["allow"]
    assert inbox_prefix_of(creds) == "_INBOX_cam-7"
    listed = CliRunner().invoke(main, ["identities", "list", str(tmp_path)])
    assert "cam-7: node tier=edge upstream=gateway entry" in listed.output


def test_ensure_reissues_only_when_the_role_changes(tmp_path: Path) -> None:
    store = KeyStore.create(tmp_path, tls=False)
    spec = IdentitySpec("app9", Role.APPLICATION)
    first = store.ensure(spec).read_text()
    assert store.ensure(spec).read_text() == first
    assert store.ensure(IdentitySpec("app9", Role.CONSOLE)).read_text() != first
    assert json.loads((tmp_path / "identities.json").read_text())["app9"]["role"] == "console"


def test_opening_a_folder_without_keys_says_how_to_make_them(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="mesh identities init"):
        KeyStore.open(tmp_path)
    result = CliRunner().invoke(main, ["identities", "list", str(tmp_path)])
    assert result.exit_code == 2 and "mesh identities init" in result.output
