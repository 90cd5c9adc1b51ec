"""video-kd CLI: help, typed --param, KFP cron, and the exact invocations of the Helm hook."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from video_kd import cli
from video_kd.core.errors import UserError


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


def test_runs_and_help_import_nothing_that_training_needs():
    """`video-kd runs ...` and `--help` build the whole parser: it imports none of torch,
    OpenMMLab, KFP or boto3 (a new `runs list` process spent most of its time importing them,
    benchmarks/runs_list.py); `runs` imports boto3 in the command itself."""
    result = subprocess.run(
        [sys.executable, '-X', 'importtime', '-m', 'video_kd.cli', 'runs', '--help'],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and 'usage: video-kd runs' in result.stdout
    imported = {
        line.rpartition('|')[2].strip().split('.')[0]
        for line in result.stderr.splitlines()
        if line.startswith('import time:')
    }
    assert 'video_kd' in imported
    heavy = {'torch', 'mmengine', 'mmaction', 'mmrazor', 'mmcv', 'kfp', 'kubernetes', 'decord'}
    assert imported & (heavy | {'boto3', 'botocore'}) == set()


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
            '--param',
            'num_workers=4',
            '--param',
            'image=ghcr.io/kubeflow-video-kd/video-kd:0.1.0-cuda',
        ]
    )
    assert up.func is cli.cmd_upload and up.version == 'v7'
    assert cli.parse_params(up.param) == {
        'num_workers': 4,
        'image': 'ghcr.io/kubeflow-video-kd/video-kd:0.1.0-cuda',
    }
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


# --- upload / schedule against a KFP API (tests/kfp_server.py) ------------------------------

ALL_RIGHTS = {
    (verb, resource, 'team-a')
    for resource in ('pipelines', 'experiments', 'jobs')
    for verb in ('create', 'list', 'delete')
} | {('get', 'pipelines', 'team-a')}  # schedule/submit read the uploaded version's defaults


def upload(host: str, *extra: str) -> int:
    package = str(cli.pipeline_file())  # the committed IR: nothing to compile
    return cli.main(['upload', '--host', host, '--package', package, '--version', 'v1', *extra])


TEACHER = [
    '--param',
    'teacher_url=https://zoo.example/teacher.pth',
    '--param',
    'teacher_sha256=' + 'ab' * 32,
]


def schedule(host: str, *extra: str) -> int:
    args = ['schedule', '--host', host, '--cron', '@daily', '--experiment', 'nightly']
    return cli.main([*args, *TEACHER, *extra])  # a --param in extra overrides TEACHER's


def test_upload_with_a_namespace_makes_and_finds_a_namespaced_pipeline(capsys):
    from kfp_server import FakeKFP

    with FakeKFP(multi_user=True) as kfp:
        kfp.grants = ALL_RIGHTS
        assert upload(kfp.url, '--namespace', 'team-a') == 0
        (pipeline,) = kfp.pipelines.values()
        assert pipeline['namespace'] == 'team-a'
        # the next upload finds it in its namespace: a new version, not a second pipeline
        assert upload(kfp.url, '--namespace', 'team-a') == 0
        assert len(kfp.pipelines) == 1 and len(kfp.versions[pipeline['pipeline_id']]) == 2
        assert schedule(kfp.url, '--namespace', 'team-a') == 0
        (run,) = kfp.recurring_runs.values()
        assert run['pipeline_version_reference']['pipeline_id'] == pipeline['pipeline_id']
    out = capsys.readouterr().out
    assert 'uploaded pipeline video-kd-distillation (namespace team-a, id ' in out
    assert 'uploaded version v1 of pipeline video-kd-distillation' in out


def test_without_a_namespace_the_pipeline_is_shared_and_schedule_finds_it():
    from kfp_server import FakeKFP

    with FakeKFP(multi_user=True) as kfp:
        kfp.grants = ALL_RIGHTS
        assert upload(kfp.url) == 0
        (pipeline,) = kfp.pipelines.values()
        assert pipeline['namespace'] == '', 'shared: uploads of those are not authorized'
        assert schedule(kfp.url, '--namespace', 'team-a') == 0  # the namespace has none
        (run,) = kfp.recurring_runs.values()
        assert run['pipeline_version_reference']['pipeline_id'] == pipeline['pipeline_id']


def test_upload_params_become_the_uploaded_pipelines_defaults(capsys):
    """`upload --param k=v` (typed and checked as for submit/schedule) compiles the pipeline
    with those defaults: what a run started from the KFP UI gets."""
    import yaml
    from kfp_server import FakeKFP

    with FakeKFP(multi_user=False) as kfp:
        argv = [
            'upload',
            '--host',
            kfp.url,
            '--param',
            'num_workers=4',
            '--param',
            'image=reg/kd:1',
        ]
        assert cli.main([*argv, '--param', 's3_prefix=team/kd']) == 0
        (ir,) = kfp.uploads
    params = next(yaml.safe_load_all(ir))['root']['inputDefinitions']['parameters']
    assert params['num_workers'] == {**params['num_workers'], 'defaultValue': 4}
    assert params['num_workers']['parameterType'] == 'NUMBER_INTEGER'
    assert params['image']['defaultValue'] == 'reg/kd:1'
    assert params['s3_prefix']['defaultValue'] == 'team/kd'
    committed = cli.pipeline_parameters()
    assert params['gpus_per_worker']['defaultValue'] == committed['gpus_per_worker']['default']


@pytest.mark.parametrize(
    'extra, message',
    [
        (['--param', 'num_workers=two'], 'error: --param num_workers=two: expected number_integer'),
        (['--param', 'aws_secret_access_key=x'], 'error: --param aws_secret_access_key: not a'),
        (
            ['--param', 'num_workers=2', '--package', 'pipelines/kd_pipeline.yaml'],
            'error: --package uploads that file as it is',
        ),
    ],
)
def test_bad_upload_params_are_one_line_before_any_call(extra, message, capsys):
    assert cli.main(['upload', '--host', 'http://127.0.0.1:9', *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count('\n') == 1


def test_a_kfp_refusal_is_one_line(capsys):
    from kfp_server import FakeKFP

    with FakeKFP(multi_user=True) as kfp:  # no rights at all
        assert upload(kfp.url, '--namespace', 'team-a') == 2
    err = capsys.readouterr().err
    assert err.startswith(f'error: KFP API at {kfp.url}: HTTP 403') and err.count('\n') == 1


def test_submit_runs_the_uploaded_version_with_the_defaults_stored_there(capsys):
    """`upload --param` stores the run settings in the uploaded pipeline; `submit` runs that
    version (latest, or --version), so those settings apply without being given again."""
    from kfp_server import FakeKFP

    with FakeKFP(multi_user=True) as kfp:
        kfp.grants = ALL_RIGHTS | {
            (v, r, 'team-a') for v in ('get', 'create') for r in ('pipelines', 'runs')
        }
        argv = ['upload', '--host', kfp.url, '--namespace', 'team-a', '--version', 'v1']
        assert cli.main([*argv, *TEACHER, '--param', 'num_workers=4']) == 0
        assert cli.main([*argv[:-1], 'v2', *TEACHER, '--param', 'num_workers=6']) == 0
        submit = ['submit', '--host', kfp.url, '--namespace', 'team-a', '--wait', '30']
        assert cli.main([*submit, '--param', 'dataset_uri=s3://data/k400']) == 0
        # the first upload's version is named after the pipeline, as KFP names it
        first_version = ['--version', 'video-kd-distillation', '--run-name', 'again']
        assert cli.main([*submit, *first_version]) == 0
        latest, first = kfp.runs.values()
        (pipeline,) = kfp.pipelines.values()
        v2, v1 = kfp.versions[pipeline['pipeline_id']]
        assert (
            latest['pipeline_version_reference']['pipeline_version_id'] == v2['pipeline_version_id']
        )
        assert latest['resolved_parameters']['num_workers'] == 6  # stored by the upload
        assert latest['resolved_parameters']['teacher_sha256'] == 'ab' * 32
        assert latest['resolved_parameters']['dataset_uri'] == 's3://data/k400'
        assert (
            first['pipeline_version_reference']['pipeline_version_id'] == v1['pipeline_version_id']
        )
        assert first['resolved_parameters']['num_workers'] == 4 and first['display_name'] == 'again'
        assert ('create', 'runs', 'team-a') in kfp.checks
    out = capsys.readouterr().out
    assert 'of pipeline video-kd-distillation version v2 to' in out and ': SUCCEEDED' in out


def test_submit_checks_parameters_against_the_uploaded_version_before_a_run(capsys):
    from kfp_server import FakeKFP

    with FakeKFP(multi_user=False) as kfp:
        assert cli.main(['submit', '--host', kfp.url]) == 2
        one_error_line(capsys.readouterr().err, "pipeline 'video-kd-distillation' is not in")
        assert upload(kfp.url) == 0  # the committed IR: no teacher pinned
        capsys.readouterr()
        assert cli.main(['submit', '--host', kfp.url, '--version', 'v9']) == 2
        one_error_line(capsys.readouterr().err, "has no version named 'v9'")
        assert cli.main(['submit', '--host', kfp.url]) == 2  # no teacher pinned in the upload
        one_error_line(capsys.readouterr().err, 'error: teacher_url is empty')
        argv = ['submit', '--host', kfp.url, *TEACHER, '--param', 'num_workers=0']
        assert cli.main(argv) == 2
        one_error_line(capsys.readouterr().err, 'error: num_workers must be >= 1, got 0')
        assert not kfp.runs and not kfp.experiments


def test_compile_takes_the_cluster_settings_upload_takes(tmp_path):
    import yaml

    out = tmp_path / 'kd.yaml'
    argv = ['compile', '--output', str(out), '--param', 'num_workers=3', '--pvc', 'k400-cache']
    assert cli.main(argv) == 0
    pipeline_spec, platform_spec = yaml.safe_load_all(out.read_text())
    assert (
        pipeline_spec['root']['inputDefinitions']['parameters']['num_workers']['defaultValue'] == 3
    )
    assert 'k400-cache' in json.dumps(platform_spec)


# --- every parameter checked before anything is submitted or written -----------------------

BAD_RUN_PARAMS = [
    ('export_tolerance=-1', 'error: export_tolerance (--tolerance) must be >= 0, got -1'),
    (
        'cfg_options=["optim_wrapper.optimizer.lrr=0.1"]',
        "did you mean 'optim_wrapper.optimizer.lr'?",
    ),
    ('teacher_sha256=' + 'g' * 64, "error: teacher_sha256 'gggg"),
    ('num_workers=0', 'error: num_workers must be >= 1, got 0'),
]


def one_error_line(err: str, match: str) -> None:
    assert err.count('\n') == 1 and err.startswith('error: '), err
    assert match in err, err


@pytest.mark.parametrize(('param', 'match'), BAD_RUN_PARAMS)
def test_submit_checks_every_parameter_before_it_contacts_kfp(capsys, param, match):
    """The host does not answer: had the check passed, the line would say so."""
    package = str(cli.pipeline_file())  # a compiled file: checked before any call
    argv = ['submit', '--host', 'http://127.0.0.1:9', '--package', package, *TEACHER]
    assert cli.main([*argv, '--param', param]) == 2
    one_error_line(capsys.readouterr().err, match)


@pytest.mark.parametrize(('param', 'match'), BAD_RUN_PARAMS)
def test_schedule_checks_every_parameter_before_it_creates_anything(capsys, param, match):
    from kfp_server import FakeKFP

    with FakeKFP(multi_user=True) as kfp:
        kfp.grants = ALL_RIGHTS
        assert upload(kfp.url, '--namespace', 'team-a') == 0
        capsys.readouterr()
        assert schedule(kfp.url, '--namespace', 'team-a', '--param', param) == 2
        assert not kfp.recurring_runs and not kfp.experiments
    one_error_line(capsys.readouterr().err, match)


def test_submit_and_schedule_refuse_a_run_without_a_teacher(capsys):
    package = str(cli.pipeline_file())  # the uploaded version's case: test_submit_checks_...
    assert cli.main(['submit', '--host', 'http://127.0.0.1:9', '--package', package]) == 2
    one_error_line(capsys.readouterr().err, 'error: teacher_url is empty')


@pytest.mark.parametrize(
    ('argv', 'match'),
    [
        (['--epochs', '-1'], "error: max_epochs must be >= 0 (0 keeps the config's), got -1"),
        (['--workers', '0'], 'error: num_workers must be >= 1, got 0'),
        (['--bucket', 'Video_KD'], "error: bad bucket name 'Video_KD'"),
        (['--run-id', 'a/b'], "error: bad run id 'a/b'"),
    ],
)
def test_run_local_checks_before_it_writes_or_starts_anything(tmp_path, capsys, argv, match):
    workdir = tmp_path / 'w'
    assert cli.main(['run-local', '--workdir', str(workdir), *argv]) == 2
    one_error_line(capsys.readouterr().err, match)
    assert not workdir.exists(), 'no directory, no S3 server, no model'


@pytest.mark.parametrize(
    'bad',
    [
        {'export_tolerance': -1.0},
        {'cfg_options': ['optim_wrapper.optimizer.lrr=0.1']},
        {'student_pretrained_url': 'https://x/w.pth', 'student_pretrained_sha256': 'g' * 64},
        {'num_workers': 0},
    ],
)
def test_run_local_pipeline_checks_before_anything_is_in_s3(bucket, tmp_path, bad):
    from video_kd import local_run
    from video_kd.storage import s3

    workers = bad.pop('num_workers', 1)
    with pytest.raises(UserError):
        local_run.run_local_pipeline(
            tmp_path / 'w', bucket, 'p', {}, 1, 1, False, workers, pipeline_args=bad
        )
    assert not s3.list_uris(f's3://{bucket}/')
    assert not (tmp_path / 'w').exists()


def test_the_check_inputs_entry_point_is_one_line_and_exit_2():
    result = subprocess.run(
        [sys.executable, '-m', 'components.check_inputs', *TEACHER, '--param', 'num_workers=0'],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    one_error_line(result.stderr, 'error: num_workers must be >= 1, got 0')
    ok = subprocess.run(
        [sys.executable, '-m', 'components.check_inputs', *TEACHER],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert 'export_tolerance' in json.loads(ok.stdout)['checked']


# --- the README's parameter table against the compiled pipeline -----------------------------

NOT_A_LITERAL = object()


def readme_and_docs() -> str:
    """README.md and its docs/ pages (the parameter table is in docs/pipeline.md)."""
    root = Path(cli.__file__).resolve().parents[1]
    pages = [root / 'README.md', *sorted((root / 'docs').glob('*.md'))]
    return '\n'.join(page.read_text() for page in pages)


def readme_default(text: str):
    """A default as the README's table writes it: 2, false, "", empty, `video-kd`, `[]`;
    words ('the K400 TSM configs') are not literals and are not checked."""
    text = text.strip()
    if text in ('', 'empty', '""'):
        return ''
    if text in ('true', 'false'):
        return text == 'true'
    if text.startswith('`') and text.endswith('`'):
        text = text[1:-1]
        return json.loads(text) if text[:1] in '[{' else text
    try:
        return float(text)
    except ValueError:
        return NOT_A_LITERAL


def test_the_readme_parameter_table_gives_the_compiled_defaults():
    readme = readme_and_docs()
    table = readme.split('Parameters (all typed', 1)[1].split('\n\n', 2)[1]
    compiled = cli.pipeline_parameters()
    checked = set()
    for row in table.splitlines()[2:]:
        names_cell, defaults_cell = row.split(' | ')[:2]
        defaults_cell = re.sub(r'\s*\([^)]*\)', '', defaults_cell)  # '0 (the chart's, else 3)'
        names = re.findall(r'`(\w+)`', names_cell)
        cells = [c.strip() for c in defaults_cell.split(',')] if defaults_cell.strip() else ['']
        if len(cells) == 1:
            cells = cells * len(names)  # 'empty' for both
        if len(cells) != len(names):
            continue  # a default in words
        for name, cell in zip(names, cells, strict=True):
            value = readme_default(cell)
            if value is NOT_A_LITERAL:
                continue
            default = compiled[name]['default']
            if isinstance(value, float):
                assert float(default) == value, f'README: {name} = {cell}, compiled: {default}'
            else:
                assert default == value, f'README: {name} = {cell}, compiled: {default}'
            checked.add(name)
    assert {'nproc_per_node', 'num_workers', 'backoff_limit_per_node', 's3_config_map'} <= checked


def test_the_readme_parameter_table_has_a_row_for_every_parameter():
    readme = readme_and_docs()
    table = readme.split('Parameters (all typed', 1)[1].split('\n\n', 2)[1]
    named = {
        name
        for row in table.splitlines()[2:]
        for name in re.findall(r'`(\w+)`', row.split(' | ')[0])
    }
    missing = sorted(set(cli.pipeline_parameters()) - named)
    assert not missing, f"README's pipeline parameter table lacks {missing}"


def test_readme_and_pipeline_agree_on_the_minimum_kfp_backend():
    import pipelines.kd_pipeline as kd

    readme = readme_and_docs()
    claimed = set(re.findall(r'KFP backend (?:>= |\*\*)?\**(\d+\.\d+\.\d+)', readme))
    claimed |= set(re.findall(r'KFP backend\s+>=\s+(\d+\.\d+\.\d+)', kd.__doc__))
    # optional ConfigMap keys as env (the IR's `optional: true`) need 2.15.0 (pipelines#12216)
    assert claimed == {'2.15.0'}, claimed
    assert 'optional: true' in cli.pipeline_file().read_text()


def test_run_local_takes_the_training_options_as_train_options_defines_them(capsys):
    """run-local's training flags are TrainOptions' own (one definition, one help)."""
    import dataclasses

    from video_kd.distill.train_config import TrainOptions

    args = cli.build_parser().parse_args(
        ['run-local', '--teacher-logit-cache', '--teacher-precision', 'bf16']
    )
    passed = {name: getattr(args, name) for name in cli.RUN_LOCAL_TRAIN_OPTIONS}
    assert passed == {'teacher_precision': 'bf16', 'teacher_logit_cache': True}
    assert set(passed) <= {field.name for field in dataclasses.fields(TrainOptions)}
    defaults = cli.build_parser().parse_args(['run-local'])
    # the demo's teacher is an inference model (cli.DEMO_TEACHER_PRECISION: bf16 or fp32, by
    # the CPU); '' is MMRazor's
    assert defaults.teacher_precision in ('bf16', 'fp32') and not defaults.teacher_logit_cache
    assert defaults.teacher_precision == cli.DEMO_TEACHER_PRECISION
    mmrazor = cli.build_parser().parse_args(['run-local', '--teacher-precision', ''])
    assert mmrazor.teacher_precision == ''
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(['run-local', '--teacher-precision', 'int8'])
    assert "invalid choice: 'int8'" in capsys.readouterr().err
