"""Evaluation at scale: the test loops on the training backend, gathered across ranks exactly
as one process scores; fixed models' scores cached; bad launches refused in one line."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from conftest import KD_CONFIG, PIPELINE_TIMEOUT

from video_kd.core.checks import InvalidInputError
from video_kd.core.errors import BAD_INPUT
from video_kd.distill import score_cache
from video_kd.runs import RunLayout
from video_kd.storage import s3


def _odd_val_root(kd_data, root, count: int = 5):
    """kd_data with its first ``count`` val videos: an odd number, so that two processes'
    shares are padded (the sampler repeats a sample to even them)."""
    root.mkdir()
    (root / 'videos').symlink_to(kd_data / 'videos')
    for name in ('classes.txt', 'train_list.txt'):
        shutil.copy(kd_data / name, root / name)
    lines = (kd_data / 'val_list.txt').read_text().splitlines()[:count]
    (root / 'val_list.txt').write_text('\n'.join(lines) + '\n')
    return root


@pytest.mark.slow
def test_two_processes_score_exactly_as_one(kd_data, tiny_teacher, tmp_path):
    """5 val videos on 2 torchrun processes (gloo, CPU): rank 1's share is padded with a
    repeat of sample 0; the gathered predictions and metrics are those of one process."""
    from video_kd.backends.local import run_local
    from video_kd.distill import evaluate

    root = _odd_val_root(kd_data, tmp_path / 'data')
    one = evaluate.evaluate('tsm_r50_tiny', str(tiny_teacher), str(root), str(tmp_path / 'w1'))
    out = tmp_path / 'two.json'
    code = run_local(
        ['-m', 'video_kd.distill.evaluate', 'tsm_r50_tiny', str(tiny_teacher),
         '--data-root', str(root), '--out', str(out), '--work-dir', str(tmp_path / 'w2')],
        nproc_per_node=2,
        env={'OMP_NUM_THREADS': '1'},
    )  # fmt: skip
    assert code == 0
    two = json.loads(out.read_text())
    assert one['num_samples'] == two['num_samples'] == 5  # the padded repeat not counted
    assert [p['index'] for p in two['predictions']] == list(range(5))
    strip = [{k: v for k, v in p.items() if k != 'score'} for p in one['predictions']]
    assert [{k: v for k, v in p.items() if k != 'score'} for p in two['predictions']] == strip
    for a, b in zip(one['predictions'], two['predictions'], strict=True):
        assert a['score'] == pytest.approx(b['score'], abs=1e-5)
    for key in ('top1_acc', 'top5_acc', 'mean_class_acc', 'confusion_matrix', 'config_hash'):
        assert one[key] == two[key], key


def _dataset(layout: RunLayout, val_list_sha: str = 'a' * 64) -> dict:
    return {
        'source': 's3://data/k400',
        'num_val': 3,
        'files': {'val_list.txt': {'sha256': val_list_sha}},
        'splits': {'val': {'videos_uri': 's3://data/k400/videos_val', 'list_uri': ''}},
    }


def test_a_score_cache_entry_for_another_key_is_a_clean_miss(bucket, caplog):
    """Entries live next to the dataset; one that records another checkpoint is never used."""
    layout = RunLayout(bucket, 'kd', 'r1')
    root = score_cache.cache_root(_dataset(layout), layout)
    assert root == 's3://data/k400/eval_scores'
    root = f's3://{bucket}/k400/eval_scores'  # the same, in the test's bucket
    key = score_cache.score_key('B' * 64, 'c' * 64, 'd' * 64)
    scores = {'top1_acc': 0.5, 'predictions': [{'index': 0, 'label': 1}]}
    caplog.set_level(logging.INFO, 'video_kd')
    assert score_cache.lookup(root, key, 'teacher') is None
    assert score_cache.store(root, key, scores)
    assert not score_cache.store(root, key, {'top1_acc': 0.9})  # written once: kept
    assert score_cache.lookup(root, key, 'teacher') == scores
    assert 'teacher: score cache hit' in caplog.text

    other = score_cache.score_key('e' * 64, 'c' * 64, 'd' * 64)
    foreign = json.loads(s3.read_bytes(score_cache.entry_uri(root, key)))
    s3.put_bytes(score_cache.entry_uri(root, other), json.dumps(foreign).encode())
    caplog.clear()
    assert score_cache.lookup(root, other, 'teacher') is None
    assert 'records another key' in caplog.text and 'a miss, scoring it' in caplog.text
    s3.put_bytes(score_cache.entry_uri(root, other), b'{"format": 1, "key": ')  # torn
    assert score_cache.lookup(root, other, 'teacher') is None

    # a dataset inside the run (generate://) or on a volume: the bucket's shared cache
    generated = {**_dataset(layout), 'source': 'generate://'}
    generated['splits'] = {'val': {'videos_uri': f'{layout.root}/data/source/videos'}}
    assert score_cache.cache_root(generated, layout).startswith(
        f's3://{bucket}/kd/cache/eval_scores/'
    )


def test_a_launch_that_cannot_run_is_one_line_before_anything_is_written(bucket):
    from video_kd.steps import evaluate

    layout = RunLayout(bucket, 'kd', 'r1')
    student = {'run_root': layout.root, 's3_uri': layout.uri('student', 's.pth'), 'sha256': ''}
    data = _dataset(layout)
    with pytest.raises(InvalidInputError) as caught:
        evaluate.run(data, student, 'tsm_mobilenetv2_tiny', training_backend='local',
                     num_workers=1, nproc_per_node=4, gpus_per_worker=0)  # fmt: skip
    assert str(caught.value) == (
        '4 evaluation processes for 3 val videos: use at most 3 '
        '(eval_num_workers x eval_nproc_per_node, or GPUs per node)'
    )
    with pytest.raises(InvalidInputError, match='gpus_per_worker=1 in local mode, but this '):
        evaluate.run(data, student, 'tsm_mobilenetv2_tiny', training_backend='local',
                     num_workers=1, nproc_per_node=1, gpus_per_worker=1)  # fmt: skip
    with pytest.raises(InvalidInputError, match=r'^eval_nproc_per_node \(-1'):
        evaluate.run(data, student, 'tsm_mobilenetv2_tiny', nproc_per_node=-2)
    assert not s3.list_uris(f's3://{bucket}/kd/')  # nothing submitted, fetched or written


@pytest.mark.parametrize(
    ('kwargs', 'match'),
    [
        ({'eval_num_workers': -1}, "eval_num_workers (0: the training's) must be >= 0, got -1"),
        ({'eval_gpus_per_worker': -2}, "eval_gpus_per_worker (-1: the training's) must be >= -1"),
        ({'eval_nproc_per_node': 1.5}, 'eval_nproc_per_node (-1: the training'),
    ],
)
def test_evaluation_numbers_are_checked_with_the_inputs(kwargs, match):
    """The pipeline's check-inputs step (and video-kd submit) check the eval_* parameters."""
    from video_kd.core.errors import UserError, one_line
    from video_kd.steps import check_inputs

    with pytest.raises(UserError) as info:
        check_inputs.check_pipeline_params(kwargs)
    assert match in str(info.value) and str(info.value) == one_line(info.value)
    check_inputs.check_pipeline_params(
        {'eval_num_workers': 0, 'eval_gpus_per_worker': -1, 'eval_nproc_per_node': -1}
    )


