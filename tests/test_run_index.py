"""`video-kd runs` (video_kd.deploy.run_index) on generated run directories in the local
S3 server: what each command prints, and one line (exit status 2) for what is not there."""

from __future__ import annotations

import json

import pytest
import run_records

from video_kd import cli
from video_kd.deploy import promotion


@pytest.fixture
def runs_bucket(bucket) -> str:
    run_records.generate(bucket, 'kd', 20)
    return bucket


def _runs(capsys, bucket, *argv) -> tuple[int, str, str]:
    status = cli.main(['runs', '--s3-bucket', bucket, '--s3-prefix', 'kd', *argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_list_shows_every_run_newest_first(runs_bucket, capsys):
    status, out, _ = _runs(capsys, runs_bucket, 'list')
    assert status == 0
    header, *lines = out.strip().splitlines()
    assert header.split() == ['run', 'date', 'status', 'teacher', 'student', 'top-1', 'KD',
                              'gain', 'speedup', 'promoted']  # fmt: skip
    ids = [line.split()[0] for line in lines]
    assert ids == sorted((run_records.run_id(i) for i in range(20)), reverse=True)
    by_id = {line.split()[0]: line.split() for line in lines}
    for index in range(20):
        fields = by_id[run_records.run_id(index)]
        written = run_records.records(index)
        assert fields[1:3] == ['2026-12-01', '00:00']  # the run id's UTC time
        metrics = written.get('eval/metrics.json')
        if not metrics:
            assert fields[3:] == ['incomplete', '-', '-', '-', '-', '-']
            continue
        assert fields[4] == run_records.TEACHER
        assert fields[5] == f'{100 * metrics["student"]["top1_acc"]:.1f}%'
        assert fields[6] == f'{100 * metrics["kd_gain"]["top1_acc"]:+.1f}'
        exported = written.get('export/export.json')
        if not exported:
            assert fields[3] == 'evaluated' and fields[7:] == ['-', '-']
            continue
        speedup = exported['kfp_metrics']['speedup_onnxruntime_latency_b1']
        assert fields[7] == f'{speedup:.1f}x'  # ONNX Runtime's, not PyTorch's
        promoted = written['promote/decision.json']['decision']['promoted']
        assert fields[3] == 'finished' and fields[8] == ('yes' if promoted else 'no')


def test_show_and_compare(runs_bucket, capsys):
    a, b = run_records.run_id(0), run_records.run_id(1)
    status, out, _ = _runs(capsys, runs_bucket, 'show', a)
    assert status == 0
    assert f'{a}/ (20 objects)' in out and 'teacher        top1_acc 0.9000' in out
    assert 'speedup_onnxruntime_latency_b1' in out
    status, out, _ = _runs(capsys, runs_bucket, 'compare', a, b)
    assert status == 0
    student = {
        i: run_records.records(i)['eval/metrics.json']['student']['top1_acc'] for i in (0, 1)
    }
    row = next(line for line in out.splitlines() if line.startswith('student top1_acc'))
    assert row.split()[-1] == f'{100 * (student[1] - student[0]):+.1f}'
    status, _, err = _runs(capsys, runs_bucket, 'show', 'no-such-run')
    assert status == 2 and err.strip().count('\n') == 0 and "no run 'no-such-run'" in err


def test_current_names_the_models_current_student(bucket, capsys):
    place = promotion.ModelPlace(bucket, 'kd', 'tiny')
    record = {
        'schema': promotion.SCHEMA, 'model_name': 'tiny', 'run_id': 'run-7',
        'run_root': f's3://{bucket}/kd/run-7', 'promoted_at': '20261206T000000Z',
        'kd_config': 'kd', 'student': {'s3_uri': f's3://{bucket}/kd/run-7/s.pth', 'sha256': 'a' * 64},
        'onnx': {'s3_uri': f's3://{bucket}/kd/run-7/s.onnx', 'sha256': 'b' * 64},
        'metrics': {'top1_acc': 0.625, 'top5_acc': 1.0, 'mean_class_acc': 0.6},
        'val_list_sha256': 'c' * 64, 'num_val': 40, 'classes_sha256': 'd' * 64, 'num_classes': 3,
    }  # fmt: skip
    from video_kd.storage import s3

    s3.put_bytes(place.current_uri, json.dumps(record).encode())
    status, out, _ = _runs(capsys, bucket, 'current', 'tiny')
    assert status == 0 and 'run-7' in out and '62.5% on 40 val videos' in out
    status, _, err = _runs(capsys, bucket, 'current', 'other')
    assert status == 2 and err.strip().count('\n') == 0
    assert "no model 'other'" in err and 'known: tiny' in err
