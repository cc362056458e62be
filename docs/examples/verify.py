#!/usr/bin/env python3
"""Verify idgate's identity JWT (the X-Idgate-Assertion header) with PyJWT.

    pip install "pyjwt[crypto]"
    IDGATE_JWKS_URL=http://127.0.0.1:9090/.well-known/jwks.json python3 verify.py <token>

Prints the verified claims as JSON; exits 1 if the token is not valid.
"""
import json
import os
import sys

import jwt

JWKS_URL = os.environ.get("IDGATE_JWKS_URL", "http://127.0.0.1:9090/.well-known/jwks.json")
AUDIENCE = os.environ.get("IDGATE_AUDIENCE", "legacy-app")

# One client per process: it caches the keys and refetches on an unknown kid (rotation).
_jwks = jwt.PyJWKClient(JWKS_URL, cache_keys=True)


def verify(token: str) -> dict:
    """Returns the claims of a valid idgate token; raises jwt.PyJWTError otherwise."""
    signing_key = _jwks.get_signing_key_from_jwt(token)
    return jwt.decode(
        token,
        signing_key.key,
        # Only the algorithms idgate signs with: never "none", never HMAC.
        algorithms=["EdDSA", "ES256", "RS256"],
        audience=AUDIENCE,
        issuer="idgate",
        leeway=60,
        options={"require": ["exp", "iat", "sub", "iss", "aud"]},
    )


# In a web app, read the header idgate set on the request, e.g. with Flask:
#     claims = verify(request.headers["X-Idgate-Assertion"])
#     user_id, group_id = claims["sub"], claims["group_id"]

if __name__ == "__main__":
    token = sys.argv[1] if len(sys.argv) > 1 else sys.stdin.read().strip()
    try:
        claims = verify(token)
    except jwt.PyJWTError as e:
        print(f"invalid token: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(claims, sort_keys=True))
