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
