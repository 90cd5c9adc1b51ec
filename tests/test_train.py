"""The KD core end to end on real videos: train, resume, torchrun, convert, evaluate, bad input.

Every command runs as a user (or a PyTorchJob pod) runs it: `python -m ...` in a subprocess.
"""

import json

import pytest
import torch
from conftest import TINY_TRAIN, free_port, mmaction2_view, run_module

KD = 'kd_logits_tsm-res50_tsm-mobilenetv2_tiny'
STUDENT = 'tsm_mobilenetv2_tiny'

pytestmark = pytest.mark.slow


def train_kd(work_dir, data, teacher, *extra):
    return run_module(
        'video_kd.distill.train',
        KD,
        '--work-dir',
        work_dir,
        '--data-root',
        data,
        '--teacher-ckpt',
        teacher,
        *extra,
        *TINY_TRAIN,
    )


@pytest.fixture(scope='module')
def kd_run(kd_training, tmp_path_factory):
    """A copy of conftest's 2-epoch KD run (the session's one, shared with the export tests),
    for the tests here that only read its outputs or write next to them."""
    import shutil

    work_dir = tmp_path_factory.mktemp('kd') / 'work'
    shutil.copytree(kd_training[0], work_dir)
    return work_dir, kd_training[1]


def test_kd_training_writes_checkpoints_and_logs_progress(kd_run):
    work_dir, result = kd_run
    for epoch in (1, 2):
        state = torch.load(work_dir / f'epoch_{epoch}.pth', map_location='cpu', weights_only=False)
        keys = state['state_dict'].keys()
        assert any(k.startswith('architecture.backbone') for k in keys)
        # issue 21: the frozen teacher is rebuilt from its checkpoint, not saved (it was:
        # teacher.backbone.* in every checkpoint)
        assert not any(k.startswith('teacher.') for k in keys)
        assert state['meta']['teacher_weights'] == 'teacher_ckpt'
    assert (work_dir / 'last_checkpoint').read_text().strip().endswith('epoch_2.pth')
    # retention: the best by the val metric is kept beside the newest (save_best='auto')
    (best,) = work_dir.glob('best_acc_top1_epoch_*.pth')
    assert not any(
        k.startswith('teacher.') for k in torch.load(best, weights_only=False)['state_dict']
    )
    log = result.stdout + result.stderr
    for progress in ('Epoch(train)', 'eta:', 'distill.loss_dist', 'student.loss_cls'):
        assert progress in log
    # video_kd.distill.teacher_val: the frozen teacher ran at the first of the 2 validations
    assert log.count('frozen teacher scored once') == 1


