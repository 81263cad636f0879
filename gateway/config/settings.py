"""Process settings from the environment (``GATEWAY_*``), SPEC O-1.

There is deliberately no module-level settings object: the entry point calls
:func:`load_settings` once and passes what each component needs to its constructor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["LogFormat", "LogLevel", "Settings", "load_settings"]

LogFormat = Literal["json", "console"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class Settings(BaseSettings):
    """Gateway settings. Each field is read from ``GATEWAY_<FIELD>`` (case-insensitive),
    e.g. ``GATEWAY_LOG_FORMAT=console``; keyword arguments take precedence."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", frozen=True, extra="forbid")

    dialplan: Path = Path("dialplans/example.yaml")
    """Dialplan YAML file to load."""
    data_dir: Path = Path("./data")
    """Directory for the embedded SQLite store and other state."""
    log_format: LogFormat = "json"
    """``json`` (one object per line, for production) or ``console`` (for humans)."""
    log_level: LogLevel = "INFO"
    """Lowest level written; accepts any case (``debug``)."""
    use_uvloop: bool = True
    """Run the asyncio loop on uvloop when it is installed."""
    store: str = "sqlite"
    """``sqlite`` (file in ``data_dir``), ``sqlite:///path``, or ``redis://host:port/db``."""
    mqtt_url: str = ""
    """Broker ``mqtt://[user:pass@]host:port`` or ``mqtts://...``; empty: start an embedded
    broker on 127.0.0.1 (``mqtt_embedded_port``); ``off``: publish nothing."""
    mqtt_ca_file: Path | None = None
    """CA bundle for ``mqtts://`` (the system store when unset)."""
    mqtt_prefix: str = "gateway"
    """Topic prefix: ``<prefix>/agents/<agent>/presence`` and so on."""
    mqtt_embedded_port: int = 1884
    """Port of the embedded broker (the next free one when taken); 1884 so that a system
    Mosquitto on 1883 is left alone."""
    mqtt_buffer: int = 10_000
    """Events kept while the broker is unreachable (the oldest dropped beyond)."""
    gc_pacing: bool = True
    """Collect garbage on a timer instead of CPython's automatic full passes, whose pause
    grows with the call rate (see ``gateway/gcpolicy.py``)."""
    gc_full_interval_s: float = 600.0
    """Seconds between full garbage collections when ``gc_pacing`` is on."""

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _format_lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


def load_settings(**overrides: Any) -> Settings:
    """Build :class:`Settings` from the environment, with ``overrides`` taking precedence.

    Raises :class:`pydantic.ValidationError` when a value is invalid.
    """
    return Settings(**overrides)
