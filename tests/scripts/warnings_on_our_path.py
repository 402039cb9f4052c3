"""Import every ``tempme_composer`` module and run a short representative path, recording every warning.

Run as ``python tests/scripts/warnings_on_our_path.py OUT.json SCRATCH_DIR`` (a fresh process, so import-time
warnings fire). OUT.json gets ``{'modules': int, 'ours': [warning, ...], 'control': [warning, ...]}``:
``ours`` are the warnings whose reported location lies inside the package, ``control`` the same attribution
applied to one warning issued under a package file name (proof that the attribution finds such a warning).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import warnings
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
PACKAGE = TESTS.parent / 'tempme_composer'
sys.path.insert(0, str(TESTS))


def attributed_to_package(records: list[warnings.WarningMessage]) -> list[dict[str, object]]:
    """The records whose location (the frame the issuer's ``stacklevel`` names) is a file of the package."""
    return [
        {'file': r.filename, 'line': r.lineno, 'category': r.category.__name__, 'message': str(r.message)}
        for r in records
        if Path(r.filename).resolve().is_relative_to(PACKAGE)
    ]


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


def control() -> list[dict[str, object]]:
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter('always')
        code = compile(
            "import warnings; warnings.warn('control', DeprecationWarning)", PACKAGE / 'loss.py', 'exec'
        )
        exec(code, {})
    return attributed_to_package(records)


def main(out: Path, scratch: Path) -> None:
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter('always')
        modules = import_everything()
        run_the_path(scratch)
    result = {'modules': modules, 'ours': attributed_to_package(records), 'control': control()}
    out.write_text(json.dumps(result, indent=1))


if __name__ == '__main__':
    main(Path(sys.argv[1]), Path(sys.argv[2]))
