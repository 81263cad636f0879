"""A trunk's credentials and its optional registration (issue 13: trunk authentication).

Theory of operation
-------------------
A carrier may challenge the gateway's requests (401/407, RFC 3261 section 22) and may want
the gateway to REGISTER to it (registration-based trunks). The dialplan says so per trunk::

    trunks:
      carrier:
        gateways: [ { host: sbc.example.net } ]
        auth: { username: acme, password_env: CARRIER_PASSWORD, realm: sbc.example.net }
        register: { expires: 600 }

The password never sits in the dialplan: ``password_env`` names an environment variable,
``password_file`` a file whose first line is the password (a container secret). It is read
once, when first needed (:attr:`TrunkAuth.credentials`), and is kept in a
:class:`TrunkCredentials` whose ``repr`` hides it, so neither a log line nor ``gateway check``
can print it. A secret that cannot be read leaves the trunk without credentials (its calls go
out and a challenge fails over as it would without ``auth``) and :attr:`TrunkAuth.problem`
says why, naming the variable or file, never a value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from gateway.config.fields import Frozen, check_host, problem

__all__ = ["TrunkAuth", "TrunkCredentials", "TrunkRegister", "TrunkTls"]


@dataclass(frozen=True, slots=True)
class TrunkCredentials:
    """The digest credentials the gateway answers a trunk's challenge with.

    ``realm`` None: answer a challenge of any realm; else only that realm's. The password
    is left out of ``repr`` (and so of every log line and exception text).
    """

    username: str
    password: str = field(repr=False)
    realm: str | None = None


class TrunkAuth(Frozen):
    """``auth`` of a trunk: the user name, where the password is, and the realm to answer."""

    username: Annotated[str, Field(min_length=1, max_length=128)]
    password_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    password_file: Annotated[str, Field(min_length=1)] | None = None
    realm: Annotated[str, Field(min_length=1, max_length=256)] | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> TrunkAuth:
        if (self.password_env is None) == (self.password_file is None):
            raise problem(
                "auth",
                "give the password as exactly one of password_env (an environment "
                "variable) or password_file (a secrets file), never in the dialplan",
            )
        return self

    def _read_secret(self) -> tuple[str | None, str | None]:
        """(password, None) or (None, why it could not be read: no secret in the text)."""
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if not value:
                return None, f"environment variable {self.password_env} is not set or empty"
            return value, None
        assert self.password_file is not None
        try:
            text = Path(self.password_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            return (
                None,
                f"secrets file {self.password_file} cannot be read ({type(error).__name__})",
            )
        lines = text.splitlines()
        value = lines[0].strip() if lines else ""
        if not value:
            return None, f"secrets file {self.password_file} is empty"
        return value, None

    @cached_property
    def _resolved(self) -> tuple[TrunkCredentials | None, str | None]:
        password, why = self._read_secret()
        if password is None:
            return None, why
        return TrunkCredentials(self.username, password, self.realm), None

    @property
    def credentials(self) -> TrunkCredentials | None:
        """The credentials, the secret read on first use; None when it cannot be read."""
        return self._resolved[0]

    @property
    def problem(self) -> str | None:
        """Why there are no credentials (names the variable or file, never a secret)."""
        return self._resolved[1]


class TrunkRegister(Frozen):
    """``register`` of a trunk: REGISTER to its first gateway and keep the binding fresh.

    ``expires`` is asked for (the registrar may grant less); the binding is refreshed when
    ``refresh_ratio`` of the granted time has passed. A failed attempt is retried after
    ``retry_min_s``, doubling up to ``retry_max_s``. ``aor_user`` is the user of the
    address-of-record (default: the ``auth`` user name); ``domain`` its host (default: the
    gateway's host).
    """

    expires: Annotated[int, Field(ge=60, le=86400)] = 600
    refresh_ratio: Annotated[float, Field(gt=0.1, lt=1.0)] = 0.8
    retry_min_s: Annotated[float, Field(gt=0)] = 2.0
    retry_max_s: Annotated[float, Field(gt=0)] = 300.0
    aor_user: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    domain: Annotated[str, Field(min_length=1, max_length=256)] | None = None

    @model_validator(mode="after")
    def _retry_order(self) -> TrunkRegister:
        if self.retry_max_s < self.retry_min_s:
            raise problem("register", "retry_max_s must not be less than retry_min_s")
        return self


class TrunkTls(Frozen):
    """How the gateway checks a TLS trunk and proves itself to it (RFC 5922, RFC 5630).

    The trunk's certificate must chain to ``ca_file`` (default: ``GATEWAY_TLS_CA_FILE``,
    else the system store) and name ``server_name`` (default: each gateway's host; also
    sent as SNI). With ``mutual``, the gateway presents ``client_cert_file`` /
    ``client_key_file`` (default: ``GATEWAY_TLS_CERT_FILE`` / ``GATEWAY_TLS_KEY_FILE``).
    """

    server_name: str | None = None
    ca_file: str | None = None
    mutual: bool = False
    client_cert_file: str | None = None
    client_key_file: str | None = None

    @field_validator("server_name")
    @classmethod
    def _valid_name(cls, value: str | None) -> str | None:
        return None if value is None else check_host(value)

    @model_validator(mode="after")
    def _key_with_cert(self) -> TrunkTls:
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise problem(
                "tls", "client_cert_file and client_key_file go together: give both or neither"
            )
        return self
