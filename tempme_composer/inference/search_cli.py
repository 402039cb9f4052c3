"""``tempme-search INDEX "a man is cooking" [--top-k 10] [--json] [--html OUT.html] [--snippets DIR]``,
``--queries FILE``, ``--image FILE`` / ``--video FILE`` / ``--like PATH[@SECONDS]`` (query by example),
``--eval`` (metrics of an annotated index) and ``--analysis RANKS.jsonl --html OUT.html``.

Results are moments: ``--nms-iou`` and ``--per-video`` decide how many of one video's moments a query lists
(see `tempme_composer.inference.search.suppress`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tempme_composer.extras import reports_missing_extras
from tempme_composer.inference.exported import ExportError
from tempme_composer.inference.preprocess import QueryError
from tempme_composer.inference.store import IndexFolderError
from tempme_composer.inference.terminal import printable

if TYPE_CHECKING:
    from tempme_composer.inference.exported import ExportedModel
    from tempme_composer.inference.search import Hit, QueryResult, VideoIndex

__all__ = ['main', 'read_queries', 'write_page', 'check_page_target']


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


def _span(hit: Hit) -> str:
    """``'  0:12-0:24'`` for a moment, '' for a hit that is its whole video."""
    from tempme_composer.inference.search import clock

    whole = hit.start <= 0.0 and hit.end >= hit.duration - 0.05
    return '' if whole else f'  {clock(hit.start)}-{clock(hit.end)}'


def _print_results(results, index) -> None:
    from tempme_composer.inference.search import display_path

    for r in results:
        print(f'query: "{printable(r.query)}"')
        if r.note:
            print(f'  note: {printable(r.note)}')
        for h in r.hits:
            mark = '  <- ground truth' if h.row in r.ground_truth else ''
            print(f'  {h.rank:>3}. {h.score:.4f}  {printable(display_path(index, h.path))}{_span(h)}  '
                  f'({h.duration:.1f} s){mark}')
        if r.ground_truth and not any(h.row in r.ground_truth for h in r.hits):
            print(f'  ground truth {printable(index.rows[r.ground_truth[0]]["path"])} ranked {r.ground_truth_rank}')


def check_page_target(path: str | Path, force: bool) -> None:
    """``--html`` may name a new file or a page written here; anything else only with ``force``.

    Raises:
        QueryError: ``path`` is a folder, or an existing file that is not one of our pages.
    """
    from tempme_composer.inference.html_page import is_our_page

    path = Path(path)
    if path.is_dir():
        raise QueryError(f'--html {path} is a folder, expected the .html file to write')
    if path.exists() and not force and not is_our_page(path):
        raise QueryError(f'--html {path} exists and is not a page tempme-search wrote: choose a new file name, or '
                         'add --force to replace it')


def write_page(path: str | Path, page: str, force: bool) -> None:
    """Write ``page`` to ``path`` whole (a temporary file renamed), after `check_page_target`."""
    check_page_target(path, force)
    path = Path(path)
    tmp = path.with_name(f'.tmp-{os.getpid()}-{path.name}')
    tmp.write_text(page, encoding='utf-8')
    os.replace(tmp, path)


@reports_missing_extras('tempme-search')
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='tempme-search', description='search a tempme-index folder by text, '
                                     'by an image or video, or by an indexed moment')
    parser.add_argument('index', nargs='?', help='index folder written by tempme-index')
    parser.add_argument('query', nargs='*', help='one or more text queries')
    parser.add_argument('--queries', help='a file with one query per line')
    parser.add_argument('--image', action='append', default=[], metavar='FILE',
                        help='search by an image (read as a one-frame video); may be repeated')
    parser.add_argument('--video', action='append', default=[], metavar='FILE',
                        help='search by a video clip; may be repeated')
    parser.add_argument('--like', action='append', default=[], metavar='PATH[@SECONDS]',
                        help='"more like this": an indexed moment as the query (PATH as results show it or relative '
                        'to the indexed folder; @SECONDS picks the moment containing that time, else its first)')
    parser.add_argument('--top-k', type=int, default=10)
    parser.add_argument('--nms-iou', type=float, default=0.5, help='drop a moment whose temporal IoU with a '
                        'better result of the same video exceeds this (default 0.5; 1 keeps overlapping moments)')
    parser.add_argument('--per-video', default='auto', help='at most N moments of one video (0: no limit); default '
                        'auto: one per started minute of the video, so a clip gives one result and a long video several')
    parser.add_argument('--snippets', metavar='DIR', help='write each result\'s moment as its own video file into DIR '
                        '(<rank>-<name>-<start>-<end>.<ext>; existing files are never replaced)')
    parser.add_argument('--json', action='store_true', help='print JSON instead of text')
    parser.add_argument('--html', help='write a static results page (open it from file://)')
    parser.add_argument('--approximate', action='store_true', help='HNSW search (usearch, cached graph) instead of exact: for indexes of 100k+ videos')
    parser.add_argument('--expansion-search', type=int, default=None, help='with --approximate: HNSW candidate list '
                        '(default 512, recall@10 >= 0.99 measured up to 1M videos; larger is slower and closer to exact)')
    parser.add_argument('--eval', action='store_true', help='metrics of an index built from an annotated MDS split')
    parser.add_argument('--eval-moments', action='store_true', help='video-corpus moment retrieval (R@1/5/10 at '
                        'tIoU 0.3/0.5/0.7, and video R@K) of an index built with --window from a split whose '
                        'captions carry time ranges (or with --annotations)')
    parser.add_argument('--annotations', metavar='FILE', help='with --eval-moments on a folder index: captions with '
                        'time ranges, ActivityNet Captions\' JSON layout ({video_id: {timestamps, sentences}}; ids are '
                        'the indexed files\' names without extension)')
    parser.add_argument('--analysis', help='a ranks file of evaluation.save_ranks: with --html, the worst-ranked '
                        'captions page (thumbnails from INDEX when given)')
    parser.add_argument('--worst', type=int, default=20, help='captions on the --analysis page')
    parser.add_argument('--model', help='exported model folder (default: the one that built the index)')
    parser.add_argument('--clip-checkpoint', help='base CLIP file, for a model exported without --full')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--force', action='store_true', help='let --html replace a file that is not a page '
                        'tempme-search wrote')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    try:
        return _run(args, parser)
    except (QueryError, IndexFolderError, ExportError, ValueError) as e:
        print(f'error: {printable(e)}', file=sys.stderr)
        return 1
    except OSError as e:  # a file we cannot read or write
        print(f'error: {printable(e.filename or "")}: {e.strerror}', file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from tempme_composer.inference.search import (
        VideoIndex,
        check_moment_options,
        evaluate_index,
        load_index_model,
        result_dicts,
    )

    if args.analysis:
        from tempme_composer.inference.html_page import analysis_page, read_ranks

        if not args.html:
            parser.error('--analysis writes a page: add --html OUT.html')
        check_page_target(args.html, args.force)
        index = VideoIndex(args.index) if args.index else None
        write_page(args.html, analysis_page(read_ranks(args.analysis), index, args.worst, source=args.analysis),
                   args.force)
        print(f'wrote {printable(args.html)}')
        return 0
    if not args.index:
        parser.error('INDEX is required')
    if args.html:
        check_page_target(args.html, args.force)  # refused before the model loads and the search runs
    if args.snippets:
        from tempme_composer.inference.snippets import check_folder

        check_folder(args.snippets)  # refused before the search runs; created when there is something to write
    if args.top_k < 1:
        raise QueryError(f'--top-k {args.top_k}: expected a positive number')
    args.per_video = _per_video(args.per_video)
    check_moment_options(args.nms_iou, args.per_video)
    if args.expansion_search is not None and (not args.approximate or args.expansion_search < args.top_k):
        raise QueryError(f'--expansion-search {args.expansion_search}: expected a number >= --top-k '
                         f'({args.top_k}), together with --approximate')
    texts = list(args.query) + (read_queries(args.queries) if args.queries else [])
    if args.annotations and not args.eval_moments:
        raise QueryError('--annotations goes with --eval-moments (the captions and time ranges to evaluate)')
    if not (texts or args.image or args.video or args.like or args.eval or args.eval_moments):
        raise QueryError('no query given: pass "some words" after INDEX, --queries FILE, --image FILE, --video FILE '
                         'or --like PATH[@SECONDS]')
    index = VideoIndex(args.index)
    if args.snippets:
        from tempme_composer.inference.snippets import check_source

        check_source(index)
    needs_model = bool(texts or args.image or args.video or args.eval or args.eval_moments)  # --like: stored only
    model = load_index_model(index, args.model, args.clip_checkpoint, args.device) if needs_model else None
    if args.eval:
        from tempme_composer.metrics.summary import format_log_lines

        results = evaluate_index(index, model)
        print(f'eval {index.manifest["source"]["root"]}: {int(results["num_texts"])} captions, '
              f'{int(results["num_videos"])} videos ({index.manifest["dtype"]} index)')
        print('\n'.join(format_log_lines(results)))
        if args.json:
            print(json.dumps(results))
    if args.eval_moments:
        from tempme_composer.inference.moment_eval import evaluate_moments, format_moment_lines

        moments = evaluate_moments(index, model, annotations=args.annotations)
        print(f'eval-moments {printable(index.manifest["source"]["root"])}: {int(moments["num_captions"])} captions, '
              f'{int(moments["num_moments"])} moments of {int(moments["num_videos"])} videos')
        print('\n'.join(format_moment_lines(moments)))
        if args.json:
            print(json.dumps(moments))
    if (args.eval or args.eval_moments) and not (texts or args.image or args.video or args.like):
        return 0
    results = _search_all(args, index, model, texts)
    for r in results:
        if r.note:
            print(f'note: {printable(r.note)}', file=sys.stderr)
    if args.json:
        print(json.dumps(result_dicts(results, index), indent=2))
    else:
        _print_results(results, index)
    if args.html:
        from tempme_composer.inference.html_page import results_page

        write_page(args.html, results_page(results, index), args.force)
        print(f'wrote {printable(args.html)}', file=sys.stderr)
    if args.snippets:
        return _write_snippets(results, index, args.snippets)
    return 0


def _per_video(value: str) -> int | str:
    """``--per-video``: ``auto`` or a whole number >= 0.

    Raises:
        QueryError: anything else, naming the flag.
    """
    if value.strip().lower() == 'auto':
        return 'auto'
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise QueryError(f'--per-video {value}: expected auto or a whole number >= 0 (0: no limit)')
    return number


def _search_all(args: argparse.Namespace, index: VideoIndex, model: ExportedModel | None,
                texts: list[str]) -> list[QueryResult]:
    """Results of the text queries, then of each --image, --video and --like, in that order."""
    from tempme_composer.inference.queries import image_query, like_query, search_by, video_query
    from tempme_composer.inference.search import search

    options = {'approximate': args.approximate, 'expansion_search': args.expansion_search,
               'nms_iou': args.nms_iou, 'per_video': args.per_video}
    examples = [image_query(model, f) for f in args.image] + [video_query(model, f) for f in args.video] \
        + [like_query(index, spec) for spec in args.like]
    results = search(index, model, texts, args.top_k, **options) if texts else []
    return results + search_by(index, examples, args.top_k, **options)


def _write_snippets(results: list[QueryResult], index: VideoIndex, folder: str) -> int:
    """Cut every result's moment into ``folder``; one error line when some could not be cut."""
    from tempme_composer.inference.snippets import write_snippets

    done = write_snippets(results, index, folder)
    failed = [(hit, why) for hit, why in done if isinstance(why, str)]
    for _, snippet in done:
        if not isinstance(snippet, str):
            how = 'stream copy' if snippet.mode == 'copy' else 're-encoded'
            print(f'wrote {printable(snippet.path)} ({how})', file=sys.stderr)
    if failed:
        hit, why = failed[0]
        print(f'error: --snippets: {len(failed)} of {len(done)} moments could not be cut (first: rank {hit.rank}, '
              f'{printable(why)})', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
