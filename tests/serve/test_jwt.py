"""OAuth2 JWT bearer tokens next to API keys: signature (JWKS), issuer, audience, expiry, scopes."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tuneloop.serve import ServeConfig
from tuneloop.serve.fake import FakeClient

joserfc = pytest.importorskip("joserfc")
from joserfc import jwt  # noqa: E402
from joserfc.jwk import KeySet, RSAKey  # noqa: E402


@pytest.fixture(scope="module")
def idp():
    """A minimal identity provider: one RSA key, its JWKS over HTTP."""
    key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    body = json.dumps(KeySet([key]).as_dict(private=False)).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield key, f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    server.shutdown()


def _token(key, **claims) -> str:
    base = {
        "iss": "https://idp.example",
        "aud": "tuneloop",
        "sub": "alice",
        "scope": "inference",
        "exp": int(time.time()) + 60,
    }
    return jwt.encode({"alg": "RS256", "kid": "k1"}, {**base, **claims}, key)


def test_jwt_bearer_tokens(serve, idp):
    key, jwks_url = idp
    other = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    cfg = ServeConfig.model_validate(
        {
            "models": [{"name": "fake", "model": "unused"}],
            "auth": {"jwt": {"issuer": "https://idp.example", "audience": "tuneloop", "jwks_url": jwks_url}},
        }
    )
    body = {"model": "fake", "prompt": "hello"}
    with serve(cfg, {"fake": FakeClient()}) as s:

        def post(token: str) -> httpx.Response:
            return httpx.post(
                s.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {token}"}
            )

        assert post(_token(key)).status_code == 200
        assert post(_token(key, aud="someone-else")).status_code == 401
        assert post(_token(key, exp=int(time.time()) - 10)).status_code == 401
        assert post(_token(other)).status_code == 401  # signed by a key the provider does not publish
        assert post(_token(key, scope="feedback")).status_code == 403
