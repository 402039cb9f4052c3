"""Annotation readers against the REAL split files (docs/reference/evaluation-protocol.md, worked case T17;
docs/reference/dataset-formats.md) and odd inputs."""

from __future__ import annotations

import json
from collections import Counter

from real_annotations import ANNOTATIONS, activitynet_json

from tempme_composer.data.annotations import (
    read_activitynet,
    read_didemo,
    read_id_list,
    read_lsmdc,
    read_msrvtt,
    read_msvd,
    read_vatex,
)
from tempme_composer.data.annotations.lsmdc import read_lsmdc_rows
from tempme_composer.data.annotations.msrvtt import read_jsfusion_rows


def test_jsfusion_test_csv():
    path = ANNOTATIONS / 'msrvtt' / 'MSRVTT_JSFUSION_test.csv'
    assert b'\r\n' in path.read_bytes()  # real file is CRLF
    rows = read_jsfusion_rows(path)
    assert len(rows) == 1000
    assert list(rows[0]) == ['key', 'vid_key', 'video_id', 'sentence']
    assert [r['key'] for r in rows] == [f'ret{i}' for i in range(1000)]
    assert len({r['video_id'] for r in rows}) == 1000
    dup = {s: c for s, c in Counter(r['sentence'] for r in rows).items() if c > 1}
    assert len(dup) == 4 and sum(dup.values()) == 9
    assert dup['a man playing video games'] == 3
    assert rows[998]['video_id'] == 'video9872' and rows[999]['video_id'] == 'video9871'
    ann = read_msrvtt(None, path)
    assert [r.video_id for r in ann['test']] == [r['video_id'] for r in rows]  # CSV row order kept
    assert all(len(r.captions) == 1 and '\r' not in r.captions[0] for r in ann['test'])
    assert ann['test'][1].captions == ['a little girl does gymnastics']
    assert ann.problems == []


def test_msrvtt_train_csvs():
    ids9 = read_id_list(ANNOTATIONS / 'msrvtt' / 'MSRVTT_train.9k.csv', header='video_id')
    ids7 = read_id_list(ANNOTATIONS / 'msrvtt' / 'MSRVTT_train.7k.csv', header='video_id')
    test = {r['video_id'] for r in read_jsfusion_rows(ANNOTATIONS / 'msrvtt' / 'MSRVTT_JSFUSION_test.csv')}
    assert len(ids9) == len(set(ids9)) == 9000
    assert len(ids7) == len(set(ids7)) == 7010
    assert set(ids7) <= set(ids9)
    assert set(ids7) == {f'video{i}' for i in range(7010)}
    assert not set(ids9) & test
    assert set(ids9) | test == {f'video{i}' for i in range(10000)}
    assert all('\r' not in i and i == i.strip() for i in ids9)


def test_lsmdc_public_test():
    path = ANNOTATIONS / 'lsmdc' / 'LSMDC16_challenge_1000_publictect.csv'
    assert b'\r\n' in path.read_bytes()
    rows = read_lsmdc_rows(path)
    assert len(rows) == 1000 and all(len(r) == 6 for r in rows)
    assert sum(r[5].startswith(' ') for r in rows) == 1
    ann = read_lsmdc(test_csv=path)
    records = ann['test']
    assert len(records) == 1000 and len({r.video_id for r in records}) == 1000
    assert records[0].video_id == '3086_UGLY_TRUTH_00.23.23.000-00.23.28.886'
    assert records[0].captions == ['SOMEONE stands below, hands on her hips.']
    assert all(c == c.strip() and '\r' not in c for r in records for c in r.captions)
    assert len({r.video_id.rsplit('_', 1)[0].split('_', 1)[0] for r in records}) == 17  # movies


