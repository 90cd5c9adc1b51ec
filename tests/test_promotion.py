"""The promotion gate (video_kd.deploy.promotion, video_kd.steps.promote) on the real local
S3 server: the first run promotes, only a better student replaces the current one, two runs
finishing together never both win, a corrupt / foreign / other-class current.json is one
line and no promotion unless forced, and nothing of the history is lost.

The runs are written as the evaluate and export steps leave them (metrics.json with the
current student's scores, export.json, the model card); the scoring itself runs in the
session's pipeline run (tests/test_pipeline.py)."""

from __future__ import annotations

import hashlib
import json
import threading

import pytest

from video_kd import runs
from video_kd.core.errors import UserError
from video_kd.deploy import promotion
from video_kd.runs import RunLayout
from video_kd.steps import evaluate as evaluate_step
from video_kd.steps import promote
from video_kd.storage import s3

KD_CONFIG = 'kd_logits_tsm-res50_tsm-mobilenetv2_tiny'
MODEL = promotion.default_model_name(KD_CONFIG)
CLASSES = ['a', 'b', 'c']


def _put_json(uri: str, value) -> None:
    s3.put_bytes(uri, json.dumps(value).encode(), 'application/json')


def _run(bucket: str, run_id: str, top1: float, classes=CLASSES, parity_ok: bool = True) -> dict:
    """A run whose evaluate and export steps are done; returns its student record."""
    layout = RunLayout(bucket, 'kd', run_id)
    runs.claim_run(layout)
    student_uri = layout.uri('student', 'student.pth')
    body = f'weights of {run_id}'.encode()
    s3.put_bytes(student_uri, body)
    val = {'s3_uri': layout.uri('data', 'val_list.txt'), 'sha256': 'a' * 64, 'size_bytes': 1}
    _put_json(layout.dataset_meta_uri, {'files': {'val_list.txt': val}, 'classes': classes})
    _put_json(layout.uri('eval', 'metrics.json'), {
        'run_id': run_id, 'num_val': 6, 'classes': classes,
        'student': {'top1_acc': top1, 'top5_acc': 1.0, 'mean_class_acc': top1},
    })  # fmt: skip
    _put_json(layout.uri('export', 'export.json'), {
        'onnx': {'s3_uri': layout.uri('export', 'student.onnx'), 'sha256': 'b' * 64},
        'parity': {'max_abs_logit_diff': 1e-5 if parity_ok else 0.5,
                   'top1_acc_onnx': top1, 'top1_acc_pytorch': top1},
        'settings': {'export_tolerance': 1e-3},
    })  # fmt: skip
    s3.put_bytes(layout.uri('export', 'model_card.md'), b'# Model card\n')
    return {'run_root': layout.root, 's3_uri': student_uri,
            'sha256': hashlib.sha256(body).hexdigest(), 'kd_config': KD_CONFIG}  # fmt: skip


def _evaluated(student: dict, current_top1: float | None = None, model: str = MODEL) -> None:
    """What the evaluate step adds to metrics.json: the current student as it found it,
    with its score on this run's val set (``current_top1``) when it was compared."""
    layout = RunLayout.from_root(student['run_root'])
    place = promotion.ModelPlace(layout.bucket, layout.prefix, model)
    state = promotion.read_current(place)
    metrics = s3.read_json(layout.uri('eval', 'metrics.json'))
    metrics['current_student'] = {
        'model_name': model, 'uri': place.current_uri, 'etag': state.etag,
        'run_id': state.record['run_id'] if state.record else '',
        'problem': promotion.comparable(state, metrics['classes']),
    }  # fmt: skip
    if current_top1 is not None:
        metrics['current'] = {'top1_acc': current_top1, 'top5_acc': 1.0,
                              'mean_class_acc': current_top1}  # fmt: skip
    s3.put_bytes(layout.uri('eval', 'metrics.json'), json.dumps(metrics).encode())


def _place(bucket: str) -> promotion.ModelPlace:
    return promotion.ModelPlace(bucket, 'kd', MODEL)


def _current(bucket: str) -> dict:
    return s3.read_json(_place(bucket).current_uri)


def _decisions(bucket: str) -> list[dict]:
    return [
        s3.read_json(uri)
        for uri in promotion.history(_place(bucket))
        if not uri.endswith('.replaced.json')
    ]


def test_the_model_name_defaults_to_the_kd_configs_student():
    assert MODEL == 'tsm-mobilenetv2_tiny'
    assert promotion.default_model_name('kd_logits_tsn-swin_tsn-r50_8xb16_k400') == (
        'tsn-r50_8xb16_k400'
    )
    assert promotion.resolve_model_name('my-model', KD_CONFIG) == 'my-model'
    for bad in ('Bad', '-x', 'a/b', 'x' * 64):
        with pytest.raises(UserError, match='bad model name'):
            promotion.check_model_name(bad)
    with pytest.raises(UserError, match='promote_min_gain'):
        promotion.check_min_gain(float('nan'))


