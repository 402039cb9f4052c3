"""Sane limits for the values of a received ``config.json``, checked before anything is allocated.

An export's config decides how much memory loading and indexing take (architecture widths and layers, frames per
video, frame size). A hostile or mistaken value (``max_frames: 100000``, ``short_side: 9000``,
``vision_width: 16384``) would otherwise end in an out-of-memory kill or a traceback blamed on the videos; each
is refused here with the key, the value and the limit. The limits sit far above every published CLIP video
model (ViT-L/14 at 336 px, 64 frames; see ``docs/using-models.md``).
"""

from __future__ import annotations

from typing import Any

__all__ = ['ARCHITECTURE_LIMITS', 'PREPROCESSING_LIMITS', 'MAX_PARAMETERS', 'MAX_VIDEO_INPUT_BYTES',
           'check_architecture', 'check_preprocessing', 'check_parameter_count']

#: Upper bounds of ``base_clip.architecture`` (OpenAI's largest ViT-L/14@336: width 1024, 24 layers, 336 px).
ARCHITECTURE_LIMITS = {
    'embed_dim': 8192, 'image_resolution': 1024, 'vision_layers': 128, 'vision_width': 8192,
    'vision_patch_size': 1024, 'vision_heads': 256, 'context_length': 1024, 'vocab_size': 1_000_000,
    'transformer_width': 8192, 'transformer_heads': 256, 'transformer_layers': 128,
}
#: Upper bounds of ``preprocessing`` (frames per video, tokens per caption, the frame rule's short side in
#: pixels — 8K UHD's — and frames per second).
PREPROCESSING_LIMITS = {'max_frames': 1024, 'max_words': 1024, 'short_side': 4320, 'fps': 1000.0}
#: The whole network, counted on the meta device (no memory) before it is built: 3 billion (12 GB in fp32).
MAX_PARAMETERS = 3_000_000_000
#: One video's model input, ``max_frames × R × R × 3`` bytes (uint8): 512 MiB.
MAX_VIDEO_INPUT_BYTES = 512 << 20


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_architecture(arch: Any, source: str) -> None:
    """``base_clip.architecture``: an object whose sizes are positive integers within `ARCHITECTURE_LIMITS`.

    Raises:
        ValueError: naming ``source`` and the key.
    """
    if not isinstance(arch, dict):
        raise ValueError(f'{source}: base_clip.architecture is {type(arch).__name__}, expected an object')
    for key, limit in ARCHITECTURE_LIMITS.items():
        if key not in arch:
            continue  # a missing key is reported by the architecture's own parser
        value = arch[key]
        if not _is_int(value) or not 0 < value <= limit:
            raise ValueError(f'{source}: base_clip.architecture.{key} is {value!r}, expected an integer from 1 to '
                             f'{limit}')


def check_preprocessing(prep: Any, context_length: int, image_resolution: int, source: str) -> None:
    """``preprocessing``: every value of the right type within `PREPROCESSING_LIMITS`, tied to the architecture.

    Raises:
        ValueError: naming ``source`` and the key.
    """
    if not isinstance(prep, dict):
        raise ValueError(f'{source}: preprocessing is {type(prep).__name__}, expected an object')
    frames = prep.get('frames')
    if not isinstance(frames, dict):
        raise ValueError(f'{source}: preprocessing.frames is {frames!r}, expected an object (fps, short_side, '
                         'apply_rotation)')

    def bad(key: str, value: Any, expected: str) -> ValueError:
        return ValueError(f'{source}: preprocessing.{key} is {value!r}, expected {expected}')

    max_frames, max_words = prep.get('max_frames'), prep.get('max_words')
    if not _is_int(max_frames) or not 0 < max_frames <= PREPROCESSING_LIMITS['max_frames']:
        raise bad('max_frames', max_frames, f'an integer from 1 to {PREPROCESSING_LIMITS["max_frames"]}')
    words_limit = min(PREPROCESSING_LIMITS['max_words'], context_length)
    if not _is_int(max_words) or not 2 < max_words <= words_limit:
        raise bad('max_words', max_words, f'an integer from 3 to {words_limit} (the text tower reads '
                  f'context_length={context_length} tokens)')
    if prep.get('image_resolution') != image_resolution:
        raise bad('image_resolution', prep.get('image_resolution'),
                  f'{image_resolution}, the resolution of base_clip.architecture')
    if prep.get('slice_framepos') not in (0, 1, 2) or isinstance(prep.get('slice_framepos'), bool):
        raise bad('slice_framepos', prep.get('slice_framepos'), '0 (head), 1 (tail) or 2 (uniform)')
    for key in ('mean', 'std'):
        value = prep.get(key)
        if not isinstance(value, list | tuple) or len(value) != 3 or not all(_is_number(v) for v in value) \
                or (key == 'std' and not all(v > 0 for v in value)):
            raise bad(key, value, 'three numbers (per RGB channel)' + (', all positive' if key == 'std' else ''))
    short_side, fps = frames.get('short_side'), frames.get('fps')
    if short_side is not None and (not _is_int(short_side) or not 0 < short_side <= PREPROCESSING_LIMITS['short_side']):
        raise bad('frames.short_side', short_side,
                  f'null (decoded size) or an integer from 1 to {PREPROCESSING_LIMITS["short_side"]} pixels')
    if fps is not None and (not _is_number(fps) or not 0 < fps <= PREPROCESSING_LIMITS['fps']):
        raise bad('frames.fps', fps, f'null (every frame) or a number above 0 and at most {PREPROCESSING_LIMITS["fps"]:g}')
    if not isinstance(frames.get('apply_rotation', True), bool):
        raise bad('frames.apply_rotation', frames.get('apply_rotation'), 'true or false')
    size = max_frames * image_resolution * image_resolution * 3
    if size > MAX_VIDEO_INPUT_BYTES:
        raise bad('max_frames', max_frames, f'at most {MAX_VIDEO_INPUT_BYTES // (image_resolution ** 2 * 3)} at '
                  f'image_resolution {image_resolution} (one video\'s input would take {size >> 20} MiB, over the '
                  f'{MAX_VIDEO_INPUT_BYTES >> 20} MiB limit)')


def check_parameter_count(count: int, source: str) -> None:
    """Raises ValueError when the network the config describes has more than `MAX_PARAMETERS` parameters."""
    if count > MAX_PARAMETERS:
        raise ValueError(f'{source} describes a network of {count:,} parameters, over the {MAX_PARAMETERS:,} this '
                         'tool loads (check base_clip.architecture and the model section: a width or a LoRA rank '
                         'out of range?)')