def test_msvd_lists_and_reader(tmp_path):
    lists = {s: read_id_list(ANNOTATIONS / 'msvd' / f'{s}_list.txt') for s in ('train', 'val', 'test')}
    assert {k: len(v) for k, v in lists.items()} == {'train': 1200, 'val': 100, 'test': 670}
    assert not (set(lists['train']) & set(lists['test'])) and not (set(lists['val']) & set(lists['test']))
    import pickle

    pkl = tmp_path / 'raw-captions.pkl'
    some = lists['test'][:2]
    pkl.write_bytes(pickle.dumps({some[0]: [['a', 'man', 'sings'], ['someone', 'sings']], some[1]: [['a', 'dog']]}))
    ann = read_msvd(pkl, test_list=ANNOTATIONS / 'msvd' / 'test_list.txt')
    assert [r.captions for r in ann['test']] == [['a man sings', 'someone sings'], ['a dog']]
    assert Counter(p.reason for p in ann.problems) == {'no_captions': 668}


def test_activitynet_counts_and_paragraph_fields(tmp_path):
    ann = read_activitynet(
        train_json=activitynet_json('train', tmp_path), val_json=activitynet_json('val_1', tmp_path)
    )
    counts = {k: (len(v), sum(len(r.captions) for r in v)) for k, v in ann.items()}
    assert counts == {'train': (10009, 37421), 'val_1': (4917, 17505)}
    first = ann['train'][0]
    assert first.video_id == 'v_QOlSCBRmfWY' and first.path_stem == 'QOlSCBRmfWY'
    assert first.timestamps == [[0.83, 19.86], [17.37, 60.81], [56.26, 79.42]]
    assert first.captions[1] == 'The girl dances around the room while the camera captures her movements.'
    assert first.extra['duration'] == 82.73
    assert all(len(r.timestamps) == len(r.captions) for r in ann['val_1'])


def test_crlf_duplicates_empty_and_non_utf8(tmp_path):
    csv = tmp_path / 'test.csv'
    csv.write_bytes(b'key,vid_key,video_id,sentence\r\n'
                    b'ret0,msr9770,video9770,a caf\xe9 scene\r\n'  # cp1252, not UTF-8
                    b'ret1,msr9771,video9771,   \r\n'  # empty caption
                    b'ret2,msr9770,video9770,again\r\n')  # duplicate id
    ann = read_msrvtt(None, csv)
    assert [r.video_id for r in ann['test']] == ['video9770']
    assert ann['test'][0].captions == ['a caf\u00e9 scene']
    assert Counter(p.reason for p in ann.problems) == {'non_utf8': 1, 'empty_caption': 1, 'no_captions': 1,
                                                        'duplicate_id': 1}


def test_didemo_and_vatex_readers(tmp_path):
    moments = [
        {'annotation_id': 1, 'description': 'a dog runs', 'video': 'a@N01_1_x.3gp', 'times': [[0, 0], [0, 1]]},
        {'annotation_id': 2, 'description': ' the dog stops ', 'video': 'a@N01_1_x.3gp', 'times': [[2, 2]]},
        {'annotation_id': 3, 'description': 'unlisted', 'video': 'b.mp4', 'times': [[0, 0]]},
    ]
    (tmp_path / 'test_data.json').write_text(json.dumps(moments))
    (tmp_path / 'test_list.txt').write_text('a@N01_1_x.3gp\r\n')
    ann = read_didemo(test_json=tmp_path / 'test_data.json', test_list=tmp_path / 'test_list.txt')
    (record,) = ann['test']
    assert record.captions == ['a dog runs', 'the dog stops']
    assert record.timestamps == [[0.0, 7.5], [10.0, 15.0]]
    (tmp_path / 'ref.json').write_text(json.dumps({'abc_000001_000011': ['one', 'two', '']}))
    (tmp_path / 'test_list.txt').write_text('abc_000001_000011\nabc_000001_000011\n')
    ann = read_vatex(tmp_path / 'ref.json', test_list=tmp_path / 'test_list.txt')
    assert [r.captions for r in ann['test']] == [['one', 'two']]
    assert Counter(p.reason for p in ann.problems) == {'empty_caption': 2, 'duplicate_id': 1}  # per listing
