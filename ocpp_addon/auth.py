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
purpose, which makes it a lever for an attacker; three rules take it away:

* **equal work**: while any PBKDF2 password is configured, every attempt that is
  not a remembered success costs exactly one PBKDF2 of the configured strength,
  against the real hash or a dummy one, so how long a refusal takes does not
  tell whether the id exists or which kind of password it has;
* **bounded work**: PBKDF2 runs on two worker threads (never on the event loop),
  at most :data:`PER_ADDRESS` attempts per client address and :data:`PER_ID`
  per charge point id wait for them; beyond that an attempt is refused at once,
  and a wrong password seen recently is refused without hashing it again;
* **fairness**: waiting attempts are served round-robin by client address, so
  hundreds of wrong guesses from one address delay a charger's correct login
  from another by at most a couple of hashes instead of starving it.

A verified password is remembered per charger as a peppered fast digest: a
charger that reconnects every minute costs one PBKDF2 per process lifetime.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import base64
import binascii
import getpass
import hashlib
import hmac
import os
import re
import secrets
import sys
from collections import OrderedDict, deque
from typing import Any, Callable, Mapping

SHA256_PREFIX = "sha256:"
PBKDF2_PREFIX = "pbkdf2_sha256$"
PBKDF2_DEFAULT_ITERATIONS = 200_000
_SHA256_RE = re.compile(r"^sha256:[0-9a-fA-F]{64}$")
REALM = "ocpp"
WORKERS = 2  # PBKDF2 threads: unauthenticated clients must never take every core
PER_ADDRESS = 8  # attempts waiting for a hash, per client address
PER_ID = 32  # attempts waiting for a hash, per charge point id
FAILED_MEMORY = 4096  # recently refused (id, password) digests, refused again without hashing


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


