"""video_kd.core.checks: every bad input is one line and exit status 2, before any write."""

from __future__ import annotations

import pytest

from video_kd import backends
from video_kd.core import checks as validation
from video_kd.core.errors import BAD_INPUT, UserError, one_line, run_cli
from video_kd.openmmlab import cfg_options
from video_kd.steps import check_inputs
from video_kd.storage import s3

KD_CONFIG = 'kd_logits_tsm-res50_tsm-mobilenetv2_8xb16_k400'


@pytest.fixture(scope='module')
def kd_cfg():
    from video_kd.openmmlab.config import load_config

    return load_config(KD_CONFIG)


def refused(fn, *args, match: str = '') -> str:
    """The one-line message of the InvalidInputError that fn(*args) raises."""
    with pytest.raises(validation.InvalidInputError) as info:
        fn(*args)
    message = str(info.value)
    assert message == one_line(info.value), 'more than one line'
    assert match in message, message
    return message


# --------------------------------------------------------------------------- run ids
@pytest.mark.parametrize(
    'run_id',
    ['a/b', '..', '.', 'cache', ' ', 'x y', '', 'Run1', '-a', 'a-', 'a_b', 'a.b', 'a' * 64],
)
def test_bad_run_ids_are_refused_with_the_rule(run_id):
    message = refused(validation.check_run_id, run_id, match=f'bad run id {run_id!r}')
    assert 'DNS label' in message


@pytest.mark.parametrize('run_id', ['a', '7', 'x-1', '20261125-053435-3f2a9c1e', 'a' * 63])
def test_good_run_ids_pass(run_id):
    assert validation.check_run_id(run_id) == run_id


def test_run_id_from_free_text_is_valid():
    kfp_job = '20261125-053435-3F2A9C1E-1B2C-4D5E-8F90-ABCDEF012345'
    assert validation.run_id_from(kfp_job) == kfp_job.lower()
    assert validation.run_id_from('  Nightly run #3 / v2 ') == 'nightly-run-3-v2'
    assert validation.run_id_from('x' * 80 + '-y') == 'x' * 63
    assert validation.run_id_from('///') == 'run'


# --------------------------------------------------------------------------- checksums, buckets
def test_sha256_format():
    good = 'ab' * 32
    assert validation.check_sha256(good.upper()) == good
    assert validation.check_sha256('') == ''
    refused(validation.check_sha256, 'g' * 64, match='64 hex digits')
    refused(validation.check_sha256, 'ab' * 20, match='got 40 characters')
    refused(lambda: validation.check_sha256('', required=True), match='--sha256 is required')


def test_bucket_names():
    assert validation.check_bucket('video-kd') == 'video-kd'
    for bad in ('a', 'Video', 'a/b', '-ab', 'a..b', 'x' * 64):
        refused(validation.check_bucket, bad, match='bad bucket name')


# --------------------------------------------------------------------------- numbers
# The train step's own checks (steps.train.check_launch, TrainOptions), which every entry
# point and the pipeline's check-inputs step run.
@pytest.mark.parametrize(
    ('kwargs', 'match'),
    [
        ({'max_epochs': -1}, "max_epochs must be >= 0 (0 keeps the config's), got -1"),
        ({'num_workers': 0}, 'num_workers must be >= 1, got 0'),
        ({'gpus_per_worker': -2}, 'gpus_per_worker must be >= 0'),
        ({'nproc_per_node': -1}, 'nproc_per_node (0: one per GPU) must be >= 0, got -1'),
        ({'backoff_limit_per_node': -1}, "backoff_limit_per_node (0: the chart's) must be >= 0"),
        ({'max_epochs': 'ten'}, "max_epochs must be a whole number, got 'ten'"),
        ({'num_workers': True}, 'num_workers must be a whole number'),
        ({'keep_checkpoints': 0}, 'keep_checkpoints must be >= 1, got 0'),
        ({'keep_checkpoints': -2}, 'keep_checkpoints must be >= 1, got -2'),
    ],
)
def test_training_numbers_out_of_range(kwargs, match):
    with pytest.raises(UserError) as info:
        check_inputs.check_pipeline_params(kwargs)
    assert match in str(info.value) and str(info.value) == one_line(info.value)


