"""``tempme-search INDEX "a man is cooking" [--top-k 10] [--json] [--html OUT.html]``, ``--queries FILE``,
``--eval`` (metrics of an annotated index) and ``--analysis RANKS.jsonl --html OUT.html``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tempme_composer.inference.exported import ExportError
from tempme_composer.inference.preprocess import QueryError
from tempme_composer.inference.store import IndexError_

__all__ = ['main', 'read_queries']


def read_queries(path: str | Path) -> list[str]:
    """One query per line. Blank lines are an error (naming the line): a silently dropped line would shift
    every result after it against the user's list."""
    path = Path(path)
    if not path.is_file():
        raise QueryError(f'--queries {path}: no such file')
    lines = path.read_text(encoding='utf-8-sig').splitlines()
    blank = [n for n, line in enumerate(lines, 1) if not line.strip()]
    if blank:
        raise QueryError(f'--queries {path}: line(s) {", ".join(map(str, blank[:10]))} are blank; '
                         'put one non-empty query on each line')
    if not lines:
        raise QueryError(f'--queries {path} is empty')
    return lines


def _print_results(results, index) -> None:
    from tempme_composer.inference.search import _full_path

    for r in results:
        print(f'query: "{r.query}"')
        if r.note:
            print(f'  note: {r.note}')
        for h in r.hits:
            mark = '  <- ground truth' if h.row in r.ground_truth else ''
            print(f'  {h.rank:>3}. {h.score:.4f}  {_full_path(index, h.path)}  ({h.duration:.1f} s){mark}')
        if r.ground_truth and not any(h.row in r.ground_truth for h in r.hits):
            print(f'  ground truth {index.rows[r.ground_truth[0]]["path"]} ranked {r.ground_truth_rank}')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='tempme-search', description='search a tempme-index folder by text')
    parser.add_argument('index', nargs='?', help='index folder written by tempme-index')
    parser.add_argument('query', nargs='*', help='one or more text queries')
    parser.add_argument('--queries', help='a file with one query per line')
    parser.add_argument('--top-k', type=int, default=10)
    parser.add_argument('--json', action='store_true', help='print JSON instead of text')
    parser.add_argument('--html', help='write a static results page (open it from file://)')
    parser.add_argument('--approximate', action='store_true', help='HNSW search (usearch, cached graph) instead of exact: for indexes of 100k+ videos')
    parser.add_argument('--expansion-search', type=int, default=None, help='with --approximate: HNSW candidate list '
                        '(default 512, recall@10 >= 0.99 measured up to 1M videos; larger is slower and closer to exact)')
    parser.add_argument('--eval', action='store_true', help='metrics of an index built from an annotated MDS split')
    parser.add_argument('--analysis', help='a ranks file of evaluation.save_ranks: with --html, the worst-ranked '
                        'captions page (thumbnails from INDEX when given)')
    parser.add_argument('--worst', type=int, default=20, help='captions on the --analysis page')
    parser.add_argument('--model', help='exported model folder (default: the one that built the index)')
    parser.add_argument('--clip-checkpoint', help='base CLIP file, for a model exported without --full')
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args(argv)
    try:
        return _run(args, parser)
    except (QueryError, IndexError_, ExportError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from tempme_composer.inference.search import (
        VideoIndex,
        evaluate_index,
        load_index_model,
        result_dicts,
        search,
    )

    if args.analysis:
        from tempme_composer.inference.html_page import analysis_page, read_ranks

        if not args.html:
            parser.error('--analysis writes a page: add --html OUT.html')
        index = VideoIndex(args.index) if args.index else None
        Path(args.html).write_text(analysis_page(read_ranks(args.analysis), index, args.worst, source=args.analysis),
                                   encoding='utf-8')
        print(f'wrote {args.html}')
        return 0
    if not args.index:
        parser.error('INDEX is required')
    if args.top_k < 1:
        raise QueryError(f'--top-k {args.top_k}: expected a positive number')
    if args.expansion_search is not None and (not args.approximate or args.expansion_search < args.top_k):
        raise QueryError(f'--expansion-search {args.expansion_search}: expected a number >= --top-k '
                         f'({args.top_k}), together with --approximate')
    index = VideoIndex(args.index)
    model = load_index_model(index, args.model, args.clip_checkpoint, args.device)
    if args.eval:
        from tempme_composer.metrics.summary import format_log_lines

        results = evaluate_index(index, model)
        print(f'eval {index.manifest["source"]["root"]}: {int(results["num_texts"])} captions, '
              f'{int(results["num_videos"])} videos ({index.manifest["dtype"]} index)')
        print('\n'.join(format_log_lines(results)))
        if args.json:
            print(json.dumps(results))
        if not (args.query or args.queries):
            return 0
    queries = list(args.query) + (read_queries(args.queries) if args.queries else [])
    if not queries:
        raise QueryError('no query given: pass "some words" after INDEX, or --queries FILE')
    results = search(index, model, queries, args.top_k, approximate=args.approximate,
                     expansion_search=args.expansion_search)
    for r in results:
        if r.note:
            print(f'note: {r.note}', file=sys.stderr)
    if args.json:
        print(json.dumps(result_dicts(results, index), indent=2))
    else:
        _print_results(results, index)
    if args.html:
        from tempme_composer.inference.html_page import results_page

        Path(args.html).write_text(results_page(results, index), encoding='utf-8')
        print(f'wrote {args.html}', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
