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