def test_training_numbers_in_range():
    from video_kd.distill.train_config import TrainOptions
    from video_kd.steps.train import check_launch

    check_launch(num_workers=1, gpus_per_worker=0, nproc_per_node=0, backoff_limit_per_node=0)
    assert TrainOptions(max_epochs=0).max_epochs == 0
    check_inputs.check_pipeline_params({'num_workers': 1, 'nproc_per_node': 0, 'max_epochs': 0})
    assert validation.check_range('x', '3', 1, 5) == 3
    refused(validation.check_range, 'x', 6, 1, 5, match='x must be <= 5, got 6')


# --------------------------------------------------------------------------- backends
def test_pytorchjob_mode_needs_a_kubernetes_api(tmp_path, monkeypatch):
    monkeypatch.delenv('KUBERNETES_SERVICE_HOST', raising=False)
    monkeypatch.delenv('KUBECONFIG', raising=False)
    monkeypatch.setenv('HOME', str(tmp_path))
    for backend in ('pytorchjob', 'trainjob'):
        refused(backends.check_train_backend, backend, match='needs a Kubernetes API')
    kubeconfig = tmp_path / 'kubeconfig'
    kubeconfig.write_text('apiVersion: v1\n')
    monkeypatch.setenv('KUBECONFIG', str(kubeconfig))
    backends.check_train_backend('pytorchjob')
    monkeypatch.delenv('KUBECONFIG')
    monkeypatch.setenv('KUBERNETES_SERVICE_HOST', '10.0.0.1')  # in a pod
    backends.check_train_backend('pytorchjob')


def test_local_mode_and_unknown_modes(monkeypatch):
    backends.check_train_backend('local')
    refused(
        backends.check_train_backend,
        'slurm',
        match='expected "pytorchjob", "trainjob" or "local"',
    )
    import torch

    if torch.cuda.device_count() == 0:
        refused(backends.check_train_backend, 'local', 1, match='this machine has 0 GPUs')


# --------------------------------------------------------------------------- --cfg-options
@pytest.mark.parametrize(
    ('option', 'match'),
    [
        ('optim_wrapper.optimizer.lrr=0.1', "did you mean 'optim_wrapper.optimizer.lr'?"),
        ('train_dataloader.batch_sise=4', "did you mean 'train_dataloader.batch_size'?"),
        ('tran_cfg.max_epochs=3', "no key 'tran_cfg' in the config (did you mean 'train_cfg'?)"),
        ('model.teacher.cls_head.num_clases=3', "'model.teacher.cls_head.num_classes'"),
        ('model.distiller.distill_losses.loss_dist.tua=2', "'model.distiller.distill_losses"),
        ('model.architecture.backbone.depth=50', "no key 'depth' in model.architecture.backbone"),
        ('train_dataloader.dataset.pipeline.99.x=1', 'is a list of'),
        ('train_cfg.max_epochs.x=1', 'it has no keys'),
        ('lr0.1', 'expected key=value'),
        ('=3', 'expected key=value'),
        ('a..b=1', "'' is not a config key"),
        ('a b=1', "'a b' is not a config key"),
    ],
)
def test_bad_cfg_options_are_refused(kd_cfg, option, match):
    refused(cfg_options.check_cfg_options, kd_cfg, [option], match=match)


