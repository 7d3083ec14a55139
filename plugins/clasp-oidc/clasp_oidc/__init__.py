"""clasp-oidc: OpenID Connect single sign-on for clasp-gateway's admin API and dashboard.

Two ways in, one identity: a person signs in with the browser (authorization code flow
with PKCE, :mod:`.login`) and gets a signed session cookie (:mod:`.session`); a program
sends the issuer's ID or access token as ``Authorization: Bearer`` (:mod:`.tokens`,
verified against the issuer's keys, :mod:`.jwks`). Either becomes a
:class:`clasp_gateway.Principal` whose role and team come from the token's claims as
mapped in ``oidc:`` (:mod:`.roles`), never from anything else the client sends.
"""