def test_the_first_run_promotes_then_only_a_better_student(bucket):
    first = _run(bucket, 'run-1', 0.50)
    _evaluated(first)
    result = promote.run(first, KD_CONFIG, min_gain_points=1.0)
    assert result['decision']['promoted'], result['decision']['reasons']
    assert 'the first run promotes' in result['markdown']
    assert result['kfp_metrics'] == {  # nothing compared: no NaN, which KFP cannot store
        'promoted': 1.0, 'eligible': 1.0, 'new_top1_acc': 0.5, 'min_gain_points': 1.0,
    }  # fmt: skip
    current = _current(bucket)
    assert current['run_id'] == 'run-1' and current['student']['sha256'] == first['sha256']
    assert current['classes_sha256'] == promotion.classes_sha256(CLASSES)
    assert current['metrics']['top1_acc'] == 0.50
    assert (
        '## Promotion: **promoted**'
        in s3.read_bytes(
            RunLayout.from_root(first['run_root']).uri('promote', 'model_card.md')
        ).decode()
    )

    worse = _run(bucket, 'run-2', 0.505)  # +0.5 points on the same val set: below the +1
    _evaluated(worse, current_top1=0.50)
    result = promote.run(worse, KD_CONFIG, min_gain_points=1.0)
    assert not result['decision']['promoted']
    assert 'does not beat the required +1' in result['markdown']
    assert result['kfp_metrics']['gain_points'] == pytest.approx(0.5)
    assert _current(bucket)['run_id'] == 'run-1'

    better = _run(bucket, 'run-3', 0.70)
    _evaluated(better, current_top1=0.45)  # the current one, rescored on run-3's val set
    assert not promote.run(better, KD_CONFIG, min_gain_points=1.0, promote=False)['decision'][
        'promoted'
    ]  # promote=false: reported only...
    assert _current(bucket)['run_id'] == 'run-1'
    again = promote.run(better, KD_CONFIG, min_gain_points=1.0)  # ...and recorded: a retry
    assert not again['decision']['promoted']  # returns that decision, never decides twice

    best = _run(bucket, 'run-4', 0.70)
    _evaluated(best, current_top1=0.45)
    assert promote.run(best, KD_CONFIG, min_gain_points=1.0)['decision']['promoted']
    assert _current(bucket)['run_id'] == 'run-4'
    decisions = _decisions(bucket)
    assert sorted((d['run_id'], d['promoted']) for d in decisions) == [
        ('run-1', True), ('run-2', False), ('run-3', False), ('run-4', True),
    ]  # fmt: skip
    replaced = [u for u in promotion.history(_place(bucket)) if u.endswith('.replaced.json')]
    assert [s3.read_json(u)['run_id'] for u in replaced] == ['run-1']  # kept byte for byte


def test_a_failed_export_check_is_never_promoted_even_forced(bucket):
    student = _run(bucket, 'run-bad-onnx', 0.9, parity_ok=False)
    _evaluated(student)
    result = promote.run(student, KD_CONFIG, force=True)
    assert not result['decision']['promoted']
    assert any('export check failed' in r for r in result['decision']['reasons'])
    assert not s3.exists(_place(bucket).current_uri)


@pytest.fixture
def serial_bucket(serial_s3, monkeypatch) -> str:
    """A bucket on the session's moto server that serves one request at a time: moto's
    threaded server checks a condition and writes without a lock (tests/s3_servers.py);
    AWS S3 and MinIO, like the serial moto, evaluate it atomically."""
    for name, value in serial_s3.env().items():
        monkeypatch.setenv(name, value)
    return serial_s3.create_bucket('race-promotion')


def test_two_runs_finishing_together_never_both_win(serial_bucket, monkeypatch):
    """Two promoters evaluated against the same current student commit at the same moment
    (a barrier in front of the compare-and-swap): exactly one wins, both decisions stay."""
    bucket = serial_bucket
    students = [_run(bucket, f'run-{name}', 0.6) for name in ('x', 'y')]
    for student in students:
        _evaluated(student)  # both found no current student: both would be the first
    barrier = threading.Barrier(2, timeout=20)
    real_commit = promotion.commit

    def commit_together(*args, **kwargs):
        barrier.wait()
        return real_commit(*args, **kwargs)

    monkeypatch.setattr(promotion, 'commit', commit_together)
    results: dict[str, dict] = {}

    def promote_one(student):
        results[student['run_root']] = promote.run(student, KD_CONFIG)

    threads = [threading.Thread(target=promote_one, args=(s,)) for s in students]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    monkeypatch.setattr(promotion, 'commit', real_commit)
    assert len(results) == 2
    won = [r for r in results.values() if r['decision']['promoted']]
    assert len(won) == 1
    lost = next(r for r in results.values() if not r['decision']['promoted'])
    assert 'changed since this run evaluated it' in lost['markdown']
    assert _current(bucket)['run_id'] == won[0]['run_id']
    assert sorted(d['run_id'] for d in _decisions(bucket)) == ['run-x', 'run-y']

    # a run evaluated against the old (absent) current student cannot replace the new one
    late = _run(bucket, 'run-late', 0.99)
    layout = RunLayout.from_root(late['run_root'])
    metrics = s3.read_json(layout.uri('eval', 'metrics.json'))
    metrics['current_student'] = {'model_name': MODEL, 'uri': _place(bucket).current_uri,
                                  'etag': None, 'run_id': '', 'problem': ''}  # fmt: skip
    s3.put_bytes(layout.uri('eval', 'metrics.json'), json.dumps(metrics).encode())
    assert not promote.run(late, KD_CONFIG)['decision']['promoted']
    assert _current(bucket)['run_id'] == won[0]['run_id']


