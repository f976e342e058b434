"""OCPP Security Profile 1: HTTP Basic authentication of charge points at the handshake.

The OCPP 1.6 security whitepaper has the charger send ``Authorization: Basic
base64(<charge point id>:<AuthorizationKey>)`` on the WebSocket upgrade; the
username must be the id in the URL, so one charger's key never opens another's
path. Passwords come from the config, shared (``ocpp.auth.password``) or per
charger (``ocpp.auth.passwords``), in one of three forms:

* ``pbkdf2_sha256$<iterations>$<salt>$<base64 hash>`` (Django's format; make one with
  ``python -m ocpp_addon.auth``): what to put in a config file others can read;
* ``sha256:<64 hex digits>``: unsalted, only better than plain text;
* anything else is the password itself.

Every comparison is constant-time (``hmac.compare_digest``). PBKDF2 is slow on
purpose, so it runs in a worker thread (never on the event loop) and a verified
password is remembered per charger as a salted fast digest: a charger that
reconnects every minute costs one PBKDF2 per process lifetime, and a wrong
password for it is refused without another one.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import getpass
import hashlib
import hmac
import os
import re
import secrets
import sys
from typing import Any, Mapping

SHA256_PREFIX = "sha256:"
PBKDF2_PREFIX = "pbkdf2_sha256$"
PBKDF2_DEFAULT_ITERATIONS = 200_000
_SHA256_RE = re.compile(r"^sha256:[0-9a-fA-F]{64}$")
REALM = "ocpp"


def check_stored(stored: str) -> None:
    """Raise ValueError (naming the expected format, never the value) for a malformed hashed password."""
    if stored.startswith(SHA256_PREFIX) and not _SHA256_RE.match(stored):
        raise ValueError("a 'sha256:' password must be followed by 64 hex digits (sha256 of the password)")
    if stored.startswith(PBKDF2_PREFIX):
        _parse_pbkdf2(stored)


def _parse_pbkdf2(stored: str) -> tuple[int, bytes, bytes]:
    parts = stored.split("$")
    try:
        if len(parts) != 4:
            raise ValueError
        iterations = int(parts[1])
        expected = base64.b64decode(parts[3], validate=True)
        if iterations < 1 or not parts[2] or len(expected) < 16:
            raise ValueError
    except (ValueError, binascii.Error):
        raise ValueError("a pbkdf2 password must look like pbkdf2_sha256$<iterations>$<salt>$<base64 hash>; "
                         "make one with: python -m ocpp_addon.auth") from None
    return iterations, parts[2].encode(), expected


def is_slow(stored: str) -> bool:
    return stored.startswith(PBKDF2_PREFIX)


def verify(password: bytes, stored: str) -> bool:
    """Does ``password`` (as the charger sent it) match ``stored`` (a config value)? Constant-time."""
    if stored.startswith(PBKDF2_PREFIX):
        iterations, salt, expected = _parse_pbkdf2(stored)
        return hmac.compare_digest(hashlib.pbkdf2_hmac("sha256", password, salt, iterations, len(expected)), expected)
    if _SHA256_RE.match(stored):
        return hmac.compare_digest(hashlib.sha256(password).hexdigest(), stored[len(SHA256_PREFIX):].lower())
    return hmac.compare_digest(password, stored.encode("utf-8"))


def hash_password(password: str, iterations: int = PBKDF2_DEFAULT_ITERATIONS, salt: str | None = None) -> str:
    """The ``pbkdf2_sha256$...`` form of ``password``, for the config."""
    salt = salt or secrets.token_urlsafe(12)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt.encode(), iterations)
    return f"{PBKDF2_PREFIX}{iterations}${salt}${base64.b64encode(digest).decode()}"


def parse_basic(header: str | None) -> tuple[str, bytes] | None:
    """``Basic base64(user:password)`` -> (user, password bytes); None when absent or malformed."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (ValueError, binascii.Error):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


class Authenticator:
    """Decides, per handshake, whether a charge point may connect (``ocpp.auth`` and the known-id list)."""

    def __init__(self, ocpp: Mapping[str, Any]) -> None:
        auth = ocpp["auth"]
        self.required = auth["mode"] == "basic"
        self.shared: str | None = auth["password"]
        self.passwords: dict[str, str] = dict(auth["passwords"])
        self.allow_unknown: bool = ocpp["allow_unknown_chargers"]
        self.known_ids = frozenset(ocpp["chargers"]) | frozenset(self.passwords)
        self._pepper = os.urandom(16)  # keys the remembered digests; never leaves the process
        self._verified: dict[str, bytes] = {}
        self._slow = asyncio.Semaphore(2)  # PBKDF2 from unauthenticated clients must not take every thread

    def is_known(self, charger_id: str) -> bool:
        return self.allow_unknown or charger_id in self.known_ids

    def _remembered(self, charger_id: str, password: bytes) -> bytes:
        return hmac.new(self._pepper, charger_id.encode() + b"\0" + password, hashlib.sha256).digest()

    async def check(self, charger_id: str, authorization: str | None) -> str | None:
        """None when the charger may connect; otherwise why not (for our log, never for the client)."""
        if not self.required:
            return None
        credentials = parse_basic(authorization)
        if credentials is None:
            return "no HTTP Basic credentials" if not authorization else "malformed Authorization header"
        user, password = credentials
        if not hmac.compare_digest(user.encode(), charger_id.encode()):
            return "the username is not the charge point id"
        stored = self.passwords.get(charger_id, self.shared)
        if stored is None:
            return "no password is configured for this charge point"
        remembered = self._verified.get(charger_id)
        if remembered is not None:
            ok = hmac.compare_digest(remembered, self._remembered(charger_id, password))
        elif is_slow(stored):
            async with self._slow:
                ok = await asyncio.to_thread(verify, password, stored)
            if ok:
                self._verified[charger_id] = self._remembered(charger_id, password)
        else:
            ok = verify(password, stored)
        return None if ok else "wrong password"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ocpp_addon.auth",
        description="Print the pbkdf2_sha256 form of a charge point password, for ocpp.auth.password(s).",
    )
    parser.add_argument("--iterations", type=int, default=PBKDF2_DEFAULT_ITERATIONS)
    parser.add_argument("--stdin", action="store_true", help="read the password from standard input instead of prompting")
    args = parser.parse_args(argv)
    password = sys.stdin.readline().rstrip("\r\n") if args.stdin else getpass.getpass("charge point password: ")
    if not password:
        print("empty password", file=sys.stderr)
        return 2
    print(hash_password(password, args.iterations))
    return 0


if __name__ == "__main__":
    sys.exit(main())
