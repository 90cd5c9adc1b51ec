"""The fast teacher (video_kd.distill.fast_teacher): same distillation, teacher as an inference model."""

import pytest
import torch
from conftest import run_module

import video_kd  # noqa: F401  (compat before OpenMMLab)
from video_kd.core.errors import UserError
from video_kd.distill import fast_teacher

KD = 'kd_logits_tsm-res50_tsm-mobilenetv2_tiny'


def kd_cfg(precision=None):
    from video_kd.openmmlab.config import load_config, set_num_classes
    from video_kd.openmmlab.runtime import register_all_modules

    register_all_modules()
    cfg = load_config(KD)
    set_num_classes(cfg.model, 3)
    if precision:
        fast_teacher.enable_fast_teacher(cfg, precision)
    return cfg


@pytest.fixture(scope='module')
def algo():
    from mmrazor.registry import MODELS

    torch.manual_seed(0)
    model = MODELS.build(kd_cfg('fp32').model)
    model.init_weights()
    model.train()
    return model


@pytest.fixture(scope='module')
def batch():
    from mmaction.structures import ActionDataSample

    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(2, 8, 3, 56, 56, generator=gen)
    return inputs, [ActionDataSample().set_gt_label(torch.tensor([i])) for i in range(2)]


def test_the_algorithm_is_a_module_level_class_registered_on_import():
    from mmrazor.models import SingleTeacherDistill
    from mmrazor.registry import MODELS

    assert MODELS.get(fast_teacher.ALGORITHM) is fast_teacher.InferenceTeacherDistill
    assert issubclass(fast_teacher.InferenceTeacherDistill, SingleTeacherDistill)


def test_enable_rewrites_the_config_and_refuses_what_it_cannot_run(tmp_path):
    cfg = kd_cfg('bf16')
    assert (cfg.model.type, cfg.model.teacher_precision) == ('InferenceTeacherDistill', 'bf16')
    with pytest.raises(UserError, match="unknown teacher precision 'int8'"):
        fast_teacher.enable_fast_teacher(kd_cfg(), 'int8')
    from video_kd.openmmlab.config import load_config

    with pytest.raises(UserError, match='distillation config'):
        fast_teacher.enable_fast_teacher(load_config('tsm_mobilenetv2_tiny'), 'bf16')
    cached = kd_cfg()
    cached.model.type = 'CachedLogitsSingleTeacherDistill'
    with pytest.raises(UserError, match='before the teacher-logit'):
        fast_teacher.enable_fast_teacher(cached, 'bf16')


