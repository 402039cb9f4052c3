"""``tempme-convert`` and ``tempme-index`` find the same video files under a folder (one extension list, one walk)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tempme_composer.data.annotations import Annotations, VideoRecord
from tempme_composer.data.convert import ConvertSettings, convert_records
from tempme_composer.data.format import SKIPPED_FILE
from tempme_composer.data.video_files import (
    VIDEO_EXTENSIONS,
    find_video_files,
    video_file_stats,
    videos_by_name,
)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Every kind of entry the rules tell apart (empty files: finding them needs no decoding)."""
    videos = tmp_path / 'videos'
    (videos / 'sub').mkdir(parents=True)
    (videos / '.cache').mkdir()
    for name in ('a.mp4', 'b.vob', 'c.3g2', 'notes.txt', '.hidden.mp4', 'sub/d.MKV', '.cache/e.mp4'):
        (videos / name).write_bytes(b'')
    (videos / 'alias.mp4').symlink_to(videos / 'a.mp4')
    (videos / 'dangling.mp4').symlink_to(tmp_path / 'gone.mp4')
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    (elsewhere / 'far.mp4').write_bytes(b'')
    (videos / 'linked').symlink_to(elsewhere, target_is_directory=True)
    return videos


def test_one_extension_list_covers_both_commands():
    assert {'.vob', '.3g2', '.mp4', '.gif'} <= VIDEO_EXTENSIONS
    assert all(ext == ext.lower() and ext.startswith('.') for ext in VIDEO_EXTENSIONS)


def test_the_walk_keeps_the_index_rules(folder):
    found = [str(p.relative_to(folder)) for p in find_video_files(folder)]
    # hidden entries, non-videos and linked folders are left out; file links are listed under their own path
    assert found == ['a.mp4', 'alias.mp4', 'b.vob', 'c.3g2', 'dangling.mp4', 'sub/d.MKV']
    current, broken = video_file_stats(folder)
    assert sorted(current) == ['a.mp4', 'alias.mp4', 'b.vob', 'c.3g2', 'sub/d.MKV']
    assert [b['path'] for b in broken] == ['dangling.mp4'] and 'does not resolve' in broken[0]['reason']
    assert sorted(videos_by_name(folder)) == [
        'a',
        'a.mp4',
        'alias',
        'alias.mp4',
        'b',
        'b.vob',
        'c',
        'c.3g2',
        'd',
        'd.MKV',
        'dangling',
        'dangling.mp4',
    ]


def test_convert_and_index_see_the_same_files(folder, tmp_path):
    """Every stem is asked for by the converter; the files it finds (whatever their decode verdict) are exactly
    the ones the index lists, its unreadable links included."""
    stems = ['a', 'alias', 'b', 'c', 'd', 'dangling', 'notes', '.hidden', 'e', 'far']
    records = [VideoRecord(f'id_{stem}', stem, ['a caption'], None, 'test') for stem in stems]
    out = tmp_path / 'out'
    convert_records(
        'bench',
        Annotations({'test': records}),
        folder,
        out,
        settings=ConvertSettings(),
        workers=1,
        progress=False,
    )
    with open(out / 'test' / SKIPPED_FILE, newline='', encoding='utf-8') as f:
        rows = list(csv.DictReader(f))
    converter_found = {str(Path(r['path']).relative_to(folder.absolute())) for r in rows if r['path']}
    not_found = {r['video_id'] for r in rows if not r['path']}
    current, broken = video_file_stats(folder)
    assert converter_found == set(current) | {b['path'] for b in broken}
    assert not_found == {'id_notes', 'id_.hidden', 'id_e', 'id_far'}
