"""What one request may ask for, each refused with a 4xx JSON ``{"error": ...}`` naming the field and what was
expected: query length, ``k``, queries per request, upload size and type, request body size, and how long a
search may take before the client gets an answer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse

__all__ = [
    'ApiError',
    'DeclaredBodySize',
    'body_limit',
    'UPLOAD_ROUTES',
    'Limits',
    'parse_k',
    'check_text',
    'parse_search_body',
    'IMAGE_TYPES',
    'VIDEO_TYPES',
    'check_upload_type',
]

#: Uploads accepted by ``POST /search/image``: content types and file name extensions.
IMAGE_TYPES = (
    {'image/png', 'image/jpeg', 'image/webp', 'image/gif', 'image/bmp', 'image/tiff'},
    {'.png', '.jpg', '.jpeg', '.webp', '.gif', '.bmp', '.tif', '.tiff'},
)
#: Uploads accepted by ``POST /search/video``.
VIDEO_TYPES = (
    {
        'video/mp4',
        'video/webm',
        'video/quicktime',
        'video/x-matroska',
        'video/x-msvideo',
        'video/mpeg',
        'video/ogg',
    },
    {'.mp4', '.m4v', '.webm', '.mov', '.mkv', '.avi', '.mpg', '.mpeg', '.ogv'},
)

#: Routes that take an upload (and `Limits.max_upload_bytes`).
UPLOAD_ROUTES = ('/search/image', '/search/video')


class ApiError(Exception):
    """A request the service refuses: the HTTP status and the message of its JSON body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Limits:
    max_query_chars: int = 1000  # a CLIP text tower reads 77 tokens; far longer text is a mistake or abuse
    max_k: int = 1000
    default_k: int = 10
    max_queries: int = 64  # per POST /search
    max_body_bytes: int = 1 << 20  # JSON requests (FastAPI's ``max_body_size``)
    max_upload_bytes: int = 64 << 20  # image and video uploads (the upload routes' ``max_body_size``)
    timeout_s: float = 30.0  # a search (queueing included) or an upload's encoding


def parse_k(value: Any, limits: Limits, field: str = 'k') -> int:
    """``k`` from a query string (text) or a JSON body (an integer); absent: the default."""
    if value is None:
        return limits.default_k
    if isinstance(value, str):
        text = value.strip()
        if not text.isdigit():
            raise ApiError(400, f'{field}={value!r:.40}: expected a whole number from 1 to {limits.max_k}')
        value = int(text)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ApiError(
            400, f'{field} is {json.dumps(value)[:40]}: expected a whole number from 1 to {limits.max_k}'
        )
    if not 1 <= value <= limits.max_k:
        raise ApiError(400, f'{field}={value}: expected a whole number from 1 to {limits.max_k}')
    return value


def check_text(value: Any, limits: Limits, field: str) -> str:
    if not isinstance(value, str):
        raise ApiError(400, f'{field} is {json.dumps(value)[:40]}: expected the text to search for')
    if not value.strip():
        raise ApiError(400, f'{field} is empty: expected the words to search for')
    if len(value) > limits.max_query_chars:
        raise ApiError(
            400, f'{field} is {len(value)} characters long: expected at most {limits.max_query_chars}'
        )
    return value


def parse_search_body(body: bytes, limits: Limits) -> tuple[list[str], int]:
    """``{"queries": [TEXT, ...], "k": K}`` → (queries, k)."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(
            400, f'body: not valid JSON ({e}); expected {{"queries": ["some words", ...], "k": 10}}'
        ) from e
    if not isinstance(data, dict):
        raise ApiError(
            400, f'body is a JSON {type(data).__name__}: expected an object {{"queries": [...], "k": 10}}'
        )
    unknown = sorted(set(data) - {'queries', 'k'})
    if unknown:
        raise ApiError(
            400, f'body: unknown field(s) {", ".join(map(repr, unknown))}; expected "queries" and "k"'
        )
    queries = data.get('queries')
    if not isinstance(queries, list) or not queries:
        raise ApiError(400, f'queries is {json.dumps(queries)[:40]}: expected a non-empty list of texts')
    if len(queries) > limits.max_queries:
        raise ApiError(
            400, f'queries holds {len(queries)} texts: expected at most {limits.max_queries} per request'
        )
    texts = [check_text(q, limits, f'queries[{i}]') for i, q in enumerate(queries)]
    return texts, parse_k(data.get('k'), limits)


def check_upload_type(
    filename: str, content_type: str | None, kinds: tuple[set[str], set[str]], what: str
) -> None:
    """An upload must name a known image (or video) type by its content type or its extension."""
    types, extensions = kinds
    ext = ('.' + filename.rsplit('.', 1)[-1].lower()) if '.' in filename else ''
    ctype = (content_type or '').split(';')[0].strip().lower()
    if ctype not in types and ext not in extensions:
        raise ApiError(
            415,
            f'file {filename!r:.80} ({ctype or "no content type"}): expected {what} '
            f'({", ".join(sorted(extensions))})',
        )


def body_limit(limits: Limits, path: str) -> int:
    """The body size a route accepts: uploads `Limits.max_upload_bytes`, the rest `Limits.max_body_bytes`."""
    return limits.max_upload_bytes if path in UPLOAD_ROUTES else limits.max_body_bytes


class DeclaredBodySize:
    """ASGI middleware: a request whose Content-Length is over its route's limit gets a 413 JSON error before
    anything is read. FastAPI's ``max_body_size`` (Starlette's ``RequestBodyLimitMiddleware``) still counts the
    bytes of every body as it streams in; this only answers the declared case in the service's error shape (that
    middleware answers it in plain text)."""

    def __init__(self, app, limits: Limits) -> None:
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send) -> None:
        if scope['type'] == 'http':
            declared = dict(scope.get('headers') or []).get(b'content-length', b'')
            limit = body_limit(self.limits, scope['path'])
            if declared.isdigit() and int(declared) > limit:
                error = f'request body is {int(declared)} bytes: {scope["path"][:120]} takes at most {limit} bytes'
                response = JSONResponse({'error': error}, status_code=413, headers={'connection': 'close'})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
