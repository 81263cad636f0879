"""Registrar (SPEC R-1): digest authentication (RFC 3261 section 22, RFC 7616, RFC 8760) and
sans-I/O REGISTER processing (RFC 3261 section 10.3)."""

from gateway.registrar.digest import (
    AuthResult,
    Credentials,
    DigestParseError,
    NonceManager,
    challenge,
    parse_authorization,
    verify,
)
from gateway.registrar.digest_client import make_authorization
from gateway.registrar.registrar import BindingView, RegisterOutcome, Registrar

__all__ = [
    "AuthResult",
    "BindingView",
    "Credentials",
    "DigestParseError",
    "NonceManager",
    "RegisterOutcome",
    "Registrar",
    "challenge",
    "make_authorization",
    "parse_authorization",
    "verify",
]
