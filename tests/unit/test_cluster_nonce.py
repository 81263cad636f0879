"""The digest nonce key shared through settings (issue #12): a nonce that one node issued
verifies on another node that has the same ``GATEWAY_NONCE_SECRET``, and only then."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from gateway.config.loader import load_dialplan_text
from gateway.config.settings import Settings, SettingsError, load_settings
from gateway.registrar.service import RegistrarService

DIALPLAN = (
    "version: 1\nlisten: [ { transport: udp, host: 127.0.0.1, port: 5060 } ]\n"
    "agents:\n  alice: { password: a }\n"
)
NOW = 1_700_000_000.0


def node(secret: bytes | None) -> RegistrarService:
    return RegistrarService(
        load_dialplan_text(DIALPLAN, "t.yaml"),
        None,  # type: ignore[arg-type]  # nonces need no transactions, store, presence
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        loop_clock=lambda: 0.0,
        wall_clock=lambda: NOW,
        secret=secret,
    )


def test_a_nonce_from_one_node_verifies_on_another_with_the_shared_secret() -> None:
    settings = Settings(nonce_secret=SecretStr("correct horse battery staple"))
    first, second = node(settings.nonce_secret_bytes()), node(settings.nonce_secret_bytes())
    nonce = first.registrar.nonce_manager.make(NOW)
    assert second.registrar.nonce_manager.check(nonce, NOW + 1) == "valid"


def test_without_the_setting_each_node_refuses_the_others_nonces() -> None:
    settings = Settings()
    assert settings.nonce_secret_bytes() is None
    first, second = node(settings.nonce_secret_bytes()), node(settings.nonce_secret_bytes())
    nonce = first.registrar.nonce_manager.make(NOW)
    assert first.registrar.nonce_manager.check(nonce, NOW + 1) == "valid"
    assert second.registrar.nonce_manager.check(nonce, NOW + 1) == "invalid"


def test_a_short_secret_is_refused_and_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_NONCE_SECRET", "tooshort-xyz")
    with pytest.raises(SettingsError, match=r"GATEWAY_NONCE_SECRET=.*at least 16") as caught:
        load_settings()
    assert "tooshort-xyz" not in str(caught.value)
