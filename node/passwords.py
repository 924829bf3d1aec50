"""Password hashes for the web page's basic auth: scrypt from the standard library.

The config file holds ``scrypt$n$r$p$salt$hash`` (salt and hash in base64), never the password,
so a copy of config.toml in a ticket or a backup does not open the node's buttons to anyone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

#: scrypt cost: about 50 ms and 16 MiB per check on a 2020s CPU core (RFC 7914's interactive
#: range); basic auth checks on every request, so the verdict is cached per password in node.operate.web.
_N, _R, _P = 2**14, 8, 1
_PREFIX = "scrypt"


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=2**26, dklen=32)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, _N, _R, _P)
    return "$".join([_PREFIX, str(_N), str(_R), str(_P), base64.b64encode(salt).decode(),
                     base64.b64encode(digest).decode()])


def check_password_hash(stored: str) -> str:
    """What is wrong with a configured hash ("" when it is usable), for the config error."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != _PREFIX:
        return "not a hash radnode writes (scrypt$n$r$p$salt$hash): run radnode hash-password"
    try:
        n, r, p = (int(v) for v in parts[1:4])
        base64.b64decode(parts[4], validate=True)
        base64.b64decode(parts[5], validate=True)
    except ValueError:
        return "damaged (numbers or base64 do not parse): run radnode hash-password again"
    if n < 2**10 or n & (n - 1) or r < 1 or p < 1 or 128 * n * r > 2**26:
        return f"scrypt parameters n={n} r={r} p={p} are out of range: run radnode hash-password again"
    return ""


def verify_password(password: str, stored: str) -> bool:
    _, n, r, p, salt, digest = stored.split("$")
    actual = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    return hmac.compare_digest(actual, base64.b64decode(digest))
