"""video-kd CLI: help, typed --param, KFP cron, and the exact invocations of the Helm hook."""

from __future__ import annotations

import subprocess
import sys

import pytest

from video_kd import cli
from video_kd.errors import UserError


def test_help_explains_every_command():
    result = subprocess.run(
        [sys.executable, '-m', 'video_kd.cli', '--help'], capture_output=True, text=True
    )
    assert result.returncode == 0
    for command in ('compile', 'run-local', 'upload', 'submit', 'schedule', 'configs'):
        assert command in result.stdout
    assert 'AWS_ACCESS_KEY_ID' in result.stdout and 'python -m components.' in result.stdout
    for command in ('run-local', 'schedule'):
        sub = subprocess.run(
            [sys.executable, '-m', 'video_kd.cli', command, '--help'],
            capture_output=True,
            text=True,
        )
        assert sub.returncode == 0 and 'usage: video-kd ' + command in sub.stdout


def test_compile_writes_the_committed_pipeline(tmp_path):
    out = tmp_path / 'p.yaml'
    assert cli.main(['compile', '--output', str(out)]) == 0
    assert out.read_text() == cli.pipeline_file().read_text()


def test_params_are_typed_by_the_compiled_pipeline():
    params = cli.parse_params(
        ['num_workers=4', 'gpus_per_worker=0', 's3_prefix=a/b', 'teacher_url=https://x/y.pth?a=b']
    )
    assert params == {
        'num_workers': 4,
        'gpus_per_worker': 0,
        's3_prefix': 'a/b',
        'teacher_url': 'https://x/y.pth?a=b',
    }
    with pytest.raises(UserError, match='not a parameter of the pipeline'):
        cli.parse_params(['aws_secret_access_key=x'])
    with pytest.raises(UserError, match='expected number_integer'):
        cli.parse_params(['num_workers=two'])
    with pytest.raises(UserError, match='expected key=value'):
        cli.parse_params(['num_workers'])


@pytest.mark.parametrize('cron', ['0 0 3 * * *', '0 30 2 * * 1', '@daily', '@every 24h'])
def test_kfp_cron_forms(cron):
    assert cli.check_cron(cron) == cron


def test_five_field_cron_is_refused_in_one_line(capsys):
    code = cli.main(
        [
            'schedule',
            '--host',
            'http://127.0.0.1:9',
            '--pipeline-name',
            'p',
            '--cron',
            '0 3 * * *',
            '--experiment',
            'e',
        ]
    )
    assert code == 2
    assert capsys.readouterr().err.startswith("error: --cron '0 3 * * *': KFP needs six fields")


def test_the_helm_hook_invocations_parse():
    """Exactly what charts/video-kd/templates/pipeline-upload-job.yaml runs."""
    parser = cli.build_parser()
    up = parser.parse_args(
        [
            'upload',
            '--host',
            'http://kfp:8888',
            '--pipeline-name',
            'video-kd-distillation',
            '--version',
            'v7',
        ]
    )
    assert up.func is cli.cmd_upload and up.version == 'v7'
    sched = parser.parse_args(
        [
            'schedule',
            '--host',
            'http://kfp:8888',
            '--pipeline-name',
            'video-kd-distillation',
            '--cron',
            '0 30 2 * * 1',
            '--experiment',
            'nightly-kd',
            '--param',
            'image=ghcr.io/kubeflow-video-kd/video-kd:0.1.0-cuda',
            '--param',
            's3_bucket=kd-artifacts',
            '--param',
            's3_prefix=runs/kd',
            '--param',
            'num_workers=4',
            '--param',
            'gpus_per_worker=2',
            '--param',
            'dataset_uri=s3://kd-artifacts/data/ucf101-mini',
            '--param',
            'teacher_sha256=ab12',
            '--service-account',
            'video-kd',
        ]
    )
    assert sched.func is cli.cmd_schedule and sched.service_account == 'video-kd'
    assert cli.parse_params(sched.param)['num_workers'] == 4


def test_unreachable_kfp_host_is_one_line(capsys):
    code = cli.main(['upload', '--host', 'http://127.0.0.1:9', '--pipeline-name', 'p'])
    assert code != 0
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1


def test_configs_lists_the_shipped_configs(capsys):
    assert cli.main(['configs']) == 0
    out = capsys.readouterr().out.split()
    assert 'kd_logits_tsm-res50_tsm-mobilenetv2_tiny' in out


def test_run_local_takes_the_training_options_as_train_options_defines_them(capsys):
    """run-local's training flags are TrainOptions' own (one definition, one help)."""
    import dataclasses

    from video_kd.train_config import TrainOptions

    args = cli.build_parser().parse_args(
        ['run-local', '--teacher-logit-cache', '--teacher-precision', 'bf16']
    )
    passed = {name: getattr(args, name) for name in cli.RUN_LOCAL_TRAIN_OPTIONS}
    assert passed == {'teacher_precision': 'bf16', 'teacher_logit_cache': True}
    assert set(passed) <= {field.name for field in dataclasses.fields(TrainOptions)}
    defaults = cli.build_parser().parse_args(['run-local'])
    assert (defaults.teacher_precision, defaults.teacher_logit_cache) == ('', False)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(['run-local', '--teacher-precision', 'int8'])
    assert "invalid choice: 'int8'" in capsys.readouterr().err