def test_the_evaluate_command_exits_2_for_too_many_processes(bucket, tmp_path, capsys):
    """The step alone (python -m components.evaluate): one line, exit 2."""
    from components.evaluate.__main__ import main
    from video_kd.core.errors import run_cli
    from video_kd.runs import Manifest

    layout = RunLayout(bucket, 'kd', 'r2')
    data = {**_dataset(layout), 'num_val': 1, 'dataset_meta_uri': layout.dataset_meta_uri}
    meta = tmp_path / 'dataset.json'
    meta.write_text(json.dumps(data))
    ckpt = tmp_path / 'epoch_1_student.pth'
    ckpt.write_bytes(b'not read')
    manifest = Manifest.load(layout)
    manifest.publish('data', meta, layout.dataset_meta_uri)
    manifest.publish('student', ckpt, layout.uri('student', ckpt.name))
    argv = ['--run-root', layout.root, '--kd-config', 'tsm_mobilenetv2_tiny', '--no-teacher',
            '--training-backend', 'local', '--nproc-per-node', '2']  # fmt: skip
    assert run_cli(main, argv) == BAD_INPUT
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        'error: 2 evaluation processes for 1 val videos: use at most 1 '
        '(eval_num_workers x eval_nproc_per_node, or GPUs per node)'
    )


@pytest.mark.slow
@pytest.mark.timeout(PIPELINE_TIMEOUT)
def test_a_retraining_scores_only_the_student(pipeline_run, s3_env, tmp_path, caplog):
    """The pipeline's evaluation computed the teacher's and the baseline's scores (a bucket of
    its own: an empty cache) on the training backend (local torchrun), and cached them next
    to the dataset; a retraining's run on the same dataset and teacher scores only its
    student."""
    from video_kd.runs import publish, run_info
    from video_kd.steps import data_prep, evaluate
    from video_kd.steps import teacher as teacher_step
    from video_kd.steps.common import run_data_meta, run_step_output

    first = pipeline_run['metrics']
    assert (first['teacher_scored'], first['baseline_scored']) == ('computed', 'computed')
    root = pipeline_run['run_root']
    predictions = s3.read_json(RunLayout.from_root(root).uri('eval', 'predictions.json'))
    assert [p['index'] for p in predictions['student']] == list(range(first['num_val']))

    data = data_prep.run(run_data_meta(root)['source'], pipeline_run['bucket'], 'retrain',
                         workdir=tmp_path / 'prep')  # fmt: skip
    layout = RunLayout.from_root(data['run_root'])
    old_teacher, old_student = run_step_output(root, 'teacher'), run_step_output(root, 'student')
    teacher = teacher_step.run(layout.root, old_teacher['s3_uri'], old_teacher['sha256'],
                               kd_config=KD_CONFIG, num_classes=3)  # fmt: skip
    student_file = s3.download_file(old_student['s3_uri'], tmp_path / 'epoch_2_student.pth')
    student = {**run_info(layout), **publish(layout, 'student', student_file,
                                              student_file.name).meta()}  # fmt: skip
    caplog.set_level(logging.INFO, 'video_kd')
    again = evaluate.run(data, student, KD_CONFIG, teacher=teacher, training_backend='local',
                         workdir=tmp_path / 'eval')  # fmt: skip
    metrics = again['metrics']
    assert metrics['teacher_scored'] == 'cached'
    assert 'teacher: score cache hit' in caplog.text
    assert 'evaluation on local: 1 node(s) x 1 process(es)' in caplog.text  # no train.json
    assert metrics['teacher'] == first['teacher'] and metrics['student'] == first['student']