class FairHasher:
    """Runs slow checks on :data:`WORKERS` threads, round-robin over client addresses.

    :meth:`run` returns the check's result, or None when the caller's address or id
    already has too many attempts waiting (refused without any work)."""

    def __init__(self, workers: int = WORKERS, per_address: int = PER_ADDRESS, per_id: int = PER_ID) -> None:
        self.workers = workers
        self.per_address = per_address
        self.per_id = per_id
        self._queues: OrderedDict[str, deque[tuple[str, Callable[[], bool], asyncio.Future[bool]]]] = OrderedDict()
        self._per_id: dict[str, int] = {}
        self._running = 0

    async def run(self, address: str, charger_id: str, check: Callable[[], bool]) -> bool | None:
        queue = self._queues.get(address)
        if (queue is not None and len(queue) >= self.per_address) or self._per_id.get(charger_id, 0) >= self.per_id:
            return None
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if queue is None:
            queue = self._queues[address] = deque()
        queue.append((charger_id, check, future))
        self._per_id[charger_id] = self._per_id.get(charger_id, 0) + 1
        self._pump()
        return await future

    def _pump(self) -> None:
        while self._running < self.workers and self._queues:
            address, queue = next(iter(self._queues.items()))
            charger_id, check, future = queue.popleft()
            if queue:
                self._queues.move_to_end(address)  # the next waiting attempt is another address's
            else:
                del self._queues[address]
            left = self._per_id[charger_id] - 1
            if left:
                self._per_id[charger_id] = left
            else:
                del self._per_id[charger_id]
            if future.cancelled():  # the client gave up (handshake timeout): no work for it
                continue
            self._running += 1
            task = asyncio.ensure_future(asyncio.to_thread(check))
            task.add_done_callback(functools.partial(self._done_with, future))

    def _done_with(self, future: asyncio.Future[bool], task: asyncio.Future[bool]) -> None:
        self._done(task, future)

    def _done(self, task: asyncio.Future[bool], future: asyncio.Future[bool]) -> None:
        self._running -= 1
        if not future.done():
            if task.cancelled():
                future.cancel()
            elif task.exception() is not None:
                future.set_exception(task.exception())  # type: ignore[arg-type]
            else:
                future.set_result(task.result())
        self._pump()


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
        self._failed: OrderedDict[bytes, None] = OrderedDict()
        self.hasher = FairHasher()
        stored = [p for p in (self.shared, *self.passwords.values()) if p is not None and is_slow(p)]
        # Equal work: with any PBKDF2 password configured, a refusal always costs one PBKDF2 this strong.
        strongest = max((_parse_pbkdf2(p)[0] for p in stored), default=0)
        self._dummy = hash_password(secrets.token_urlsafe(16), strongest) if strongest else None

    def is_known(self, charger_id: str) -> bool:
        return self.allow_unknown or charger_id in self.known_ids

    def _digest(self, charger_id: str, password: bytes) -> bytes:
        return hmac.new(self._pepper, charger_id.encode() + b"\0" + password, hashlib.sha256).digest()

    async def check(self, charger_id: str, authorization: str | None, address: str = "?") -> str | None:
        """None when the charger may connect; otherwise why not (for our log, never for the client)."""
        if not self.required:
            return None
        credentials = parse_basic(authorization)
        if credentials is None:
            return "no HTTP Basic credentials" if not authorization else "malformed Authorization header"
        user, password = credentials
        if not hmac.compare_digest(user.encode(), charger_id.encode()):
            return "the username is not the charge point id"
        digest = self._digest(charger_id, password)
        remembered = self._verified.get(charger_id)
        if remembered is not None and hmac.compare_digest(remembered, digest):
            return None
        if digest in self._failed:
            self._failed.move_to_end(digest)
            return "wrong password (tried recently)"
        stored = self.passwords.get(charger_id, self.shared)
        if stored is not None and is_slow(stored):
            ok = await self.hasher.run(address, charger_id, lambda: verify(password, stored))
        else:
            ok = stored is not None and verify(password, stored)
            if not ok and self._dummy is not None:  # as long as a PBKDF2 refusal would have taken
                dummy = self._dummy
                if await self.hasher.run(address, charger_id, lambda: verify(password, dummy) and False) is None:
                    ok = None
        if ok is None:
            return "too many login attempts waiting from this address or for this charge point; refused without checking"
        if ok:
            self._verified[charger_id] = digest
            return None
        self._failed[digest] = None
        if len(self._failed) > FAILED_MEMORY:
            self._failed.popitem(last=False)
        return "wrong password" if stored is not None else "no password is configured for this charge point"


class PagePassword:
    """The chargers page's ``web.password`` (standalone mode), checked by the same rules as a
    charger's: PBKDF2 on the :class:`FairHasher`'s threads, never on the event loop that serves
    the chargers, a bounded number of attempts waiting per client address, a wrong password seen
    recently refused without hashing it again. The browser sends the credentials with every
    request (the page, its script, its style sheet, the WebSocket): once verified they are
    remembered as a peppered fast digest, so opening the page costs one PBKDF2, not four."""

    def __init__(self, stored: str) -> None:
        self._stored = stored
        self._pepper = os.urandom(16)
        self._verified: bytes | None = None
        self._failed: OrderedDict[bytes, None] = OrderedDict()
        self.hasher = FairHasher()

    async def check(self, authorization: str | None, address: str = "?") -> bool:
        """Do these HTTP Basic credentials carry the password? (Any username.)"""
        credentials = parse_basic(authorization)
        if credentials is None:
            return False
        password = credentials[1]
        digest = hmac.new(self._pepper, password, hashlib.sha256).digest()
        if self._verified is not None and hmac.compare_digest(self._verified, digest):
            return True
        if digest in self._failed:
            self._failed.move_to_end(digest)
            return False
        stored = self._stored
        if is_slow(stored):
            ok = await self.hasher.run(address, "web", lambda: verify(password, stored))
            if ok is None:  # too many attempts waiting from this address: refused without work
                return False
        else:
            ok = verify(password, stored)
        if ok:
            self._verified = digest
            return True
        self._failed[digest] = None
        if len(self._failed) > FAILED_MEMORY:
            self._failed.popitem(last=False)
        return False


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
