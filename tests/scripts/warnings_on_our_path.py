"""Import every ``tempme_composer`` module and run a short representative path, recording every warning.

Run as ``python tests/scripts/warnings_on_our_path.py OUT.json SCRATCH_DIR`` (a fresh process, so import-time
warnings fire). OUT.json gets ``{'modules': int, 'ours': [warning, ...], 'others': int, 'control': [warning, ...]}``:
``ours`` are the warnings ``caused_by_package`` attributes to our code, ``others`` counts the rest, ``control``
is the same attribution applied to one warning issued under a package file name.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import pkgutil
import sys
import sysconfig
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
PACKAGE = TESTS.parent / 'tempme_composer'
sys.path.insert(0, str(TESTS))


#: Where installed libraries and the standard library live; the longest first (site-packages may lie in stdlib).
_LIBRARY_BASES = sorted(
    {Path(sysconfig.get_paths()[key]).resolve() for key in ('purelib', 'platlib', 'stdlib', 'platstdlib')},
    key=lambda base: -len(base.parts),
)


def in_package(filename: str) -> bool:
    return not filename.startswith('<') and Path(filename).resolve().is_relative_to(PACKAGE)


def library_root(filename: str) -> Path | None:
    """``site-packages/torch`` for any file of torch (likewise for the standard library); None for the rest."""
    if filename.startswith('<'):
        return None
    path = Path(filename).resolve()
    for base in _LIBRARY_BASES:
        if path.is_relative_to(base):
            parts = path.relative_to(base).parts
            return base / parts[0] if parts else base
    return None


def caused_by_package(stack: list[tuple[str, int]], filename: str, lineno: int) -> bool:
    """Whether a warning reported at ``filename:lineno`` comes from our code.

    ``stack`` is the call stack when it was issued, outermost first. Ours: reported inside the package, or
    reported inside a library whose nearest caller outside that library (import machinery skipped) is ours —
    a deprecated API we call, whatever ``stacklevel`` the library chose.
    """
    if in_package(filename):
        return True
    root = library_root(filename)
    reported = [i for i, frame in enumerate(stack) if frame == (filename, lineno)]
    if root is None or not reported:
        return False
    for caller, _ in reversed(stack[: reported[-1]]):
        if caller.startswith('<frozen') or library_root(caller) == root:
            continue
        return in_package(caller)
    return False


@contextlib.contextmanager
def recording_warnings() -> Iterator[list[dict[str, object]]]:
    """Every warning issued inside, each with ``ours`` from ``caused_by_package`` (the stack read as it is
    issued: ``showwarning`` runs inside ``warnings.warn``)."""
    records: list[dict[str, object]] = []

    def showwarning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        stack = [(frame.filename, frame.lineno) for frame in traceback.extract_stack()]
        ours = caused_by_package(stack, filename, lineno)
        records.append(
            {
                'file': filename,
                'line': lineno,
                'category': category.__name__,
                'message': str(message),
                'ours': ours,
            }
        )

    with warnings.catch_warnings():
        warnings.simplefilter('always')
        warnings.showwarning = showwarning
        yield records


def import_everything() -> int:
    import tempme_composer

    found = pkgutil.walk_packages(tempme_composer.__path__, 'tempme_composer.')
    names = [m.name for m in found if not m.name.endswith('.__main__')]  # those run a CLI when imported
    for name in names:
        importlib.import_module(name)
    return len(names)


def run_the_path(scratch: Path) -> None:
    """CLIP from a traced fp16 TorchScript archive; the unified model's forward, loss and backward; export,
    index two videos, search."""
    import torch
    from batches import random_train_batch
    from clip_fixtures import save_openai_torchscript, tiny_clip
    from export_fixtures import FRAMES, run_folder
    from video_fixtures import write_video

    from tempme_composer.clip import load_clip
    from tempme_composer.composer_wrapper import RetrievalModel
    from tempme_composer.inference.export import export_checkpoint
    from tempme_composer.inference.exported import load_exported
    from tempme_composer.inference.index import index_videos
    from tempme_composer.inference.search import VideoIndex, search

    archive = scratch / 'clip.pt'
    save_openai_torchscript(tiny_clip(), archive, dtype=torch.float16, traced=True)
    load_clip(archive)

    run, model = run_folder(scratch, 'unified', None)
    composer_model = RetrievalModel(model.train())
    batch = random_train_batch(2, model.clip.config, seed=0, frames=FRAMES)
    composer_model.loss(composer_model(batch), batch).backward()

    exported = load_exported(export_checkpoint(run / 'checkpoints' / 'best.pt', scratch / 'export'))
    videos = scratch / 'videos'
    write_video(videos / 'red.mp4', colours=((220, 40, 40),))
    write_video(videos / 'green.mp4', colours=((40, 220, 40),))
    index_videos(exported, videos, scratch / 'index', dtype='float32', progress=False)
    search(VideoIndex(scratch / 'index'), exported, ['a red square'], top_k=2)


def control() -> list[str]:
    """Warnings issued under borrowed file names, to show the attribution at work: the messages it calls ours.

    ``reported here`` is issued under a package file name; ``library called by us`` inside a function under a
    standard-library file name (``stacklevel=1``, so reported there), called from a package file name;
    ``library called by a test`` is that function called from this script. Only the first two are ours.
    """
    library_file = str(Path(json.__file__).resolve())
    library: dict[str, object] = {}
    exec(
        compile(
            'def warn(m):\n    import warnings; warnings.warn(m, DeprecationWarning)', library_file, 'exec'
        ),
        library,
    )
    with recording_warnings() as records:
        exec(
            compile(
                "import warnings; warnings.warn('reported here', DeprecationWarning)",
                str(PACKAGE / 'loss.py'),
                'exec',
            ),
            {},
        )
        exec(compile("warn('library called by us')", str(PACKAGE / 'loss.py'), 'exec'), library)
        library['warn']('library called by a test')
    return [str(r['message']) for r in records if r['ours']]


def main(out: Path, scratch: Path) -> None:
    with recording_warnings() as records:
        modules = import_everything()
        run_the_path(scratch)
    ours = [r for r in records if r['ours']]
    result = {'modules': modules, 'ours': ours, 'others': len(records) - len(ours), 'control': control()}
    out.write_text(json.dumps(result, indent=1))


if __name__ == '__main__':
    main(Path(sys.argv[1]), Path(sys.argv[2]))