def test_good_cfg_options_pass_at_any_depth(kd_cfg):
    options = [
        'optim_wrapper.optimizer.lr=0.01',
        'optim_wrapper.optimizer.nesterov=True',  # an SGD argument the config leaves unset
        'train_dataloader.batch_size=8',
        'train_dataloader.prefetch_factor=2',  # a DataLoader argument
        'train_dataloader.dataset.pipeline.0.io_backend=disk',  # a list index
        'model.architecture.cls_head.dropout_ratio=0.1',  # through **kwargs to BaseHead
        'model.distiller.distill_losses.loss_dist.tau=2',
        'default_hooks.checkpoint.max_keep_ckpts=3',
        'teacher_logit_cache.num_views=2',
        'randomness.seed=0',
        'work_dir=/tmp/with space',  # values may hold spaces
        'optim_wrapper.optimizer.type=AdamW',  # a new type brings its own arguments
        'optim_wrapper.optimizer.betas=(0.9,0.99)',
    ]
    parsed = cfg_options.check_cfg_options(kd_cfg, options)
    assert parsed['work_dir'] == '/tmp/with space'
    assert len(parsed) == len(options)


def test_cfg_options_from_a_dict_action(kd_cfg):
    assert cfg_options.check_cfg_options(kd_cfg, {'train_cfg.max_epochs': 3})


@pytest.mark.parametrize(
    ('text', 'value'),
    [
        ('/a b', '/a b'),  # mmengine's own parser gives '/ab'
        ("'a b'", 'a b'),  # quotes stripped once
        ('"it\'s here"', "it's here"),
        ('a  b', 'a  b'),
        ('0.01', 0.01),
        ('8', 8),
        ('True', True),
        ('false', False),  # mmengine's unquoted forms where no space is lost
        ('None', None),
        ('[1, 2]', [1, 2]),
        ('(0.9,0.99)', (0.9, 0.99)),
        ('[a, b]', ['a', 'b']),
        ('a,b', ['a', 'b']),
        ('disk', 'disk'),
        ('', ''),
    ],
)
def test_cfg_option_values_keep_their_spaces(text, value):
    parsed = cfg_options.parse_cfg_value(text)
    assert parsed == value and type(parsed) is type(value)


def test_cfg_options_with_spaces_reach_the_resolved_config():
    from video_kd.distill.train_config import TrainOptions, resolve

    options = TrainOptions(
        cfg_options=['work_dir=/a b', "experiment_name='kd run 1'", 'train_cfg.val_interval=2']
    )
    cfg = resolve('kd_logits_tsm-res50_tsm-mobilenetv2_tiny', options)
    assert cfg.work_dir == '/a b'
    assert cfg.experiment_name == 'kd run 1'
    assert cfg.train_cfg.val_interval == 2


def test_cfg_options_have_one_form_a_list():
    from video_kd.distill.train_config import TrainOptions

    with pytest.raises(UserError, match='cfg_options must be a list of KEY=VALUE strings'):
        TrainOptions(cfg_options='train_cfg.max_epochs=3\nwork_dir=/a b')
    assert TrainOptions(cfg_options=['work_dir=/a b']).cfg_options == ['work_dir=/a b']


