"""Bearer API keys for the serving app.

Keys come from a file (one a line; a mounted Kubernetes Secret) and/or an environment variable
(comma-separated), read where the ingress runs. Only their SHA-256 digests are kept, compared in
constant time; no key, digest or Authorization header is ever logged or returned.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path


class APIKeys:
    def __init__(self, keys: list[str]):
        keys = [k.strip() for k in keys if k.strip()]
        if not keys:
            raise ValueError("auth api_key: no API keys found (set api_keys_file or the api_keys_env variable, "
                             "or auth: none on a loopback address)")
        self._digests = [hashlib.sha256(k.encode("utf-8")).digest() for k in keys]

    @classmethod
    def load(cls, keys_file: str | None, env_var: str) -> "APIKeys":
        keys = os.environ.get(env_var, "").split(",")
        if keys_file:
            path = Path(keys_file)
            if not path.is_file():
                raise ValueError(f"api_keys_file: {keys_file} is not a file")
            keys += path.read_text(encoding="utf-8").splitlines()
        return cls(keys)

    def __len__(self) -> int:
        return len(self._digests)

    def allows(self, authorization: str | None) -> bool:
        """True when the Authorization header is 'Bearer <one of the keys>'."""
        if not authorization:
            return False
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        digest = hashlib.sha256(token.strip().encode("utf-8", "replace")).digest()
        found = False
        for known in self._digests:  # no early exit: the time does not say which key matched
            found |= hmac.compare_digest(digest, known)
        return found
