"""Who may use the service: loopback by default, any other address only with a bearer token (compared in
constant time), and no cross-origin access unless ``--cors ORIGIN`` names it."""

from __future__ import annotations

import ipaddress
import secrets

from starlette.responses import JSONResponse

__all__ = ['is_loopback', 'check_bind', 'BearerToken', 'OPEN_PATHS', 'OPEN_PREFIXES']

#: Routes answered without a token: a load balancer's health check carries none, and the page and its assets
#: (files shipped in the package, holding nothing of the index) must load for the page to ask for the token.
OPEN_PATHS = frozenset({'/healthz', '/'})
OPEN_PREFIXES = ('/static/',)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == 'localhost':
        return True
    try:
        return ipaddress.ip_address(host.strip('[]')).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def check_bind(host: str, token: str | None) -> str | None:
    """The refusal (one line) for binding ``host`` without a token, or None when allowed."""
    if is_loopback(host) or token:
        return None
    return (
        f'--host {host} is reachable from other machines: add --token TOKEN (clients then send '
        '"Authorization: Bearer TOKEN"), or bind 127.0.0.1'
    )


class BearerToken:
    """ASGI middleware: every request but `OPEN_PATHS` and `OPEN_PREFIXES` needs ``Authorization: Bearer TOKEN``
    (else 401 JSON)."""

    def __init__(self, app, token: str) -> None:
        self.app, self.expected = app, f'Bearer {token}'.encode()

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get('path', '')
        if scope['type'] != 'http' or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        given = dict(scope.get('headers') or []).get(b'authorization', b'')
        if secrets.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        why = 'wrong token' if given else 'no Authorization header'
        error = f'{why}: expected "Authorization: Bearer TOKEN" (the --token the server was started with)'
        response = JSONResponse({'error': error}, status_code=401, headers={'www-authenticate': 'Bearer'})
        await response(scope, receive, send)
