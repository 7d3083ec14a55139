"""Verifying a JWT from the issuer: signature, algorithm, ``iss``, ``aud``, ``exp``,
``nbf`` (and a login's ``nonce``).

What is refused, and why each matters:

- an algorithm outside ``oidc.algorithms`` (public-key ones only): ``alg: none``, and
  ``HS256`` signed with the issuer's *public* key as the HMAC secret (the classic
  confusion: anyone holding the public key could mint tokens);
- a key the issuer does not publish (unknown ``kid``, after one refetch for rotation),
  or a published key whose type or declared ``alg`` does not fit the token's;
- a token for another client (``aud``), from another issuer (``iss``), expired
  (``exp``), not yet valid (``nbf``), without ``exp``, or oversized.

Refusals are :class:`clasp_gateway.AuthenticationError` (401) saying which check
failed, never showing the token.
"""

from __future__ import annotations

from typing import Any

import jwt

from clasp_gateway import AuthenticationError, GatewayError

from .jwks import Issuer, IssuerUnavailable
from .settings import OidcSettings

FAMILIES: dict[str, tuple[str, ...]] = {"RSA": ("RS", "PS"), "EC": ("ES",), "OKP": ("EdDSA",)}
"""Which algorithms each key type can verify."""


def looks_like_jwt(value: str | None) -> bool:
    """A compact JWS (``header.payload.signature`` with a JSON header): cheap, no decoding."""
    return bool(value) and value.startswith("eyJ") and value.count(".") == 2  # type: ignore[union-attr]


class TokenVerifier:
    """Verifies tokens of one issuer against its published keys."""

    def __init__(self, settings: OidcSettings, issuer: Issuer) -> None:
        self.settings = settings
        self.issuer = issuer

    async def verify(self, token: str, *, audiences: list[str], nonce: str | None = None) -> dict[str, Any]:
        """The token's claims when every check passes; else a 401 naming the failed check."""
        settings = self.settings
        if len(token) > settings.max_token_bytes:
            raise AuthenticationError(f"bearer token larger than {settings.max_token_bytes} bytes")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthenticationError("malformed bearer token (not a signed JWT)") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in settings.algorithms:
            raise AuthenticationError(
                f"token signed with alg {str(alg)[:16]!r}; this gateway accepts {', '.join(settings.algorithms)}")
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or len(kid) > 256):
            raise AuthenticationError("token header has an invalid kid")
        try:
            key = await self.issuer.key_for(kid)
        except IssuerUnavailable as exc:
            raise GatewayError(f"the identity provider's keys are unavailable ({exc}); retry shortly", status=503,
                               error_type="api_error", headers={"retry-after": "5"}) from None
        if key is None:
            raise AuthenticationError("token signed by a key the issuer does not publish"
                                      + (f" (kid {kid[:64]!r})" if kid else ""))
        if key.alg is not None and key.alg != alg:
            raise AuthenticationError(f"token alg {alg!r} does not match its key's alg {key.alg!r}")
        if not alg.startswith(FAMILIES.get(key.kty, ("-",))):
            raise AuthenticationError(f"token alg {alg!r} does not fit its key (a {key.kty} key)")
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key.key, algorithms=[alg], audience=audiences, leeway=settings.leeway,
                options={"require": ["exp", "iss", "aud", "iat"], "verify_iss": False})
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthenticationError("token not valid yet (nbf / iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise AuthenticationError("token is for another audience (aud), not this gateway") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthenticationError(f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise AuthenticationError("token signature does not verify") from None
        except (jwt.PyJWTError, TypeError, ValueError) as exc:
            # a key of the wrong type for the alg lands here too
            raise AuthenticationError(f"token refused: {type(exc).__name__}") from None
        if claims.get("iss") not in (self.issuer.issuer, self.issuer.issuer + "/"):
            raise AuthenticationError("token from another issuer (iss)")
        if nonce is not None and claims.get("nonce") != nonce:
            raise AuthenticationError("ID token nonce does not match this sign-in")
        return claims
