"""A real S3 endpoint for the tests: moto's standalone server on a free loopback port.

The server speaks the S3 HTTP API in a thread of the pytest process; boto3, streaming and Composer reach it
through the usual environment (``S3_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, region),
which subprocesses (``composer -n 2``) inherit. Nothing in the libraries is patched.

tests/conftest.py registers them: take ``s3_bucket`` (a fresh bucket
name per test) as a test argument. `start_moto_server` starts another server, e.g. one a test stops mid-run.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest

_ENV = {
    'AWS_ACCESS_KEY_ID': 'testing',
    'AWS_SECRET_ACCESS_KEY': 'testing',
    'AWS_SESSION_TOKEN': 'testing',
    'AWS_DEFAULT_REGION': 'us-east-1',
    'AWS_REGION': 'us-east-1',
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def start_moto_server(port: int | None = None):  # -> (moto ThreadedMotoServer, endpoint URL)
    """Start moto's S3 server on 127.0.0.1:``port`` (a free one by default); returns it and its endpoint.

    ``stop()`` closes the port: requests are then refused (EndpointConnectionError). moto keeps buckets and
    objects in memory shared by the whole process, so a server started again on the same port serves them.
    """
    server_mod = pytest.importorskip('moto.server', reason="needs moto[server] (pip install -e '.[dev]')")
    port = _free_port() if port is None else port
    server = server_mod.ThreadedMotoServer(ip_address='127.0.0.1', port=port, verbose=False)
    server.start()
    return server, f'http://127.0.0.1:{port}'


@pytest.fixture(scope='session')
def s3_server() -> Iterator[str]:
    """Start moto's S3 server on 127.0.0.1 for the session; yields its endpoint URL."""
    server, endpoint = start_moto_server()
    saved = {k: os.environ.get(k) for k in [*_ENV, 'S3_ENDPOINT_URL']}
    os.environ.update(_ENV, S3_ENDPOINT_URL=endpoint)
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    """A new, empty bucket on the test server."""
    import boto3

    name = f'tempme-{uuid.uuid4().hex[:12]}'
    boto3.client('s3', endpoint_url=s3_server).create_bucket(Bucket=name)
    return name
