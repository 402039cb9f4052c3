"""The FastAPI application: the routes (search by text, image, video or row,
thumbnails, media, health and statistics, the page), their errors as ``{"error": ...}`` JSON, and the
middleware of `limits` and `security`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.middleware.cors import CORSMiddleware
from starlette.staticfiles import StaticFiles

from tempme_composer.inference.preprocess import QueryError
from tempme_composer.inference.search import QueryResult, VideoIndex
from tempme_composer.serve.batcher import MicroBatcher
from tempme_composer.serve.engine import Engine, TextRequest, hit_dicts, upload_label
from tempme_composer.serve.limits import (
    IMAGE_TYPES,
    UPLOAD_ROUTES,
    VIDEO_TYPES,
    ApiError,
    DeclaredBodySize,
    Limits,
    body_limit,
    check_text,
    check_upload_type,
    parse_k,
    parse_search_body,
)
from tempme_composer.serve.media import media_file, media_type, parse_row, thumbnail_file
from tempme_composer.serve.security import BearerToken

__all__ = ['create_app', 'STATIC', 'POLL_S']

log = logging.getLogger(__name__)

#: The page and its assets, shipped in the package.
STATIC = Path(__file__).parent / 'static'
#: How often ``index.json`` is checked for a new generation (a ``stat``; opening happens only on a change).
POLL_S = 0.25


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({'error': message}, status_code=status)


def _one(result: QueryResult, index: VideoIndex) -> dict[str, Any]:
    return {
        'query': result.query,
        'generation': index.manifest['generation'],
        'note': result.note,
        'results': hit_dicts(result, index),
    }


def create_app(
    engine: Engine,
    *,
    max_batch: int = 64,
    max_wait_ms: float = 5.0,
    limits: Limits | None = None,
    token: str | None = None,
    cors: list[str] | None = None,
    static: Path = STATIC,
) -> FastAPI:
    """The service around a loaded `Engine` (its model and index generations)."""
    limits = limits or Limits()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix='tempme-model')
    stats = {'started': time.monotonic(), 'queries': 0}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher = MicroBatcher(engine, executor, max_batch, max_wait_ms / 1000)
        batcher.start()
        app.state.batcher = batcher
        poller = asyncio.get_running_loop().create_task(_poll())
        try:
            yield
        finally:
            poller.cancel()
            await batcher.stop()
            executor.shutdown(wait=True)

    async def _poll() -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(POLL_S)
            try:
                if await loop.run_in_executor(None, engine.generations.refresh):
                    log.warning('serving generation %s', engine.generations.generation)
            except Exception as e:  # never stop watching: the next commit may be readable
                log.warning('checking for a new generation: %s', e)

    app = FastAPI(
        title='tempme-serve',
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    # ---- errors: always {"error": ...}, never a stack trace ------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return _error(e.status, e.message)

    @app.exception_handler(QueryError)
    async def _query_error(request: Request, e: QueryError) -> JSONResponse:
        return _error(400, str(e))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException) -> JSONResponse:
        detail = e.detail if isinstance(e.detail, str) else str(e.detail)
        if e.status_code == 404 and detail == 'Not Found':
            detail = (
                f'{request.url.path[:120]}: not found (see GET / for the page, GET /search?q=... for the API)'
            )
        elif e.status_code == 413:
            detail = f'request body too large: {request.url.path[:120]} takes at most {body_limit(limits, request.url.path)} bytes'
        elif e.status_code == 405:
            detail = f'{request.method} {request.url.path[:120]}: method not allowed'
        return JSONResponse({'error': detail}, status_code=e.status_code, headers=getattr(e, 'headers', None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        parts = [
            '.'.join(str(x) for x in err.get('loc', ())) + ': ' + str(err.get('msg')) for err in e.errors()
        ]
        return _error(400, '; '.join(parts)[:500] or 'malformed request')

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSONResponse:
        log.error('%s %s failed: %s: %s', request.method, request.url.path, type(e).__name__, e)
        return _error(500, f'internal error ({type(e).__name__}); the server log has the details')

    # ---- text search ---------------------------------------------------------------------------------------
    async def _texts(request: Request, texts: list[str], k: int) -> tuple[VideoIndex, list[QueryResult]]:
        try:
            index, results = await asyncio.wait_for(
                request.app.state.batcher.submit(TextRequest(texts, k)), limits.timeout_s
            )
        except asyncio.TimeoutError:
            raise ApiError(
                503,
                f'the search did not finish within {limits.timeout_s:g} s (--timeout): the server is '
                'overloaded; retry later',
            ) from None
        stats['queries'] += len(texts)
        return index, results

    @app.get('/search')
    async def get_search(request: Request) -> dict[str, Any]:
        params = request.query_params
        unknown = sorted(set(params) - {'q', 'k'})
        if unknown:
            raise ApiError(400, f'unknown parameter(s) {", ".join(map(repr, unknown))}: expected q and k')
        if 'q' not in params:
            raise ApiError(400, 'q is missing: expected /search?q=some+words&k=10')
        text = check_text(params['q'], limits, 'q')
        index, (result,) = await _texts(request, [text], parse_k(params.get('k'), limits))
        return _one(result, index)

    @app.post('/search')
    async def post_search(request: Request) -> dict[str, Any]:
        body = await request.body()
        if len(body) > limits.max_body_bytes:
            raise ApiError(
                413, f'request body is {len(body)} bytes: /search takes at most {limits.max_body_bytes} bytes'
            )
        texts, k = parse_search_body(body, limits)
        index, results = await _texts(request, texts, k)
        return {
            'generation': index.manifest['generation'],
            'queries': [{'query': r.query, 'note': r.note, 'results': hit_dicts(r, index)} for r in results],
        }

    # ---- query by example ----------------------------------------------------------------------------------
    async def _run_model(fn, *args):
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(executor, fn, *args), limits.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(
                503, f'the search did not finish within {limits.timeout_s:g} s; retry later'
            ) from None

    async def _upload(request: Request, kind: str) -> dict[str, Any]:
        async with request.form(max_files=1, max_fields=4) as form:
            upload = form.get('file')
            if not isinstance(upload, UploadFile):
                raise ApiError(
                    400, f'file: expected a multipart/form-data upload with the {kind} in the field "file"'
                )
            k = parse_k(form.get('k') if form.get('k') is not None else request.query_params.get('k'), limits)
            name = Path(upload.filename or kind).name
            check_upload_type(
                name,
                upload.content_type,
                IMAGE_TYPES if kind == 'image' else VIDEO_TYPES,
                f'an {kind}' if kind == 'image' else f'a {kind}',
            )
            data = await upload.read()
        if not data:
            raise ApiError(400, f'file {name!r}: the upload is empty; expected an {kind} file')
        if len(data) > limits.max_upload_bytes:
            raise ApiError(
                413, f'file {name!r} is {len(data)} bytes: expected at most {limits.max_upload_bytes}'
            )
        with tempfile.TemporaryDirectory(prefix='tempme-serve-') as folder:
            suffix = Path(name).suffix.lower() if Path(name).suffix.isascii() else ''
            path = Path(folder) / f'upload{suffix[:8]}'
            path.write_bytes(data)
            try:
                index, result = await _run_model(
                    engine.search_example, kind, path, upload_label(kind, name), k
                )
            except QueryError as e:
                message = str(e).replace(f'--{kind} {path}', f'file {name!r}').replace(str(path), name)
                raise ApiError(400, message) from None
        stats['queries'] += 1
        return _one(result, index)

    @app.post(UPLOAD_ROUTES[0])
    async def search_image(request: Request) -> dict[str, Any]:
        return await _upload(request, 'image')

    @app.post(UPLOAD_ROUTES[1])
    async def search_video(request: Request) -> dict[str, Any]:
        return await _upload(request, 'video')

    @app.get('/similar/{row}')
    async def similar(request: Request, row: str) -> dict[str, Any]:
        number = parse_row(row, 'similar')
        k = parse_k(request.query_params.get('k'), limits)
        index, result = await _run_model(engine.similar, number, k)
        stats['queries'] += 1
        return _one(result, index)

    # ---- files by row --------------------------------------------------------------------------------------
    @app.get('/thumbnail/{row}')
    async def thumbnail(row: str) -> FileResponse:
        path = thumbnail_file(engine.generations.current(), parse_row(row, 'thumbnail'))
        return FileResponse(path, media_type='image/jpeg')

    @app.get('/media/{row}')
    async def media(row: str) -> FileResponse:
        path = media_file(engine.generations.current(), parse_row(row, 'media'))
        return FileResponse(path, media_type=media_type(path))

    # ---- health, statistics, the page ----------------------------------------------------------------------
    @app.get('/healthz')
    async def healthz() -> dict[str, str]:
        return {'status': 'ok'}

    @app.get('/stats')
    async def stats_route() -> dict[str, Any]:
        index = engine.generations.current()
        batches = engine.forwards
        return {
            'rows': len(index.rows),
            'videos': index.num_videos,
            'model_hash': index.model_hash,
            'generation': index.manifest['generation'],
            'uptime_s': round(time.monotonic() - stats['started'], 3),
            'queries_served': stats['queries'],
            'batches': batches,
            'mean_batch': round(engine.text_queries / batches, 3) if batches else 0.0,
        }

    @app.get('/')
    async def page() -> FileResponse:
        path = static / 'index.html'
        if not path.is_file():
            raise ApiError(
                404,
                'the page is not installed (tempme_composer/serve/static/index.html is missing); '
                'the JSON API works without it',
            )
        return FileResponse(path, media_type='text/html; charset=utf-8')

    app.mount('/static', StaticFiles(directory=static, check_dir=False), name='static')

    # outermost last: CORS (answers preflights), then the token, then the declared body size
    # Starlette counts every body as it streams in (up to the upload limit; a JSON body is held to its own
    # limit once read); a declared Content-Length over its route's limit is refused before that
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=limits.max_upload_bytes)
    app.add_middleware(DeclaredBodySize, limits=limits)
    if token:
        app.add_middleware(BearerToken, token=token)
    if cors:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors),
            allow_methods=['GET', 'POST'],
            allow_headers=['Authorization', 'Content-Type'],
        )
    return app