def test_kd_training_writes_tensorboard_curves(kd_run):
    """mmengine's TensorboardVisBackend (train_config.add_tensorboard): the losses and the
    student's and the teacher's val top-1 of every epoch, in event files TensorBoard reads."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = kd_run[0].glob('*/vis_data/events.out.tfevents.*')
    curves = EventAccumulator(str(events)).Reload()
    tags = set(curves.Tags()['scalars'])
    assert {'loss', 'distill.loss_dist', 'acc/top1', 'teacher.acc/top1'} <= tags, tags
    for tag in ('acc/top1', 'teacher.acc/top1'):  # validation every epoch, 2 epochs
        assert len(curves.Scalars(tag)) == 2
        assert all(0.0 <= point.value <= 1.0 for point in curves.Scalars(tag))
    # the frozen teacher's score, reported at both (video_kd.distill.teacher_val)
    assert len({point.value for point in curves.Scalars('teacher.acc/top1')}) == 1


def test_resume_continues_from_the_last_checkpoint(kd_data, tiny_teacher, kd_run, tmp_path):
    import shutil

    work_dir = tmp_path / 'kd'
    shutil.copytree(kd_run[0], work_dir)
    for later in work_dir.glob('epoch_2*.pth'):  # back to the end of epoch 1
        later.unlink()
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'epoch_1.pth'))
    first = (work_dir / 'epoch_1.pth').read_bytes()

    # resumed with the fast teacher: its checkpoints are SingleTeacherDistill's
    result = train_kd(
        work_dir,
        kd_data,
        tiny_teacher,
        '--max-epochs',
        2,
        '--resume',
        '--teacher-precision',
        'bf16',
    )

    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert 'teacher: eval mode, inference_mode, bf16' in log
    assert 'resumed epoch: 1' in log
    # the teacher's weights came from the teacher checkpoint (video_kd.distill.frozen_teacher;
    # tests/test_fast_teacher.py checks they equal it): none missing from the state dict
    assert 'teacher weights restored from the teacher checkpoint' in log
    assert 'missing keys in source state_dict' not in log
    assert 'Epoch(train) [1]' not in log and 'Epoch(train) [2]' in log
    assert (work_dir / 'epoch_2.pth').is_file()
    assert (work_dir / 'epoch_1.pth').read_bytes() == first  # nothing lost


def test_torchrun_two_processes_gloo(kd_data, tiny_teacher, tmp_path):
    work_dir = tmp_path / 'kd'
    result = run_module(
        'torch.distributed.run',
        '--nproc_per_node',
        2,
        '--master_port',
        free_port(),
        '-m',
        'video_kd.distill.train',
        KD,
        '--work-dir',
        work_dir,
        '--data-root',  # the seed's tree: rank 0 writes the checked lists, rank 1 waits
        mmaction2_view(kd_data, tmp_path / 'seed'),
        '--teacher-ckpt',
        tiny_teacher,
        '--max-epochs',
        1,
        *TINY_TRAIN,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert '(mmaction2 layout): 3 classes' in log
    assert 'Distributed training: True' in log
    assert 'Epoch(train) [1][2/2]' in log  # 12 videos / (2 ranks x batch 4) = 2 iterations
    # the frozen teacher's val pass, collected over both ranks (video_kd.distill.teacher_val)
    assert 'frozen teacher scored once' in log and 'teacher.acc/top1' in log
    state = torch.load(work_dir / 'epoch_1.pth', map_location='cpu', weights_only=False)
    assert any(k.startswith('architecture.') for k in state['state_dict'])


def test_student_checkpoint_loads_strictly_in_plain_mmaction_and_evaluates(
    kd_run, kd_data, tmp_path
):
    result = run_module('video_kd.distill.convert', kd_run[0] / 'epoch_1.pth')
    assert result.returncode == 0, result.stderr[-2000:]
    student_ckpt = kd_run[0] / 'epoch_1_student.pth'
    assert result.stdout.strip() == str(student_ckpt)

    from mmaction.registry import MODELS
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint

    import video_kd  # noqa: F401
    from video_kd.openmmlab.config import load_config
    from video_kd.openmmlab.runtime import register_all_modules

    register_all_modules()
    init_default_scope('mmaction')
    cfg = load_config(STUDENT, {'model.cls_head.num_classes': 3})
    load_checkpoint(MODELS.build(cfg.model), str(student_ckpt), strict=True)

    out = tmp_path / 'metrics.json'
    seed_data = mmaction2_view(kd_data, tmp_path / 'seed')  # the seed's test command, its data
    result = run_module(
        'video_kd.distill.evaluate', STUDENT, student_ckpt, '--data-root', seed_data, '--out', out
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads(out.read_text())
    assert metrics['num_samples'] == 6
    assert 0 <= metrics['top1_acc'] <= metrics['top5_acc'] <= 1
    assert 0 <= metrics['mean_class_acc'] <= 1
    assert len(metrics['confusion_matrix']) == 3 == len(metrics['classes'])
    correct = sum(metrics['confusion_matrix'][i][i] for i in range(3))
    assert correct / 6 == pytest.approx(metrics['top1_acc'])


# --------------------------------------------------------------------------- bad input
def assert_clear_error(result, *fragments):
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ')
    for fragment in fragments:
        assert fragment in last
    assert 'Traceback' not in result.stderr


def test_missing_teacher_file(kd_data, tmp_path):
    assert_clear_error(
        train_kd(tmp_path / 'w', kd_data, tmp_path / 'nope.pth'),
        'teacher checkpoint',
        'does not exist',
    )
    assert not (tmp_path / 'w').exists()


def test_teacher_checkpoint_of_the_wrong_architecture(kd_data, kd_run, tmp_path):
    result = run_module(
        'video_kd.distill.convert', kd_run[0] / 'epoch_1.pth', '--out', tmp_path / 'mobilenet.pth'
    )
    assert result.returncode == 0
    assert_clear_error(
        train_kd(tmp_path / 'w', kd_data, tmp_path / 'mobilenet.pth'),
        "does not fit the config's teacher",
        'missing',
        'unexpected',
    )


def test_unknown_config(kd_data, tmp_path):
    result = run_module('video_kd.distill.train', 'kd_logits_nope', '--work-dir', tmp_path / 'w')
    assert_clear_error(result, "unknown config 'kd_logits_nope'")


def test_empty_dataset(kd_data, tiny_teacher, tmp_path):
    import shutil

    data = tmp_path / 'data'
    shutil.copytree(kd_data, data)
    (data / 'train_list.txt').write_text('')
    assert_clear_error(train_kd(tmp_path / 'w', data, tiny_teacher), 'no usable video')


def test_corrupt_videos_are_left_out_and_reported(kd_data, tiny_teacher, tmp_path):
    import shutil

    data = tmp_path / 'data'
    shutil.copytree(kd_data, data)
    corrupt = (data / 'train_list.txt').read_text().split()[0]
    (data / 'videos' / corrupt).write_bytes(b'not a video at all')
    result = train_kd(tmp_path / 'w', data, tiny_teacher, '--max-epochs', 1)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'rejected {corrupt} (train): cannot decode' in result.stderr
    report = json.loads((tmp_path / 'w' / 'data' / 'report.json').read_text())
    assert report['rejected_total'] == 1


def test_all_videos_corrupt_is_a_clear_error(kd_data, tiny_teacher, tmp_path):
    import shutil

    data = tmp_path / 'data'
    shutil.copytree(kd_data, data)
    for video in (data / 'videos').rglob('*.mp4'):
        video.write_bytes(b'garbage')
    assert_clear_error(train_kd(tmp_path / 'w', data, tiny_teacher), 'no usable video')


def test_an_earlier_work_dir_is_never_trained_over(kd_data, tiny_teacher, kd_run):
    work_dir = kd_run[0]
    before = {p.name: p.stat().st_mtime_ns for p in work_dir.glob('*.pth')}
    assert_clear_error(
        train_kd(work_dir, kd_data, tiny_teacher), 'already holds checkpoints', '--resume'
    )
    assert {p.name: p.stat().st_mtime_ns for p in work_dir.glob('*.pth')} == before


def test_convert_refuses_a_checkpoint_that_is_not_kd(tiny_teacher, tmp_path):
    result = run_module('video_kd.distill.convert', tiny_teacher, '--out', tmp_path / 's.pth')
    assert_clear_error(result, 'not a knowledge-distillation checkpoint')
