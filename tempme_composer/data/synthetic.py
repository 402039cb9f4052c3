"""Embedded demo dataset: tiny synthetic text-video pairs produced through the *real* data path.

Each video shows one coloured shape moving in one direction over a plain, slightly noisy background. The
videos are rendered with numpy, encoded to real ``.mp4`` files (H.264 via PyAV's ``libx264`` when available,
else MPEG-4 part 2), decoded back with :func:`~tempme_composer.data.video.decode_video` and written to MDS
exactly like a converted real dataset would be. This exercises decoding, JPEG storage, streaming, frame
selection and tokenisation end to end without downloading anything.

The baseline CLIP model mean-pools per-frame features, so frame order is invisible to it. Every frame
therefore shows the direction by itself: the object drags a fading "comet tail" of ghost copies behind it.

Factors: 6 colours x 3 shapes x 4 directions = 72 classes. Random per video: start position, size, speed,
background shade/tint and pixel noise. Each video gets 3-5 caption paraphrases built from templates and
synonyms ("a red circle moves to the left", "something red and round heading left", ...).

Run ``python -m tempme_composer.data.synthetic --out DIR`` to create it.

The *long* demo (``--long``) strings 3-6 such clips of different classes into one video, for moment retrieval:
each clip's captions carry its ``[start, end]`` in seconds. It is written as mp4 files, as annotations in the
ActivityNet Captions format, and as the MDS splits ``tempme-convert activitynet`` makes of them (the converter
itself runs on the files), so an index built from it has captions with timestamps.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from tempme_composer.data.format import (
    DEMO_COLUMNS,
    DEMO_FORMAT_VERSION,
    DEMO_META_FILE,
    LONG_DEMO_FORMAT_VERSION,
    LONG_DEMO_META_FILE,
    MDS_INDEX_FILE,
    SHARD_HASHES,
)
from tempme_composer.data.frame_layout import pack_jpeg_frames
from tempme_composer.data.video import decode_video, encode_jpeg

__all__ = [
    'COLOURS',
    'SHAPES',
    'DIRECTIONS',
    'DemoDataset',
    'LONG_SPLITS',
    'LongDemoDataset',
    'generate_demo_dataset',
    'generate_long_demo_dataset',
    'long_video_classes',
    'render_long_video',
    'make_captions',
    'render_clip',
    'video_codec',
    'video_combos',
    'main',
    'video_codec',
]

log = logging.getLogger(__name__)

#: RGB of each colour factor (chosen to stay distinguishable after yuv420p chroma subsampling).
COLOURS: dict[str, tuple[int, int, int]] = {
    'red': (225, 35, 35),
    'green': (35, 195, 60),
    'blue': (40, 85, 240),
    'yellow': (240, 220, 40),
    'white': (245, 245, 245),
    'purple': (155, 55, 215),
}
SHAPES: tuple[str, ...] = ('square', 'circle', 'triangle')
#: Unit motion vector (dx, dy) in image coordinates (y grows downwards).
DIRECTIONS: dict[str, tuple[int, int]] = {'left': (-1, 0), 'right': (1, 0), 'up': (0, -1), 'down': (0, 1)}
NUM_CLASSES = len(COLOURS) * len(SHAPES) * len(DIRECTIONS)


# ------------------------------------------------------------------------------------------------------------
# Captions
# ------------------------------------------------------------------------------------------------------------

_COLOUR_WORDS = {
    'red': ['red', 'red', 'bright red', 'scarlet'],
    'green': ['green', 'green', 'bright green', 'emerald'],
    'blue': ['blue', 'blue', 'deep blue', 'cobalt blue'],
    'yellow': ['yellow', 'yellow', 'bright yellow', 'golden yellow'],
    'white': ['white', 'white', 'pure white', 'snow-white'],
    'purple': ['purple', 'purple', 'violet', 'bright purple'],
}
_SHAPE_NOUNS = {
    'square': ['square', 'box', 'block', 'square shape'],
    'circle': ['circle', 'ball', 'disc', 'dot', 'round shape'],
    'triangle': ['triangle', 'triangular shape', 'three-sided shape'],
}
_SHAPE_ADJS = {
    'square': ['square', 'boxy', 'four-sided'],
    'circle': ['round', 'circular'],
    'triangle': ['triangular', 'three-cornered', 'pointy'],
}
_DIR_PHRASES = {
    'left': ['to the left', 'leftwards', 'towards the left edge', 'from right to left'],
    'right': ['to the right', 'rightwards', 'towards the right edge', 'from left to right'],
    'up': ['upwards', 'up', 'towards the top', 'from bottom to top'],
    'down': ['downwards', 'down', 'towards the bottom', 'from top to bottom'],
}
_DIR_SHORT = {'left': ['left', 'leftwards'], 'right': ['right', 'rightwards'], 'up': ['up', 'upward'],
              'down': ['down', 'downward']}
_VERBS = ['moves', 'travels', 'slides', 'glides', 'drifts']
_GERUNDS = ['moving', 'travelling', 'sliding', 'gliding', 'drifting']
_TEMPLATES = [
    '{a_colour} {noun} {verb} {dir}',
    '{a_adj} {colour} object {verb} {dir}',
    'something {colour} and {adj} heading {short}',
    'the {colour} {noun} is {gerund} {dir}',
    '{a_colour} {noun} {gerund} {dir} across a plain background',
    'video of {a_adj} {colour} shape {gerund} {dir}',
    '{a_colour} {noun} going {short}',
    'a single {colour} {noun} that {verb} {dir}',
]


def _with_article(word: str) -> str:
    """'a red' / 'an emerald': the article must agree with the word that follows it."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def make_captions(colour: str, shape: str, direction: str, rng: np.random.Generator,
                  num_captions: int) -> list[str]:
    """``num_captions`` distinct paraphrases of one (colour, shape, direction) video.

    The first caption is always the canonical ``"a <colour> <shape> moves <direction phrase>"`` so that every
    video has at least one plain description; the others use random templates and synonyms.
    """
    if not 1 <= num_captions <= len(_TEMPLATES):
        raise ValueError(f'num_captions must be in [1, {len(_TEMPLATES)}], got {num_captions}')
    captions = [f'{_with_article(colour)} {shape} moves {_DIR_PHRASES[direction][0]}']
    for template_id in rng.permutation(len(_TEMPLATES)):
        if len(captions) == num_captions:
            break
        colour_word = str(rng.choice(_COLOUR_WORDS[colour]))
        adj = str(rng.choice(_SHAPE_ADJS[shape]))
        text = _TEMPLATES[template_id].format(
            colour=colour_word, a_colour=_with_article(colour_word), noun=rng.choice(_SHAPE_NOUNS[shape]),
            adj=adj, a_adj=_with_article(adj), verb=rng.choice(_VERBS), gerund=rng.choice(_GERUNDS),
            dir=rng.choice(_DIR_PHRASES[direction]), short=rng.choice(_DIR_SHORT[direction]))
        if text not in captions:
            captions.append(text)
    return captions