@pytest.mark.parametrize(
    'body, why',
    [
        (b'{"schema": "video-kd/current-student/v1", "run_id": ', 'not JSON'),
        (b'{"hello": "world"}', 'not a current-student record'),
    ],
)
def test_a_corrupt_current_json_is_one_line_and_promotes_only_forced(bucket, body, why):
    place = _place(bucket)
    s3.put_bytes(place.current_uri, body)
    state = promotion.read_current(place)
    assert why in state.problem and '\n' not in state.problem
    student = _run(bucket, 'run-1', 0.9)
    _evaluated(student)
    result = promote.run(student, KD_CONFIG)
    assert not result['decision']['promoted'] and why in result['markdown']
    assert s3.read_bytes(place.current_uri) == body  # untouched

    forced = _run(bucket, 'run-2', 0.9)
    _evaluated(forced)
    result = promote.run(forced, KD_CONFIG, force=True)
    assert result['decision']['promoted'], result['decision']['reasons']
    assert _current(bucket)['run_id'] == 'run-2'
    (replaced,) = [u for u in promotion.history(place) if u.endswith('.replaced.json')]
    assert s3.read_bytes(replaced) == body  # the corrupt record is kept, byte for byte


def test_a_foreign_current_json_is_refused(bucket):
    place = _place(bucket)
    first = _run(bucket, 'run-1', 0.5)
    _evaluated(first)
    promote.run(first, KD_CONFIG)
    record = _current(bucket)
    state = promotion.read_current(place)
    assert state.record == record and not state.problem
    other = promotion.ModelPlace(bucket, 'kd', 'other-model')
    s3.put_bytes(other.current_uri, json.dumps(record).encode())  # copied from another model
    assert "names model 'tsm-mobilenetv2_tiny', not 'other-model'" in (
        promotion.read_current(other).problem
    )
    broken = {**record, 'student': {**record['student'], 'sha256': 'xyz'}}
    s3.put_bytes(other.current_uri, json.dumps({**broken, 'model_name': 'other-model'}).encode())
    assert "'student' has no valid sha256" in promotion.read_current(other).problem


def test_the_evaluation_compares_only_a_current_student_it_can_score(bucket, tmp_path):
    """Another class list, or a student whose bytes are not the recorded ones: not scored
    (not in the evaluation's plan), one line saying why; a comparable one is planned with
    the others, on the training backend (no training or test loop is reached here)."""
    first = _run(bucket, 'run-1', 0.5)
    _evaluated(first)
    promote.run(first, KD_CONFIG)
    layout = RunLayout(bucket, 'kd', 'run-2')
    found, planned = evaluate_step._current_student(
        tmp_path, layout, {'classes': ['a', 'b', 'c', 'd']}, KD_CONFIG, '', 'attempt-1'
    )
    assert found and 'another class list (3 classes' in found['problem'] and planned is None
    # one it can score: one more model of the evaluation's plan, with its run's KD config
    found, planned = evaluate_step._current_student(
        tmp_path, layout, {'classes': CLASSES}, KD_CONFIG, '', 'attempt-1'
    )
    assert found and found['problem'] == '' and found['run_id'] == 'run-1'
    assert planned == {
        'name': 'current', 'config': KD_CONFIG, 'teacher_of': '',
        'checkpoint_uri': first['s3_uri'], 'sha256': first['sha256'],
        'scores_uri': layout.uri('eval', 'attempt-1', 'current_scores.json'),
    }  # fmt: skip
    student = _run(bucket, 'run-2', 0.6, classes=['x', 'y', 'z'])
    _evaluated(student)
    result = promote.run(student, KD_CONFIG)
    assert not result['decision']['promoted'] and 'another class list' in result['markdown']

    s3.put_bytes(first['s3_uri'], b'replaced weights')  # the current student's .pth changed
    found, planned = evaluate_step._current_student(
        tmp_path, layout, {'classes': CLASSES}, KD_CONFIG, '', 'attempt-2'
    )
    assert found and 'cannot be read' in found['problem'] and planned is None
    assert found['etag'] and found['run_id'] == 'run-1'
    assert evaluate_step._current_student(tmp_path, layout, {}, KD_CONFIG, None, 'a') == (
        None,
        None,
    )