# --------------------------------------------------------------------------- evaluate's CLI
@pytest.mark.parametrize(
    ('option', 'match'),
    [
        ('lr0.1', "error: --cfg-options 'lr0.1': expected key=value"),
        ('model.cls_head.num_clases=3', "(did you mean 'model.cls_head.num_classes'?)"),
        ('test_dataloader.batch_sise=4', "did you mean 'test_dataloader.batch_size'?"),
    ],
)
def test_evaluate_checks_cfg_options_as_training_does(tmp_path, capsys, option, match):
    """Regression: evaluate's mmengine DictAction crashed on 'lr0.1' (a ValueError
    traceback) and took any key name."""
    from video_kd.distill import evaluate

    out = tmp_path / 'metrics.json'
    argv = ['tsm_mobilenetv2_tiny', str(tmp_path / 'ckpt.pth'), '--data-root', str(tmp_path)]
    assert run_cli(evaluate.main, [*argv, '--out', str(out), '--cfg-options', option]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count('\n') == 1 and 'Traceback' not in err
    assert not out.exists()


# --------------------------------------------------------------------------- a run's parameters
GOOD_RUN = {
    'dataset_uri': 'generate://',
    'teacher_url': 'https://zoo.example/teacher.pth',
    'teacher_sha256': 'ab' * 32,
    'kd_config': 'kd_logits_tsm-res50_tsm-mobilenetv2_tiny',
    'student_config': 'tsm_mobilenetv2_tiny',
    'cfg_options': ['optim_wrapper.optimizer.lr=0.01'],
    'num_workers': 2,
    'export_tolerance': 1e-3,
    'speed_repeats': 3,
}
BAD_PARAMETERS = [
    ({'export_tolerance': -1.0}, 'export_tolerance (--tolerance) must be >= 0, got -1'),
    ({'speed_repeats': 1001}, 'speed_repeats (0 skips the speed check) must be <= 1000'),
    ({'speed_batch_size': 257}, 'speed_batch_size (clips per throughput call) must be <= 256'),
    ({'parity_clips': 0}, 'parity_clips (val clips of the ONNX parity check) must be >= 1, got 0'),
    (
        {'cfg_options': ['optim_wrapper.optimizer.lrr=0.1']},
        "did you mean 'optim_wrapper.optimizer.lr'?",
    ),
    ({'cfg_options': ['lr0.1']}, "--cfg-options 'lr0.1': expected key=value"),
    ({'teacher_sha256': 'g' * 64}, "teacher_sha256 'ggg"),
    ({'student_pretrained_sha256': 'ab12'}, "student_pretrained_sha256 'ab12' is not a SHA-256"),
    ({'baseline_sha256': 'x'}, "baseline_sha256 'x' is not a SHA-256"),
    ({'num_workers': 0}, 'num_workers must be >= 1, got 0'),
    ({'max_epochs': -1}, 'max_epochs must be >= 0'),
    ({'keep_checkpoints': 0}, 'keep_checkpoints must be >= 1, got 0'),
    ({'teacher_url': ''}, 'teacher_url is empty'),
    ({'teacher_url': 'ftp://zoo/t.pth'}, "teacher_url unsupported URL scheme 'ftp'"),
    ({'baseline_url': 'https://zoo/b.pth', 'student_config': ''}, 'student_config is empty'),
    ({'training_backend': 'slurm'}, 'training_backend \'slurm\': expected "pytorchjob"'),
    ({'teacher_precision': 'int8'}, "teacher_precision 'int8': use one of"),
    ({'kd_config': 'no_such_config'}, "unknown config 'no_such_config'"),
    ({'student_config': 'no_such_config'}, "unknown config 'no_such_config'"),
    ({'dataset_uri': 'generate://?classes=3'}, "unknown generator option 'classes'"),
    ({'run_id': 'a/b'}, "bad run id 'a/b'"),
    ({'s3_bucket': 'A'}, "bad bucket name 'A'"),
    ({'s3_prefix': '../..'}, "bad s3_prefix '../..': a '..' segment"),
    ({'run_id': 'run-1\n'}, "bad run id 'run-1\\n'"),
    ({'cfg_options': ['train_dataloader.batch_size=0']}, 'train_dataloader.batch_size must be'),
    ({'cfg_options': ['optim_wrapper.optimizer.lr=-1']}, 'optim_wrapper.optimizer.lr must be'),
    (
        {
            'student_pretrained_url': 'https://download.pytorch.org/models/resnet50-0676ba61.pth',
            'student_pretrained_sha256': 'ab' * 32,
        },
        'its name carries the first 8 hex digits, 0676ba61',
    ),
]


@pytest.mark.parametrize(('bad', 'match'), BAD_PARAMETERS)
def test_every_steps_check_runs_on_the_pipeline_parameters(bad, match):
    """What a step would refuse when it starts is refused before the run starts."""
    with pytest.raises(UserError) as info:
        check_inputs.check_pipeline_params({**GOOD_RUN, **bad})
    message = str(info.value)
    assert match in message and message == one_line(info.value), message


def test_good_pipeline_parameters_pass_and_absent_ones_are_not_checked(caplog):
    check_inputs.check_pipeline_params(GOOD_RUN)
    check_inputs.check_pipeline_params({**GOOD_RUN, 'teacher_logit_cache': True,
                                      'teacher_precision': 'bf16'})  # fmt: skip
    check_inputs.check_pipeline_params({})
    assert 'not fetched (offline)' not in caplog.text, "the config's notes are the run's"


def test_the_backend_is_checked_where_training_runs(tmp_path, monkeypatch):
    """Submitting from a laptop needs no Kubernetes API (the run trains in the cluster);
    run-local's backend must run here."""
    monkeypatch.delenv('KUBERNETES_SERVICE_HOST', raising=False)
    monkeypatch.delenv('KUBECONFIG', raising=False)
    monkeypatch.setenv('HOME', str(tmp_path))
    check_inputs.check_pipeline_params({'training_backend': 'pytorchjob'})
    refused(
        lambda: check_inputs.check_pipeline_params(
            {'training_backend': 'pytorchjob'}, backend_here=True
        ),
        match='needs a Kubernetes API',
    )


# --------------------------------------------------------------------------- one line, exit 2
def test_an_entry_point_prints_one_line_and_exits_2(capsys):
    assert run_cli(lambda: validation.check_run_id('a/b')) == BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: bad run id 'a/b'") and err.count('\n') == 1


def test_a_retention_of_0_is_one_line_and_exit_2_before_anything_is_created(capsys):
    """Issue 21: keep_checkpoints=0 (nothing kept) is refused by the check-inputs step."""
    from video_kd.distill.train_config import TrainOptions

    assert run_cli(lambda: check_inputs.check_pipeline_params({'keep_checkpoints': 0})) == BAD_INPUT
    err = capsys.readouterr().err
    assert err == 'error: keep_checkpoints must be >= 1, got 0\n'
    with pytest.raises(UserError, match='keep_checkpoints must be 1 or more'):
        TrainOptions(keep_checkpoints=0)  # what the train step and `python -m ...train` refuse


def test_s3_errors_are_user_errors_and_keep_their_names():
    for cls in (
        s3.S3Error,
        s3.MissingCredentialsError,
        s3.ObjectNotFoundError,
        s3.BucketNotFoundError,
        s3.ObjectExistsError,
        s3.S3UnavailableError,
    ):
        assert issubclass(cls, UserError) and issubclass(cls, RuntimeError)


def test_missing_bucket_is_reported_as_such(s3_env, tmp_path):
    uri = 's3://no-such-bucket-here/video-kd/run/data/dataset.json'
    for call in (
        lambda: s3.exists(uri),
        lambda: s3.read_json(uri),
        lambda: s3.download_file(uri, tmp_path / 'x'),
    ):
        with pytest.raises(s3.BucketNotFoundError, match="bucket 'no-such-bucket-here' does not"):
            call()


def test_missing_object_in_an_existing_bucket_is_no_such_object(bucket):
    assert not s3.exists(f's3://{bucket}/nothing')
    with pytest.raises(s3.ObjectNotFoundError, match='no such object') as info:
        s3.read_json(f's3://{bucket}/nothing')
    assert not isinstance(info.value, s3.BucketNotFoundError)


# --------------------------------------------------------------------------- anchors, S3 names
@pytest.mark.parametrize('check', [validation.check_run_id, validation.check_bucket])
def test_patterns_are_anchored_at_the_very_end(check):
    """``$`` matches before a trailing newline; every pattern ends in ``\\Z``."""
    refused(check, 'video-kd\n', match="'video-kd\\n'")
    assert validation.RUN_ID_PATTERN.pattern.endswith('\\Z')


@pytest.mark.parametrize(
    ('prefix', 'match'),
    [
        ('../..', "a '..' segment"),
        ('a/../b', "a '..' segment"),
        ('.', "a '.' segment"),
        ('a b', "the character ' '"),
        ('a\tb', "the character '\\t'"),
        ('kd\n', "the character '\\n'"),
        ('/', 'an empty segment'),
        ('/kd', 'an empty segment'),
        ('kd/', 'an empty segment'),
        ('a//b', 'an empty segment'),
        ('kd/cache', 'a "cache" segment'),
        ('k\u00e4se', "the character '\u00e4'"),
        ('x' * 600, '600 characters'),
    ],
)
def test_bad_s3_prefixes_are_refused_with_the_rule(prefix, match):
    message = refused(validation.check_s3_prefix, prefix, match=match)
    assert 'a prefix is empty (the bucket root)' in message


@pytest.mark.parametrize('prefix', ['', 'video-kd', 'runs/kd', 'Team_A/v1.2/kd-runs'])
def test_good_s3_prefixes_pass_and_empty_is_the_bucket_root(prefix):
    from video_kd.runs import RunLayout

    assert validation.check_s3_prefix(prefix) == prefix
    layout = RunLayout('bkt', prefix, 'run-1')
    assert layout.root == f's3://bkt/{prefix}/run-1'.replace('//run-1', '/run-1')
    assert RunLayout.from_root(layout.root) == layout


def test_bucket_names_follow_s3s_rules():
    for bad in ('192.168.0.1', 'a.-b', 'a-.b', 'xn--abc', 'sthree-x', 'data-s3alias', 'b--ol-s3'):
        refused(validation.check_bucket, bad, match='bad bucket name')
    for good in ('kd-artifacts', 'my.bucket.1', '1st-bucket'):
        assert validation.check_bucket(good) == good


# --------------------------------------------------------------------------- data prep's numbers
@pytest.mark.parametrize(
    ('settings', 'match'),
    [
        ({'processes': 0}, 'processes must be >= 1, got 0'),
        ({'processes': -3}, 'processes must be >= 1, got -3'),
        ({'processes': 5000}, 'processes must be <= 1024'),
        ({'min_frames': -1}, 'min_frames must be >= 1, got -1'),
        ({'min_frames': 0}, 'min_frames must be >= 1, got 0'),
        ({'max_unusable': float('nan')}, 'max_unusable (a share of a split, 0-1) must be a finite'),
        ({'max_unusable': 2}, 'max_unusable (a share of a split, 0-1) must be <= 1, got 2'),
        ({'max_unusable': -0.1}, 'must be >= 0'),
        ({'threads': 0}, 'threads must be >= 1'),
    ],
)
def test_data_prep_numbers_out_of_range(settings, match):
    from video_kd.data import data_check

    given = {'min_frames': 8, 'processes': None, 'max_unusable': 0.5, **settings}
    refused(lambda: data_check.check_settings(**given), match=match)


def test_data_prep_numbers_in_range():
    from video_kd.data import data_check

    assert data_check.check_settings(1, None, 0) == (1, None, 0.0)
    assert data_check.check_settings('8', 4, 1) == (8, 4, 1.0)


@pytest.mark.parametrize(
    ('argv', 'match'),
    [
        (['--processes', '0'], 'error: processes must be >= 1, got 0'),
        (['--min-frames', '-1'], 'error: min_frames must be >= 1, got -1'),
        (['--max-unusable', 'nan'], 'must be a finite number'),
        (['--max-unusable', '2'], 'must be <= 1, got 2'),
        (['--s3-prefix', '../..'], "error: bad s3_prefix '../..'"),
        (['--s3-prefix', 'a b'], "error: bad s3_prefix 'a b'"),
    ],
)
def test_the_data_prep_cli_refuses_bad_numbers_and_prefixes_writing_nothing(
    bucket, capsys, argv, match
):
    from components.data_prep.__main__ import main

    code = run_cli(main, ['--dataset-uri', 'generate://', '--s3-bucket', bucket, *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == BAD_INPUT and err[-1].startswith('error: '), err
    assert match in err[-1] and sum(line.startswith('error:') for line in err) == 1
    assert s3.list_uris(f's3://{bucket}/') == []  # nothing claimed, nothing written


def test_the_data_check_cli_refuses_bad_numbers(tmp_path, capsys):
    from video_kd.data import data_check

    argv = [str(tmp_path), '--out', str(tmp_path / 'out'), '--max-unusable', 'nan']
    assert run_cli(data_check.main, argv) == BAD_INPUT
    assert 'must be a finite number' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


# --------------------------------------------------------------------------- config values
@pytest.mark.parametrize(
    ('option', 'match'),
    [
        (
            'train_dataloader.batch_size=0',
            'train_dataloader.batch_size must be a whole number >= 1, got 0',
        ),
        (
            'val_dataloader.batch_size=2.5',
            'val_dataloader.batch_size must be a whole number >= 1, got 2.5',
        ),
        (
            'train_dataloader.num_workers=-1',
            'train_dataloader.num_workers must be a whole number >= 0',
        ),
        ('train_cfg.max_epochs=0', 'train_cfg.max_epochs must be a whole number >= 1, got 0'),
        ('train_cfg.val_interval=0', 'train_cfg.val_interval must be a whole number >= 1'),
        ('optim_wrapper.optimizer.lr=-0.1', 'optim_wrapper.optimizer.lr must be a number >= 0'),
        (
            'optim_wrapper.optimizer.lr=nan',
            'optim_wrapper.optimizer.lr must be a number >= 0, got nan',
        ),
        ('optim_wrapper.optimizer.weight_decay=-1', 'weight_decay must be a number >= 0'),
        ('optim_wrapper.optimizer.momentum=-0.9', 'momentum must be a number >= 0'),
        ('train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=True needs'),
    ],
)
def test_config_values_mmengine_would_refuse_are_refused_before_the_run(option, match):
    """From --cfg-options (here) or the config file alike: the check is on the resolved
    config, in check inputs, not in a training pod after train/config.py is published."""
    message = refused(
        lambda: check_inputs.check_pipeline_params(
            {'kd_config': KD_CONFIG, 'cfg_options': [option]}
        ),
        match=match,
    )
    assert message.startswith(f'{KD_CONFIG} (with --cfg-options): '), message


def test_config_value_rules_on_a_config_tree():
    check = cfg_options.check_config_values
    check({'train_dataloader': {'batch_size': 1, 'num_workers': 0, 'persistent_workers': False}})
    check({'optim_wrapper': {'optimizer': {'lr': 1e-3, 'betas': (0.9, 0.999)}}})
    refused(
        lambda: check({'optim_wrapper': {'optimizer': {'betas': (0.9, 1.0)}}}),
        match='betas must be two numbers in [0, 1)',
    )
    refused(
        lambda: check({'param_scheduler': [{'type': 'CosineAnnealingLR', 'begin': 5, 'end': 5}]}),
        match='param_scheduler.0 (CosineAnnealingLR) ends at 5, not after its begin 5',
    )
    refused(lambda: check({'train_dataloader': {'batch_size': True}}), match='got True')
    check({'optim_wrapper': {'clip_grad': {'max_norm': None}}})  # its reader's "not set"


# --------------------------------------------------------------------------- the error line
def test_a_long_error_line_is_cut_at_words_keeping_what_went_wrong():
    from video_kd.steps.train import clip_line

    short = 'ValueError: batch_size should be a positive integer value'
    assert clip_line(short) == short
    noise = ' '.join(f'word{i}' for i in range(120))
    line = f'[rank0]: {noise} ValueError: batch_size should be a positive integer value, got 0'
    clipped = clip_line(line)
    assert clipped == '... ValueError: batch_size should be a positive integer value, got 0'
    long_message = 'RuntimeError: ' + ' '.join(f'size mismatch for layer{i}' for i in range(40))
    clipped = clip_line(long_message)
    assert len(clipped) <= 300 and clipped.startswith('RuntimeError: size mismatch for layer0 ')
    assert clipped.endswith(' ...') and clipped[:-4].split()[-1] in long_message.split()
    plain = noise + ' the end'
    clipped = clip_line(plain)
    assert len(clipped) <= 300 and clipped.startswith('... word') and clipped.endswith('the end')
    assert clipped[4:].split()[0] in noise.split()  # a whole word, not its tail


def test_the_steps_forked_workers_leave_no_pymp_directories(tmp_path, monkeypatch):
    """A forked worker that needs multiprocessing's temp directory and is ended without its
    cleanup (as the DataLoader's shutdown ends workers) made its own pymp-* in TMPDIR."""
    import multiprocessing
    import os
    import tempfile

    from conftest import remove_multiprocessing_tempdir

    from video_kd.steps.common import step_tmpdir

    system_tmp = tmp_path / 'tmp'
    system_tmp.mkdir()
    monkeypatch.setenv('TMPDIR', str(system_tmp))
    monkeypatch.setattr(tempfile, 'tempdir', None)
    monkeypatch.setitem(multiprocessing.current_process()._config, 'tempdir', None)

    def worker():
        multiprocessing.util.get_temp_dir()
        os._exit(0)  # no cleanup, as a terminated worker

    work = tmp_path / 'work'
    with step_tmpdir(work) as tmp:
        assert tempfile.gettempdir() == str(tmp) and os.environ['TMPDIR'] == str(tmp)
        for _ in range(3):
            process = multiprocessing.get_context('fork').Process(target=worker)
            process.start()
            process.join()
    ours = multiprocessing.current_process()._config['tempdir']
    assert [p.name for p in system_tmp.glob('pymp-*')] == [os.path.basename(ours)]
    assert not (work / 'tmp').exists() and os.environ['TMPDIR'] == str(system_tmp)
    remove_multiprocessing_tempdir(tmp_path)  # now, as this process's exit would


@pytest.mark.parametrize(
    ('bad', 'match'),
    [
        ({'max_training_hours': 0.0}, 'max_training_hours must be above 0 and at most 720'),
        ({'max_training_hours': -2.5}, 'max_training_hours must be above 0'),
        ({'max_training_hours': float('nan')}, 'max_training_hours must be above 0'),
        ({'max_training_hours': 1000.0}, 'at most 720'),
        (
            {'step_cpu_request': '2 cores'},
            "step_cpu_request '2 cores' is not a Kubernetes quantity",
        ),
        ({'step_cpu_request': '0'}, "step_cpu_request '0' is not a Kubernetes quantity above 0"),
        ({'step_memory_request': '4GB'}, "step_memory_request '4GB' is not a Kubernetes quantity"),
    ],
)
def test_the_jobs_deadline_and_the_step_pods_requests_are_checked_first(bad, match):
    """A deadline <= 0 or a request the API server would refuse: one line before the run."""
    with pytest.raises(UserError) as info:
        check_inputs.check_pipeline_params(bad)
    assert match in str(info.value) and str(info.value) == one_line(info.value)
    assert info.value.exit_status == 2


def test_good_deadlines_and_requests_pass():
    check_inputs.check_pipeline_params(
        {'max_training_hours': 0.5, 'step_cpu_request': '500m', 'step_memory_request': '4Gi'}
    )
    check_inputs.check_pipeline_params(
        {'max_training_hours': 720, 'step_cpu_request': '2', 'step_memory_request': '1.5G'}
    )
