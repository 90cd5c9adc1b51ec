"""A frozen teacher scored once per process (video_kd.distill.teacher_val), reported at every
validation; a trainable one scored every time. The tiny KD algorithm in a real mmengine
Runner, on a few random clips."""

import pytest
import torch
from mmengine.hooks import Hook

import video_kd  # noqa: F401  (compat before OpenMMLab)
from video_kd.distill import teacher_val
from video_kd.distill.train_config import TrainOptions, resolve

KD = 'kd_logits_tsm-res50_tsm-mobilenetv2_tiny'
CLIPS, BATCH = 2, 1  # 2 val batches


class Clips(torch.utils.data.Dataset):
    """Random 8-frame 32x32 clips with labels, as the tiny configs' val pipeline packs them."""

    def __init__(self):
        self.metainfo = {'classes': ('a', 'b', 'c')}

    def __len__(self):
        return CLIPS

    def __getitem__(self, index):
        from mmaction.structures import ActionDataSample

        clip = torch.randint(0, 256, (8, 3, 32, 32), generator=torch.Generator().manual_seed(index))
        return {
            'inputs': clip.to(torch.uint8),
            'data_samples': ActionDataSample().set_gt_label(torch.tensor([index % 3])),
        }


class ValMetrics(Hook):
    """What the hooks (LoggerHook: logs, scalars.json, TensorBoard) get at each validation."""

    def __init__(self):
        self.seen = []

    def after_val_epoch(self, runner, metrics=None):
        self.seen.append(dict(metrics))


def forwards(module):
    count = [0]
    module.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    return count


def build_runner(work_dir, loop='mmrazor.FrozenTeacherDistillValLoop'):
    from mmengine.runner import Runner
    from mmrazor.registry import MODELS

    from video_kd.openmmlab.config import load_config, set_num_classes
    from video_kd.openmmlab.runtime import register_all_modules

    register_all_modules()
    cfg = load_config(KD)
    set_num_classes(cfg.model, 3)
    teacher = cfg.model.teacher  # the TSM teacher, at ResNet-18's depth: the test counts passes
    teacher.backbone.depth, teacher.cls_head.in_channels = 18, 512
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    return Runner(
        model=model,
        work_dir=str(work_dir),
        val_dataloader=dict(
            dataset=Clips(),
            batch_size=BATCH,
            sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=dict(type='pseudo_collate'),
        ),
        val_cfg=dict(type=loop),
        val_evaluator=dict(type='AccMetric'),
        custom_hooks=[ValMetrics()],
        default_scope='mmaction',
    )


@pytest.fixture
def runner(tmp_path):
    return build_runner(tmp_path)


def test_a_frozen_teacher_is_scored_at_the_first_validation_only(runner):
    model = runner.model
    teacher, student = forwards(model.teacher), forwards(model.architecture)
    (hook,) = [h for h in runner.hooks if isinstance(h, ValMetrics)]
    batches = CLIPS // BATCH

    first = runner.val()
    assert (teacher[0], student[0]) == (batches, batches)
    assert {'acc/top1', 'acc/top5', 'teacher.acc/top1', 'teacher.acc/top5'} <= set(first)

    second = runner.val()
    assert (teacher[0], student[0]) == (batches, 2 * batches)  # the student only
    teacher_keys = {k for k in first if k.startswith('teacher.')}
    assert {k for k in second if k.startswith('teacher.')} == teacher_keys
    assert all(second[k] == first[k] for k in teacher_keys)
    assert [set(seen) for seen in hook.seen] == [set(first), set(second)]

    # a teacher that trains can change: MMRazor's own loop scores it every time, and it
    # scores this (unchanged) teacher as the kept metrics say
    model.teacher_trainable = True
    runner.val()
    assert teacher[0] == 2 * batches
    assert all(hook.seen[-1][k] == first[k] for k in teacher_keys)


def test_training_configs_get_it_unless_the_config_says_no():
    assert resolve(KD, TrainOptions()).val_cfg.type == 'mmrazor.FrozenTeacherDistillValLoop'
    kept = resolve(KD, TrainOptions(cfg_options=[f'{teacher_val.SWITCH_KEY}=False']))
    assert kept.val_cfg.type == 'mmrazor.SingleTeacherDistillValLoop'


def test_training_after_a_validation_sees_the_random_stream_mmrazors_loop_leaves(tmp_path):
    """A pass over the val loader draws from the global RNG; the skipped teacher pass draws
    too, or every later epoch's dropout and augmentation would differ (another student)."""
    states = {}
    for loop in ('mmrazor.SingleTeacherDistillValLoop', 'mmrazor.FrozenTeacherDistillValLoop'):
        runner = build_runner(tmp_path / loop, loop)
        torch.manual_seed(1)
        runner.val()
        runner.val()
        states[loop] = torch.get_rng_state()
    assert torch.equal(*states.values())
