"""The demo's console: one progress line per training epoch, and the KD gain's one-line verdict."""

from __future__ import annotations

import pytest

from video_kd import cli


def test_run_local_defaults_are_the_measured_demo_settings():
    args = cli.build_parser().parse_args(['run-local'])
    assert (args.epochs, args.lr, args.teacher_epochs) == (
        cli.DEMO_EPOCHS,
        cli.DEMO_LR,
        cli.DEMO_TEACHER_EPOCHS,
    )
    assert (args.classes, args.train_per_class, args.val_per_class) == (
        cli.DEMO_DATA['num_classes'],
        cli.DEMO_DATA['train_per_class'],
        cli.DEMO_DATA['val_per_class'],
    )
    assert args.teacher_precision == cli.DEMO_TEACHER_PRECISION
    # bf16 only where the CPU has it natively: emulated bf16 is not expected to be faster
    from video_kd.distill.teacher_precision import cpu_has_native_bf16

    assert (cpu_has_native_bf16(), cli.DEMO_TEACHER_PRECISION) in {(True, 'bf16'), (False, 'fp32')}


def test_the_demo_uploads_its_teacher_as_released_weights(tmp_path):
    """The teacher the pipeline downloads is weights and meta, as released checkpoints are:
    the optimizer's state (two thirds of the training checkpoint) stays on disk."""
    import torch

    from video_kd.local_run import released_weights

    work = tmp_path / 'teacher-12e'
    work.mkdir()
    weights = {'fc.weight': torch.randn(4, 3), 'fc.bias': torch.randn(4)}
    training = {
        'meta': {'epoch': 12, 'seed': 0},
        'state_dict': weights,
        'optimizer': {'state': {0: {'exp_avg': torch.randn(4, 3)}}, 'param_groups': []},
        'message_hub': {},
    }
    torch.save(training, work / 'epoch_12.pth')
    released = released_weights(work / 'epoch_12.pth')
    assert released == work / 'teacher-12e.pth'
    loaded = torch.load(released, weights_only=True)
    assert set(loaded) == {'meta', 'state_dict'} and loaded['meta'] == training['meta']
    assert all(torch.equal(loaded['state_dict'][k], v) for k, v in weights.items())
    written = released.stat().st_mtime_ns
    assert released_weights(work / 'epoch_12.pth') == released  # made once, then reused
    assert released.stat().st_mtime_ns == written


def test_the_shared_caches_outlive_the_local_s3_server(bucket, tmp_path):
    """run-local's server keeps objects in memory; the score cache and the video verdicts
    (what a second call with the same teacher, baseline and videos reads) are kept on disk
    and put back, byte for byte, while a run's own objects are not."""
    from video_kd.local_run import keep_caches, restore_caches, shared_cache_uris
    from video_kd.runs import RunLayout
    from video_kd.storage import s3

    dataset_uri = f's3://{bucket}/datasets/tiny'
    layout = RunLayout(bucket, 'video-kd', '20261207-010203-4f0c2a9e')
    caches = shared_cache_uris(dataset_uri, layout)
    assert caches == [
        f'{dataset_uri}/eval_scores',
        f's3://{bucket}/video-kd/cache/video-check',
    ]
    entries = {
        f'{dataset_uri}/eval_scores/{"a" * 64}/{"b" * 64}/c0ffee.json': b'{"top1_acc": 0.8}',
        f's3://{bucket}/video-kd/cache/video-check/f8/tiny/batch-0001.json': b'[]',
    }
    own = layout.uri('eval', 'metrics.json')  # a run's own object: not a cache
    for uri, body in {**entries, own: b'{}'}.items():
        s3.put_bytes(uri, body)
    kept = tmp_path / 'caches'
    assert keep_caches(kept, caches) == 2
    for uri in [*entries, own]:  # the server forgets everything (a new run-local call)
        s3.delete(uri)
    assert restore_caches(kept, caches) == 2
    assert {uri: s3.read_bytes(uri) for uri in entries} == entries
    assert not s3.exists(own)
    assert restore_caches(kept, caches) == 2  # again over the same objects: no conflict
    assert restore_caches(tmp_path / 'none-yet', caches) == 0  # a first call
    assert keep_caches(tmp_path / 'more', [f'{dataset_uri}/nothing-yet']) == 0


METRICS = {
    'num_val': 40,
    'teacher': {'top1_acc': 0.925},
    'student': {'top1_acc': 0.85},
    'baseline': {'top1_acc': 0.275},
}


@pytest.mark.parametrize(
    ('student', 'baseline', 'said'),
    [
        (0.85, 0.275, '(+57.5 points; teacher 92.5%): distillation helped'),
        (0.3, 0.3, '(+0.0 points; teacher 92.5%): within noise (+-20.5% on 40 clips)'),
        (0.525, 0.45, 'within noise'),  # 3 clips of 40: inside two standard errors
        (0.2, 0.9, '(-70.0 points; teacher 92.5%): distillation hurt'),
    ],
)
def test_the_verdict_weighs_the_gain_against_the_validation_noise(student, baseline, said):
    from video_kd.local_run import kd_verdict

    metrics = {**METRICS, 'student': {'top1_acc': student}, 'baseline': {'top1_acc': baseline}}
    line = kd_verdict(metrics)
    assert line.startswith(f'KD student {student:.1%} vs {baseline:.1%} trained alone ')
    assert said in line


def test_no_verdict_without_a_baseline():
    from video_kd.local_run import kd_verdict

    assert kd_verdict({k: v for k, v in METRICS.items() if k != 'baseline'}) is None


def test_the_progress_hook_logs_one_line_per_epoch_that_run_local_shows(tmp_path):
    """A real mmengine Runner with the hook: its log has one line per epoch, in the form
    local_run.PROGRESS_LINE picks out of a training's output."""
    import torch
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    from video_kd.distill import progress_hook  # noqa: F401  (registers the hook)
    from video_kd.local_run import PROGRESS_LINE

    class Linear(BaseModel):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(2, 1)

        def forward(self, inputs, data_samples=None, mode='tensor'):
            out = self.fc(torch.stack(inputs))
            return {'loss': out.pow(2).mean()} if mode == 'loss' else out

    samples = [{'inputs': torch.ones(2), 'data_samples': i} for i in range(6)]
    runner = Runner(
        model=Linear(),
        work_dir=str(tmp_path),
        train_dataloader=dict(
            batch_size=2,
            dataset=samples,
            sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=dict(type='pseudo_collate'),
        ),
        train_cfg=dict(by_epoch=True, max_epochs=3),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        custom_hooks=[dict(type='EpochProgressHook')],
        default_hooks=dict(checkpoint=None),
    )
    runner.train()
    log = next(tmp_path.glob('*/*.log')).read_text().splitlines()
    shown = [m[1] for m in map(PROGRESS_LINE.search, log) if m]
    assert [line.split(' loss ')[0] for line in shown] == ['epoch 1/3', 'epoch 2/3', 'epoch 3/3']
    assert all(' clips/s ETA ' in line for line in shown), shown
    assert shown[-1].endswith('ETA 0s')