# ------------------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------------------


def _coverage(shape: str, dx: np.ndarray, dy: np.ndarray, half: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a shape of half-size ``half`` at offsets (dx, dy) from its centre.

    Soft edges keep sub-pixel motion smooth, so speed is not quantised to whole pixels.
    """
    if shape == 'circle':
        return np.clip(half + 0.5 - np.hypot(dx, dy), 0.0, 1.0)
    if shape == 'square':
        return np.clip(half + 0.5 - np.abs(dx), 0.0, 1.0) * np.clip(half + 0.5 - np.abs(dy), 0.0, 1.0)
    if shape == 'triangle':
        # Upward-pointing isosceles triangle, apex (0, -half), base corners (+-half, half); the orientation
        # does not depend on the motion direction. Inside distance to each edge, then a 1-px soft edge.
        norm = math.sqrt(5.0)
        dist = np.minimum(half - dy, np.minimum((dy + half - 2.0 * dx) / norm, (dy + half + 2.0 * dx) / norm))
        return np.clip(dist + 0.5, 0.0, 1.0)
    raise ValueError(f'unknown shape {shape!r}; expected one of {SHAPES}')


def render_clip(colour: str, shape: str, direction: str, rng: np.random.Generator, *, frame_size: int = 48,
                num_frames: int = 16) -> list[np.ndarray]:
    """Render one demo clip as ``num_frames`` uint8 RGB arrays ``[frame_size, frame_size, 3]``.

    The object travels 30-45% of the frame width along ``direction``; a trail of four fading ghost copies
    behind it (also drawn in the first frame) makes the direction visible in every single frame.
    """
    size = frame_size
    half = float(rng.uniform(0.09, 0.13)) * size  # half side / radius, px
    travel = float(rng.uniform(0.30, 0.45)) * size  # total path length over the clip, px
    speed = travel / max(num_frames - 1, 1)  # px per frame
    spacing = max(speed, 0.75 * half)  # distance between ghost copies, px
    ux, uy = DIRECTIONS[direction]

    # Start on the motion axis so that the whole path and at least 1.5 ghosts of the trail stay inside.
    lo = half + 1.0 + 1.5 * spacing
    hi = size - half - 1.0 - travel
    along = float(rng.uniform(lo, hi)) if hi > lo else 0.5 * (lo + hi)
    across = float(rng.uniform(half + 1.0, size - half - 1.0))
    if ux:  # horizontal motion: 'along' is the distance from the edge the object starts at
        x0, y0 = (along if ux > 0 else size - along), across
    else:
        x0, y0 = across, (along if uy > 0 else size - along)

    shade = float(rng.uniform(15.0, 95.0))
    background = np.clip(shade + rng.uniform(-12.0, 12.0, size=3), 0.0, 255.0)  # [3] slightly tinted grey
    colour_rgb = np.asarray(COLOURS[colour], dtype=np.float64)
    ghost_alpha = (0.12, 0.25, 0.4, 0.55)  # far -> near

    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5  # pixel centres
    frames = []
    for t in range(num_frames):
        cx, cy = x0 + ux * speed * t, y0 + uy * speed * t
        image = np.broadcast_to(background, (size, size, 3)).copy()
        image += rng.normal(0.0, 3.0, size=image.shape)  # mild sensor-like noise
        for k, alpha in zip(range(len(ghost_alpha), 0, -1), ghost_alpha, strict=True):
            cov = alpha * _coverage(shape, xs - (cx - ux * spacing * k), ys - (cy - uy * spacing * k), half)
            image = image * (1.0 - cov[..., None]) + colour_rgb * cov[..., None]
        cov = _coverage(shape, xs - cx, ys - cy, half)
        image = image * (1.0 - cov[..., None]) + colour_rgb * cov[..., None]
        frames.append(np.clip(np.rint(image), 0, 255).astype(np.uint8))
    return frames


# ------------------------------------------------------------------------------------------------------------
# Encoding
# ------------------------------------------------------------------------------------------------------------


@functools.cache
def video_codec() -> str:
    """H.264 when this PyAV build has libx264, else MPEG-4 part 2 (always bundled)."""
    import av

    for name in ('libx264', 'mpeg4'):
        try:
            av.codec.Codec(name, 'w')
            return name
        except Exception:  # PyAV raises different types for unknown codecs across versions
            continue
    raise RuntimeError('this PyAV build has neither libx264 nor mpeg4 encoders; cannot write demo videos')


def _write_mp4(path: Path, frames: Sequence[np.ndarray], fps: float) -> None:
    """Encode RGB frames to an mp4 file, byte-for-byte reproducibly.

    x264's lookahead/macroblock-tree path gave run-to-run different bitstreams for these tiny frames
    (measured: 4 of 24 clips), so it is disabled with ``tune=zerolatency`` (no lookahead, no B-frames);
    single thread.
    """
    import av

    codec = video_codec()
    height, width = frames[0].shape[:2]
    with av.open(str(path), mode='w', format='mp4') as container:
        if codec == 'libx264':
            options = {'crf': '18', 'preset': 'veryfast', 'tune': 'zerolatency', 'threads': '1'}
        else:
            options = {'threads': '1'}
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000), options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
        if codec != 'libx264':
            stream.bit_rate = 1_000_000
        for array in frames:
            frame = av.VideoFrame.from_ndarray(array, format='rgb24')
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():  # flush delayed frames
            container.mux(packet)


# ------------------------------------------------------------------------------------------------------------
# Dataset
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoDataset:
    """Where a generated demo dataset lives.

    ``train_dir``/``eval_dir`` are MDS directories (``index.json`` + shards); equivalently use
    ``local=mds_dir`` with ``split='train'`` / ``split='eval'``. ``val_dir`` is the held-out validation split
    (``num_val`` videos, none when 0), the split checkpoints are selected on with ``evaluation.select_on: val``.
    """

    root: Path
    videos_dir: Path  # <root>/videos/{train,eval}/<video_id>.mp4
    mds_dir: Path  # <root>/mds
    train_dir: Path  # <root>/mds/train
    eval_dir: Path  # <root>/mds/eval
    num_train: int
    num_eval: int
    reused: bool  # True when an existing complete dataset was returned without regenerating
    val_dir: Path | None = None  # <root>/mds/val when num_val > 0
    num_val: int = 0


#: Each split's own random streams: (seed, code, ...) keeps the validation videos and captions apart from the
#: train and eval ones, which stay byte-identical whether or not a validation split is generated.
_SPLIT_CODES = {'train': 1, 'eval': 2, 'val': 3}


def _paths(root: Path) -> dict[str, Path]:
    return {'root': root, 'videos_dir': root / 'videos', 'mds_dir': root / 'mds',
            'train_dir': root / 'mds' / 'train', 'eval_dir': root / 'mds' / 'eval'}


def _is_complete(root: Path, num_val: int = 0) -> bool:
    p = _paths(root)
    return ((root / DEMO_META_FILE).is_file() and (p['train_dir'] / MDS_INDEX_FILE).is_file()
            and (p['eval_dir'] / MDS_INDEX_FILE).is_file()
            and (num_val == 0 or (root / 'mds' / 'val' / MDS_INDEX_FILE).is_file()))


def video_combos(split: str, count: int, seed: int) -> list[tuple[str, str, str]]:
    """(colour, shape, direction) per video: balanced repeats of all 72 classes, shuffled per split.

    With ``count <= 72`` every class appears at most once, so each caption has exactly one correct video.
    """
    rng = np.random.default_rng([seed, _SPLIT_CODES[split], 0])
    classes = list(itertools.product(COLOURS, SHAPES, DIRECTIONS))
    out: list[tuple[str, str, str]] = []
    while len(out) < count:
        out.extend(classes[i] for i in rng.permutation(len(classes)))
    return out[:count]


def _write_split(root: Path, split: str, count: int, *, seed: int, frame_size: int, num_frames: int,
                 video_fps: float, jpeg_quality: int) -> None:
    """Render, encode, decode back and write one split's MDS shards."""
    from streaming import MDSWriter

    videos_dir = root / 'videos' / split
    videos_dir.mkdir(parents=True, exist_ok=True)
    split_code = _SPLIT_CODES[split]
    with MDSWriter(out=str(root / 'mds' / split), columns=DEMO_COLUMNS, compression=None, hashes=SHARD_HASHES,
                   size_limit='64mb', progress_bar=False) as writer:
        for i, (colour, shape, direction) in enumerate(video_combos(split, count, seed)):
            rng = np.random.default_rng([seed, split_code, i + 1])
            video_id = f'demo_{split}_{i:05d}'
            path = videos_dir / f'{video_id}.mp4'
            _write_mp4(path, render_clip(colour, shape, direction, rng, frame_size=frame_size,
                                         num_frames=num_frames), video_fps)
            decoded = decode_video(path, fps=None, short_side=None)  # real path: frames come from the file
            if len(decoded.frames) != num_frames:
                raise RuntimeError(f'{path}: encoded {num_frames} frames but decoded {len(decoded.frames)}')
            captions = make_captions(colour, shape, direction, rng, int(rng.integers(3, 6)))
            writer.write({
                'video_id': video_id,
                'captions': captions,
                'frames': pack_jpeg_frames([encode_jpeg(f, quality=jpeg_quality) for f in decoded.frames]),
                'num_frames': len(decoded.frames),
                'fps': float(decoded.source_fps),
            })


def _reuse_or_refuse(root: Path, what: str, meta_name: str, params: dict, complete: bool,
                     existing_params: Callable[[], dict]) -> bool:
    """True when ``root`` holds a complete dataset made with ``params`` (reuse it); raises when it holds one
    made otherwise, or a folder that is not a dataset of ours (never overwritten); False: write it."""
    if complete:
        if existing_params() != params:
            raise ValueError(f'{root} already holds a {what} made with {existing_params()}, not '
                             f'{params}; pass overwrite=True (--overwrite) or choose another directory')
        log.info('reusing the complete %s at %s', what, root)
        return True
    if root.exists() and any(root.iterdir()) and not (root / meta_name).is_file():
        raise FileExistsError(f'{root} exists and is not a {what} directory; refusing to overwrite it. '
                              'Choose an empty or new directory.')
    return False


def generate_demo_dataset(out_dir: str | os.PathLike, *, num_train: int = 288, num_eval: int = 72,
                          seed: int = 0, frame_size: int = 48, num_frames: int = 16, video_fps: float = 8.0,
                          jpeg_quality: int = 90, overwrite: bool = False, num_val: int = 0) -> DemoDataset:
    """Create (or reuse) the demo dataset under ``out_dir``.

    Layout: ``out_dir/videos/{train,eval}/<video_id>.mp4`` and MDS splits ``out_dir/mds/{train,eval}`` with
    columns :data:`DEMO_COLUMNS`. Train classes are balanced (288 = 4 videos per class by default); with
    ``num_eval <= 72`` every eval video has a distinct (colour, shape, direction), so each eval caption has
    exactly one correct video and text-to-video chance level is R@1 = 1/num_eval (1/72 ~ 1.4%, R@5 ~ 6.9%,
    R@10 ~ 13.9% at the default). With ``num_eval > 72`` classes repeat and retrieval becomes ambiguous.
    ``num_val > 0`` adds a validation split ``out_dir/mds/val`` of that many further videos, drawn from their
    own random stream, so the train and eval splits are the same with or without it
    (docs/evaluation.md#selecting-on-a-validation-split).

    Generation is deterministic for a given seed and parameters (byte-identical MDS shards). Everything is
    written to a temporary sibling directory first and renamed into place, so an interrupted run never
    leaves a directory that looks complete. A complete dataset with the same parameters is reused unless
    ``overwrite=True``; one with different parameters raises ``ValueError``.

    Raises:
        FileExistsError: ``out_dir`` exists, is not empty and was not made by this function (never deleted).
        ValueError: bad parameters, or an existing dataset with other parameters and ``overwrite=False``.
    """
    if num_train < 1 or num_eval < 1:
        raise ValueError(f'num_train and num_eval must be >= 1, got {num_train} and {num_eval}')
    if num_val < 0:
        raise ValueError(f'num_val must be >= 0 (0: no validation split), got {num_val}')
    if frame_size < 16 or frame_size % 2:
        raise ValueError(f'frame_size must be an even number >= 16 (yuv420p), got {frame_size}')
    if num_frames < 1 or not video_fps > 0:
        raise ValueError(f'num_frames must be >= 1 and video_fps > 0, got {num_frames} and {video_fps}')
    root = Path(out_dir).absolute()
    params = {'format_version': DEMO_FORMAT_VERSION, 'num_train': num_train, 'num_eval': num_eval, 'seed': seed,
              'frame_size': frame_size, 'num_frames': num_frames, 'video_fps': video_fps,
              'jpeg_quality': jpeg_quality}
    if num_val:  # recorded only when there is one, so datasets written before the val split are reused as they are
        params['num_val'] = num_val

    def result(reused: bool) -> DemoDataset:
        val_dir = root / 'mds' / 'val' if num_val else None
        return DemoDataset(**_paths(root), num_train=num_train, num_eval=num_eval, reused=reused, val_dir=val_dir,
                           num_val=num_val)

    def existing_params() -> dict:
        meta = json.loads((root / DEMO_META_FILE).read_text())
        existing = {k: meta.get(k) for k in params}
        if existing['format_version'] == 1:  # the loader reads format 1 too: same data, reuse it
            existing['format_version'] = DEMO_FORMAT_VERSION
        return existing

    if _reuse_or_refuse(root, 'demo dataset', DEMO_META_FILE, params, _is_complete(root, num_val) and not overwrite,
                        existing_params):
        return result(reused=True)

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f'.{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}'
    start = time.perf_counter()
    try:
        common = dict(seed=seed, frame_size=frame_size, num_frames=num_frames, video_fps=video_fps,
                      jpeg_quality=jpeg_quality)
        _write_split(tmp, 'train', num_train, **common)
        _write_split(tmp, 'eval', num_eval, **common)
        if num_val:
            _write_split(tmp, 'val', num_val, **common)
        meta = {**params, 'codec': video_codec(), 'num_classes': NUM_CLASSES, 'columns': DEMO_COLUMNS,
                'chance_t2v_r1': 1.0 / num_eval}
        (tmp / DEMO_META_FILE).write_text(json.dumps(meta, indent=2) + '\n')  # written last: marks completeness

        if _is_complete(root, num_val) and not overwrite and existing_params() == params:
            log.info('another process finished %s first; reusing it', root)  # e.g. several ranks racing
            return result(reused=True)
        _replace_dir(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info('wrote demo dataset (%d train, %d eval videos, codec %s) to %s in %.1fs', num_train, num_eval,
             video_codec(), root, time.perf_counter() - start)
    return result(reused=False)


# ------------------------------------------------------------------------------------------------------------
# Long videos: several clips in a row, for moment retrieval
# ------------------------------------------------------------------------------------------------------------

#: ActivityNet Captions' splits (as ``tempme-convert activitynet`` names them) and their annotation files.
LONG_SPLITS: dict[str, str] = {'train': 'train.json', 'val_1': 'val_1.json'}
_LONG_SPLIT_CODES = {'train': 11, 'val_1': 12}  # random streams apart from the short demo's (1, 2)
_LONG_ID_TAGS = {'train': 'train', 'val_1': 'val'}


@dataclass(frozen=True)
class LongDemoDataset:
    """Where a generated long demo dataset lives (``eval_dir`` is ActivityNet's ``val_1`` split)."""

    root: Path
    videos_dir: Path  # <root>/videos/{train,val_1}/<video_id>.mp4
    annotations_dir: Path  # <root>/annotations/{train,val_1}.json, ActivityNet Captions format
    mds_dir: Path  # <root>/mds/{train,train_pairs,val_1,val_1_pairs}: what tempme-convert activitynet writes
    train_dir: Path  # <root>/mds/train
    eval_dir: Path  # <root>/mds/val_1
    num_train: int
    num_eval: int
    reused: bool


def _long_paths(root: Path) -> dict[str, Path]:
    return {'root': root, 'videos_dir': root / 'videos', 'annotations_dir': root / 'annotations',
            'mds_dir': root / 'mds', 'train_dir': root / 'mds' / 'train', 'eval_dir': root / 'mds' / 'val_1'}


def _long_is_complete(root: Path) -> bool:
    p = _long_paths(root)
    return ((root / LONG_DEMO_META_FILE).is_file() and (p['train_dir'] / MDS_INDEX_FILE).is_file()
            and (p['eval_dir'] / MDS_INDEX_FILE).is_file())


def long_video_classes(split: str, count: int, seed: int, min_clips: int,
                       max_clips: int) -> list[list[tuple[str, str, str]]]:
    """(colour, shape, direction) of each clip of each long video of a split.

    Classes are drawn from shuffled passes over all 72, never twice in one video; while a split uses at most 72
    clips, no class repeats in it, so every caption describes exactly one moment of the split.
    """
    rng = np.random.default_rng([seed, _LONG_SPLIT_CODES[split], 0])
    classes = list(itertools.product(COLOURS, SHAPES, DIRECTIONS))
    pool: list[tuple[str, str, str]] = []
    videos = []
    for _ in range(count):
        want = int(rng.integers(min_clips, max_clips + 1))
        chosen: list[tuple[str, str, str]] = []
        i = 0
        while len(chosen) < want:
            if i == len(pool):
                pool.extend(classes[j] for j in rng.permutation(len(classes)))
            if pool[i] in chosen:
                i += 1  # left in the pool for a later video
            else:
                chosen.append(pool.pop(i))
        videos.append(chosen)
    return videos


def render_long_video(classes: Sequence[tuple[str, str, str]], rng: np.random.Generator, *, frame_size: int,
                      clip_frames: tuple[int, int], video_fps: float,
                      captions_per_clip: int) -> tuple[list[np.ndarray], list[dict]]:
    """Frames of one long video (one `render_clip` per class, in a row) and, per clip, its captions and its
    ``[start, end]`` in seconds: frames ``[f0, f0 + n)`` at ``video_fps`` span ``[f0 / fps, (f0 + n) / fps]``."""
    frames: list[np.ndarray] = []
    clips = []
    for colour, shape, direction in classes:
        n = int(rng.integers(clip_frames[0], clip_frames[1] + 1))
        start = len(frames) / video_fps
        frames += render_clip(colour, shape, direction, rng, frame_size=frame_size, num_frames=n)
        clips.append({'class': [colour, shape, direction], 'start': start, 'end': len(frames) / video_fps,
                      'captions': make_captions(colour, shape, direction, rng, captions_per_clip)})
    return frames, clips


def _write_long_videos(root: Path, split: str, count: int, *, seed: int, min_clips: int, max_clips: int,
                       frame_size: int, clip_frames: tuple[int, int], video_fps: float,
                       captions_per_clip: int) -> dict[str, dict]:
    """Render and encode a split's long videos; returns its annotations in ActivityNet Captions' format
    (``{video_id: {duration, timestamps, sentences}}``, one ``[start, end]`` per sentence)."""
    videos_dir = root / 'videos' / split
    videos_dir.mkdir(parents=True, exist_ok=True)
    annotations: dict[str, dict] = {}
    for i, classes in enumerate(long_video_classes(split, count, seed, min_clips, max_clips)):
        rng = np.random.default_rng([seed, _LONG_SPLIT_CODES[split], i + 1])
        video_id = f'long_{_LONG_ID_TAGS[split]}_{i:05d}'
        frames, clips = render_long_video(classes, rng, frame_size=frame_size, clip_frames=clip_frames,
                                          video_fps=video_fps, captions_per_clip=captions_per_clip)
        path = videos_dir / f'{video_id}.mp4'
        _write_mp4(path, frames, video_fps)
        decoded = decode_video(path, fps=None, short_side=None)
        if len(decoded.frames) != len(frames):  # the timestamps count frames: they must all come back
            raise RuntimeError(f'{path}: encoded {len(frames)} frames but decoded {len(decoded.frames)}')
        annotations[video_id] = {
            'duration': len(frames) / video_fps,
            'timestamps': [[c['start'], c['end']] for c in clips for _ in c['captions']],
            'sentences': [text for c in clips for text in c['captions']],
        }
    return annotations


def _convert_long(tmp: Path, *, store_fps: float, frame_size: int, jpeg_quality: int, workers: int) -> dict:
    """Run the ActivityNet reader and ``tempme-convert``'s conversion on the written files and annotations."""
    from tempme_composer.data.annotations import read_activitynet
    from tempme_composer.data.convert import ConvertSettings, convert_records

    notes = tmp / 'annotations'
    annotations = read_activitynet(train_json=notes / LONG_SPLITS['train'], val_json=notes / LONG_SPLITS['val_1'])
    if annotations.problems:
        raise RuntimeError(f'the long demo annotations have problems: {annotations.problems[:3]}')
    settings = ConvertSettings(fps=store_fps, size=frame_size, jpeg_quality=jpeg_quality)
    summaries = convert_records('activitynet', annotations, tmp / 'videos', tmp / 'mds', settings=settings,
                                workers=workers, work_dir=tmp / 'convert-work', progress=False)
    shutil.rmtree(tmp / 'convert-work', ignore_errors=True)
    for split, summary in summaries.items():
        if summary.failed or summary.converted != len(annotations[split]):
            raise RuntimeError(f'converting the long demo split {split} wrote {summary.converted} of '
                               f'{len(annotations[split])} videos: {summary.unwritten[:3]}')
    return {split: {'videos': s.converted, 'frames': s.frames} for split, s in summaries.items()}


def _replace_dir(tmp: Path, root: Path) -> None:
    """Move the finished ``tmp`` into place, replacing an older ``root`` (renamed away first, then deleted)."""
    trash = None
    if root.exists():
        trash = root.parent / f'.{root.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}'
        os.replace(root, trash)
    os.replace(tmp, root)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def generate_long_demo_dataset(out_dir: str | os.PathLike, *, num_train: int = 16, num_eval: int = 8,
                               seed: int = 0, min_clips: int = 3, max_clips: int = 6,
                               clip_frames: tuple[int, int] = (12, 24), captions_per_clip: int = 2,
                               frame_size: int = 48, video_fps: float = 8.0, store_fps: float = 4.0,
                               jpeg_quality: int = 90, workers: int = 1,
                               overwrite: bool = False) -> LongDemoDataset:
    """Create (or reuse) the long demo under ``out_dir``: videos of ``min_clips``-``max_clips`` demo clips
    (``clip_frames`` frames each at ``video_fps``: 1.5-3 s by default) with each clip's captions and span.

    Layout: ``videos/{train,val_1}/<video_id>.mp4``; ``annotations/{train,val_1}.json`` in ActivityNet Captions'
    format; ``mds/{train,val_1}`` (+ ``_pairs``) written by ``tempme-convert``'s conversion of those files at
    ``store_fps`` (columns ``video_id, captions, timestamps, frames, num_frames, fps, duration`` and
    ``tempme_dataset.json``); ``long_demo_dataset.json`` (parameters, written last). With at most 72 clips in a
    split (the default eval split has at most 48), each caption has exactly one correct moment in it.

    Deterministic for a given seed and parameters (byte-identical videos, annotations and shards; only the
    conversion's record of when it ran differs). Written to a temporary sibling and renamed into place; a
    complete dataset with the same parameters is reused unless ``overwrite``.

    Raises:
        FileExistsError: ``out_dir`` exists, is not empty and was not made by this function (never deleted).
        ValueError: bad parameters, or an existing dataset with other parameters and ``overwrite=False``.
    """
    if num_train < 1 or num_eval < 1:
        raise ValueError(f'num_train and num_eval must be >= 1, got {num_train} and {num_eval}')
    if not 1 <= min_clips <= max_clips:
        raise ValueError(f'clips per video must satisfy 1 <= min_clips <= max_clips, got {min_clips}, {max_clips}')
    if not 2 <= clip_frames[0] <= clip_frames[1]:
        raise ValueError(f'clip_frames must be (min, max) with 2 <= min <= max, got {clip_frames}')
    if frame_size < 16 or frame_size % 2:
        raise ValueError(f'frame_size must be an even number >= 16 (yuv420p), got {frame_size}')
    if not (video_fps > 0 and store_fps > 0):
        raise ValueError(f'video_fps and store_fps must be > 0, got {video_fps} and {store_fps}')
    if not 1 <= captions_per_clip <= len(_TEMPLATES):
        raise ValueError(f'captions_per_clip must be in [1, {len(_TEMPLATES)}], got {captions_per_clip}')
    root = Path(out_dir).absolute()
    params = {'format_version': LONG_DEMO_FORMAT_VERSION, 'num_train': num_train, 'num_eval': num_eval, 'seed': seed,
              'min_clips': min_clips, 'max_clips': max_clips, 'clip_frames': list(clip_frames),
              'captions_per_clip': captions_per_clip, 'frame_size': frame_size, 'video_fps': video_fps,
              'store_fps': store_fps, 'jpeg_quality': jpeg_quality}

    def result(reused: bool) -> LongDemoDataset:
        return LongDemoDataset(**_long_paths(root), num_train=num_train, num_eval=num_eval, reused=reused)

    def existing_params() -> dict:
        meta = json.loads((root / LONG_DEMO_META_FILE).read_text())
        return {k: meta.get(k) for k in params}

    if _reuse_or_refuse(root, 'long demo dataset', LONG_DEMO_META_FILE, params,
                        _long_is_complete(root) and not overwrite, existing_params):
        return result(reused=True)

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f'.{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}'
    start = time.perf_counter()
    try:
        common = dict(seed=seed, min_clips=min_clips, max_clips=max_clips, frame_size=frame_size,
                      clip_frames=tuple(clip_frames), video_fps=video_fps, captions_per_clip=captions_per_clip)
        (tmp / 'annotations').mkdir(parents=True)
        counts = {}
        for split, count in (('train', num_train), ('val_1', num_eval)):
            annotations = _write_long_videos(tmp, split, count, **common)
            (tmp / 'annotations' / LONG_SPLITS[split]).write_text(json.dumps(annotations, indent=1) + '\n')
            counts[split] = {'videos': count, 'clips': sum(len(set(map(tuple, a['timestamps'])))
                                                             for a in annotations.values()),
                             'captions': sum(len(a['sentences']) for a in annotations.values())}
        converted = _convert_long(tmp, store_fps=store_fps, frame_size=frame_size, jpeg_quality=jpeg_quality,
                                  workers=workers)
        meta = {**params, 'codec': video_codec(), 'splits': {k: {**v, 'stored_frames': converted[k]['frames']}
                                                              for k, v in counts.items()}}
        (tmp / LONG_DEMO_META_FILE).write_text(json.dumps(meta, indent=2) + '\n')  # written last: marks completeness
        if _long_is_complete(root) and not overwrite and existing_params() == params:
            log.info('another process finished %s first; reusing it', root)
            return result(reused=True)
        _replace_dir(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info('wrote long demo dataset (%d train, %d eval videos, codec %s) to %s in %.1fs', num_train, num_eval,
             video_codec(), root, time.perf_counter() - start)
    return result(reused=False)


def main(argv: Sequence[str] | None = None) -> DemoDataset | LongDemoDataset:
    """CLI: ``python -m tempme_composer.data.synthetic --out DIR [--num-train N --num-eval N --seed S]``;
    ``--long`` writes the long demo instead (``--min-clips``, ``--max-clips``, ``--captions-per-clip``,
    ``--store-fps``)."""
    parser = argparse.ArgumentParser(prog='python -m tempme_composer.data.synthetic',
                                     description=__doc__.split('\n')[0])
    parser.add_argument('--out', required=True, help='output directory (videos/ and mds/{train,eval} inside; '
                        'with --long: videos/, annotations/ and mds/{train,val_1})')
    parser.add_argument('--long', action='store_true', help='long videos of several clips, with each clip\'s '
                        'captions and [start, end] (moment retrieval), converted like ActivityNet Captions')
    parser.add_argument('--num-train', type=int, default=None, help='default 288 (--long: 16)')
    parser.add_argument('--num-eval', type=int, default=None, help='default 72 (--long: 8)')
    parser.add_argument('--num-val', type=int, default=0, help='a held-out validation split mds/val of this many '
                        'further videos (default 0: none; not with --long)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--frame-size', type=int, default=48)
    parser.add_argument('--num-frames', type=int, default=16, help='frames per video (not with --long)')
    parser.add_argument('--min-clips', type=int, default=3, help='--long: fewest clips per video (default 3)')
    parser.add_argument('--max-clips', type=int, default=6, help='--long: most clips per video (default 6)')
    parser.add_argument('--captions-per-clip', type=int, default=2, help='--long: paraphrases per clip (default 2)')
    parser.add_argument('--store-fps', type=float, default=4.0, help='--long: frames stored per second in the '
                        'MDS splits (the videos run at 8 fps; default 4)')
    parser.add_argument('--overwrite', action='store_true', help='regenerate even if a dataset exists')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    start = time.perf_counter()
    if args.long:
        ds = generate_long_demo_dataset(
            args.out, num_train=16 if args.num_train is None else args.num_train,
            num_eval=8 if args.num_eval is None else args.num_eval, seed=args.seed, min_clips=args.min_clips,
            max_clips=args.max_clips, captions_per_clip=args.captions_per_clip, frame_size=args.frame_size,
            store_fps=args.store_fps, overwrite=args.overwrite)
    else:
        ds = generate_demo_dataset(args.out, num_train=288 if args.num_train is None else args.num_train,
                                   num_eval=72 if args.num_eval is None else args.num_eval, seed=args.seed,
                                   frame_size=args.frame_size, num_frames=args.num_frames,
                                   overwrite=args.overwrite, num_val=args.num_val)
    summary = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(ds).items()}
    summary['seconds'] = round(time.perf_counter() - start, 2)
    print(json.dumps(summary, indent=2))
    return ds


if __name__ == '__main__':
    main()