def test_fp32_is_exactly_mmrazors_loss_with_the_teacher_in_eval_mode(algo, batch):
    from mmrazor.models import SingleTeacherDistill

    inputs, samples = batch
    torch.manual_seed(1)  # the same dropout masks in the student for both calls
    ours = algo.loss(inputs, samples)
    # the teacher is back in MMRazor's training state: train mode, norm layers frozen
    norms = [m for m in algo.teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert algo.teacher.training and norms and not any(m.training for m in norms)
    algo.teacher.eval()  # MMRazor's step, with dropout off: the same teacher logits
    torch.manual_seed(1)
    try:
        reference = SingleTeacherDistill.loss(algo, inputs, samples)
    finally:
        algo.train()
    assert set(ours) == set(reference)
    torch.testing.assert_close(ours['student.loss_cls'], reference['student.loss_cls'])
    torch.testing.assert_close(ours['distill.loss_dist'], reference['distill.loss_dist'])


def test_bf16_teacher_feeds_an_fp32_student_and_a_normal_backward(algo, batch):
    inputs, samples = batch
    fp32 = algo.loss(inputs, samples)['distill.loss_dist'].item()
    algo.teacher_dtype = torch.bfloat16
    try:
        losses = algo.loss(inputs, samples)
    finally:
        algo.teacher_dtype = None
    teacher_logits = algo.distiller.teacher_recorders.get_recorder('logits').get_record_data()
    assert teacher_logits.dtype == torch.float32 and not teacher_logits.is_inference()
    assert losses['distill.loss_dist'].item() == pytest.approx(fp32, rel=0.1)
    algo.zero_grad()
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    assert algo.architecture.backbone.conv1.conv.weight.grad is not None
    assert all(p.grad is None for p in algo.teacher.parameters())
    assert all(p.dtype == torch.float32 for p in algo.teacher.parameters())


def test_cli_refuses_it_for_a_model_that_distills_nothing(tmp_path):
    result = run_module(
        'video_kd.distill.train',
        'tsm_mobilenetv2_tiny',
        '--work-dir',
        tmp_path / 'w',
        '--teacher-precision',
        'bf16',
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        'error: --teacher-precision needs a distillation config'
    )


def test_kd_checkpoint_drops_the_frozen_teacher_and_a_load_restores_its_checkpoint(algo, tmp_path):
    """Issue 21 point 9 (video_kd.distill.frozen_teacher): the teacher is rebuilt from the
    run's teacher checkpoint, not saved in every KD checkpoint."""
    from types import SimpleNamespace

    from mmrazor.registry import MODELS

    from video_kd.distill.frozen_teacher import FrozenTeacherCheckpointHook, teacher_keys

    cfg, trained = kd_cfg('fp32'), algo
    teacher_ckpt = tmp_path / 'teacher.pth'  # the run's teacher checkpoint: the one it trained with
    torch.save({'state_dict': trained.teacher.state_dict()}, teacher_ckpt)
    cfg.model.teacher_ckpt = str(teacher_ckpt)
    hook = FrozenTeacherCheckpointHook()

    whole = trained.state_dict()
    checkpoint = {'state_dict': dict(whole), 'meta': {}}
    hook.before_save_checkpoint(SimpleNamespace(model=trained), checkpoint)
    assert teacher_keys(whole) and teacher_keys(checkpoint['state_dict']) == []
    assert {k for k in whole if not k.startswith('teacher.')} == set(checkpoint['state_dict'])
    assert checkpoint['meta']['teacher_weights'] == 'teacher_ckpt'

    torch.manual_seed(1)  # another random init: what it gets must come from the checkpoints
    resumed = MODELS.build(cfg.model)
    hook.after_load_checkpoint(SimpleNamespace(model=resumed), checkpoint)
    resumed.load_state_dict(checkpoint['state_dict'], strict=True)  # nothing missing
    expected = torch.load(teacher_ckpt, weights_only=True)['state_dict']
    got = resumed.teacher.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[key], value) for key, value in expected.items())
    student = {k: v for k, v in resumed.state_dict().items() if k.startswith('architecture.')}
    assert all(torch.equal(v, whole[k]) for k, v in student.items())

    trained.teacher_trainable = True  # a teacher that trains is the run's own: saved whole
    try:
        kept = {'state_dict': dict(whole), 'meta': {}}
        hook.before_save_checkpoint(SimpleNamespace(model=trained), kept)
    finally:
        trained.teacher_trainable = False
    assert teacher_keys(kept['state_dict']) == teacher_keys(whole)


@pytest.mark.parametrize(
    ('flags', 'native'),
    [
        ('fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni', True),  # AMD Zen 4, Intel Cooper Lake
        ('fpu sse2 avx2 avx512f amx_bf16 amx_tile', True),  # Intel Sapphire Rapids
        ('fpu sse2 avx2 avx512f avx512_vnni', False),  # Skylake / Cascade Lake: emulated bf16
        ('fpu sse2 avx2', False),
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, native):
    from video_kd.distill.teacher_precision import cpu_has_native_bf16

    cpuinfo = tmp_path / 'cpuinfo'
    cpuinfo.write_text(f'processor\t: 0\nmodel name\t: x\nflags\t\t: {flags}\n\nprocessor\t: 1\n')
    assert cpu_has_native_bf16(cpuinfo) is native
    assert cpu_has_native_bf16(tmp_path / 'absent') is False  # not Linux: fp32, the safe one
