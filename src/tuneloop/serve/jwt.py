"""OAuth2 JWT bearer tokens: signature against the provider's JWKS, issuer, audience, expiry, scopes.

A valid token becomes an `ApiKey`-shaped principal (id `jwt:<sub>`), so scopes, model checks and
logs work the same as for API keys. Needs `joserfc` (in the `serve` extra), imported lazily: only a
gateway with `auth.jwt` set pays for it (~0.3 s).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import httpx

from tuneloop.errors import missing_extra
from tuneloop.serve.config import JWTConfig
from tuneloop.serve.keys import SCOPES, ApiKey

if TYPE_CHECKING:
    from joserfc.jwk import KeySet
    from joserfc.jwt import Token


class JWTVerifier:
    def __init__(self, config: JWTConfig):
        try:
            import joserfc  # noqa: F401
        except ImportError:
            raise missing_extra("joserfc", "serve") from None
        self.config = config
        self._keys: KeySet | None = None
        self._fetched = 0.0
        self._lock = threading.Lock()

    def verify(self, token: str) -> ApiKey | None:
        """The principal of a valid token, or None (bad signature, issuer, audience, expired)."""
        from joserfc import jwt
        from joserfc.errors import JoseError

        c = self.config
        try:
            decoded = self._decode(token)
            registry = jwt.JWTClaimsRegistry(
                iss={"essential": True, "value": c.issuer},
                aud={"essential": True, "value": c.audience},
                exp={"essential": True},
            )
            registry.validate(decoded.claims)
        except (JoseError, ValueError):
            return None
        return self._principal(decoded.claims)

    def _decode(self, token: str) -> Token:
        from joserfc import jwt
        from joserfc.errors import JoseError

        try:
            return jwt.decode(token, self._key_set(refresh=False), algorithms=self.config.algorithms)
        except JoseError:  # maybe the provider rotated its keys: refetch once, then give up
            return jwt.decode(token, self._key_set(refresh=True), algorithms=self.config.algorithms)

    def _key_set(self, refresh: bool) -> KeySet:
        from joserfc.jwk import KeySet

        with self._lock:
            stale = time.monotonic() - self._fetched > self.config.jwks_cache_s
            if self._keys is None or refresh or stale:
                r = httpx.get(self.config.jwks_url, timeout=10)
                r.raise_for_status()
                self._keys, self._fetched = KeySet.import_key_set(r.json()), time.monotonic()
            return self._keys

    def _principal(self, claims: dict[str, Any]) -> ApiKey:
        raw = claims.get(self.config.scope_claim) or claims.get("scp") or []
        granted = raw.split() if isinstance(raw, str) else list(raw)
        models = claims.get(self.config.models_claim) if self.config.models_claim else None
        return ApiKey(
            id=f"jwt:{claims.get('sub', '?')}",
            name=str(claims.get("sub", "")),
            scopes=[s for s in granted if s in SCOPES],
            models=list(models) if models else ["*"],
        )
