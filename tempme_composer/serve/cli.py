"""``tempme-serve INDEX [--model DIR] [--host 127.0.0.1] [--port 8000] [--token TOKEN] [--max-batch 64]
[--max-wait-ms 5] [--cors ORIGIN]``: load the model and the index once and serve them over HTTP (uvicorn).

Once listening it prints one line, ``serving INDEX on http://HOST:PORT`` (the real port with ``--port 0``).
SIGTERM (or Ctrl-C) stops accepting connections, lets the requests in flight finish, and exits 0."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from tempme_composer.extras import reports_missing_extras
from tempme_composer.inference.terminal import printable
from tempme_composer.serve.security import check_bind

__all__ = ['main']


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='tempme-serve',
        description='serve a tempme-index folder: a search page in the browser and an HTTP API',
    )
    p.add_argument('index', help='index folder written by tempme-index')
    p.add_argument('--model', help='exported model folder (default: the one that built the index)')
    p.add_argument('--clip-checkpoint', help='base CLIP file, for a model exported without --full')
    p.add_argument(
        '--host', default='127.0.0.1', help='address to bind (default 127.0.0.1; any other needs --token)'
    )
    p.add_argument('--port', type=int, default=8000, help='port (0: a free one, printed once listening)')
    p.add_argument('--token', help='require "Authorization: Bearer TOKEN" on every route but /healthz')
    p.add_argument(
        '--max-batch', type=int, default=64, help='text queries encoded in one forward (1: no batching)'
    )
    p.add_argument(
        '--max-wait-ms',
        type=float,
        default=5.0,
        help='how long the first query of a batch waits for others (milliseconds)',
    )
    p.add_argument(
        '--cors',
        action='append',
        default=[],
        metavar='ORIGIN',
        help='let pages of ORIGIN call the API from a browser (may be repeated; none by default)',
    )
    p.add_argument(
        '--timeout',
        type=float,
        default=30.0,
        metavar='SECONDS',
        help='the longest a search may take, waiting included, before the client gets a 503 (default 30)',
    )
    p.add_argument(
        '--approximate',
        action='store_true',
        help='HNSW search (usearch), as tempme-search --approximate: for indexes of 100k+ rows',
    )
    return p


class _Server:
    """uvicorn's server, announcing the bound address once it listens."""

    @staticmethod
    def make(config, index: str):
        import uvicorn

        class Server(uvicorn.Server):
            async def startup(self, sockets=None) -> None:
                await super().startup(sockets)
                if self.started and not self.should_exit:
                    host, port = self.servers[0].sockets[0].getsockname()[:2]
                    shown = f'[{host}]' if ':' in host else host
                    print(f'serving {index} on http://{shown}:{port}', flush=True)

        return Server(config)


@reports_missing_extras('tempme-serve')
def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    refusal = check_bind(args.host, args.token)
    if refusal:
        print(f'error: {refusal}', file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        parser.error(f'--port {args.port}: expected 0 to 65535')
    if args.max_batch < 1:
        parser.error(f'--max-batch {args.max_batch}: expected 1 or more (1: no batching)')
    if not 0 < args.timeout <= 3600:
        parser.error(f'--timeout {args.timeout}: expected seconds, more than 0 and at most 3600')
    if not 0 <= args.max_wait_ms <= 1000:
        parser.error(f'--max-wait-ms {args.max_wait_ms}: expected 0 to 1000')
    logging.basicConfig(level=logging.WARNING, format='%(message)s')

    import uvicorn

    from tempme_composer.inference.exported import ExportError
    from tempme_composer.inference.search import VideoIndex, load_index_model
    from tempme_composer.inference.store import IndexFolderError
    from tempme_composer.serve.app import create_app
    from tempme_composer.serve.engine import Engine
    from tempme_composer.serve.generations import Generations
    from tempme_composer.serve.limits import Limits

    try:
        generations = Generations(args.index)
        model = load_index_model(generations.current(), args.model, args.clip_checkpoint)
        generations.model_hash = model.model_hash
        if args.approximate:  # the graph is built (or its cache read) now and for each new generation
            from tempme_composer.inference.ann import ann_index

            prepare = ann_index
        else:  # exact: each generation's embeddings widened to fp32 once, not on every query
            prepare = VideoIndex.hold_in_memory
        prepare(generations.current())
        generations.prepare = prepare
    except (
        IndexFolderError,
        ExportError,
        ValueError,
        ImportError,
    ) as e:  # ImportError: --approximate, no usearch
        print(f'error: {printable(e)}', file=sys.stderr)
        return 1
    except OSError as e:
        print(f'error: {printable(e.filename or "")}: {e.strerror}', file=sys.stderr)
        return 1
    engine = Engine(model, generations, max_batch=args.max_batch, approximate=args.approximate)
    app = create_app(
        engine,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        token=args.token,
        cors=args.cors or None,
        limits=Limits(timeout_s=args.timeout),
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level='warning',
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=60,
        lifespan='on',
    )
    server = _Server.make(config, args.index)
    # uvicorn re-raises the signal that stopped it once it has drained; with this handler in place that ends
    # here, and the drained server exits 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    return 0 if server.started else 1


if __name__ == '__main__':
    sys.exit(main())
