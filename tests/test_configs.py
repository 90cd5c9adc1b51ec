"""Configs: seed names, real models, a real KD loss step, user overrides, offline weights."""

import pytest
import torch

import video_kd  # noqa: F401
from video_kd.openmmlab.config import (
    UnknownConfigError,
    available_configs,
    is_distill_config,
    load_config,
    student_model_cfg,
)

SEED_CONFIGS = [
    'kd_logits_tsm-res50_tsm-mobilenetv2_8xb16_k400',
    'kd_logits_tsn-swin_tsn-r50_8xb16_k400',
]


def test_seed_configs_ship_under_the_seed_names():
    names = available_configs()
    for name in SEED_CONFIGS + [n.replace('_8xb16_k400', '_tiny') for n in SEED_CONFIGS]:
        assert name in names


@pytest.mark.parametrize('name', available_configs())
def test_every_shipped_config_loads_offline(name):
    cfg = load_config(name)
    text = cfg.pretty_text
    for remote in ('torchvision://', 'mmcls://', 'download.pytorch.org'):
        assert remote not in text, f'{name} would download {remote} weights'


def test_kd_configs_follow_the_seed_distiller():
    cfg = load_config(SEED_CONFIGS[0])
    assert cfg.model.type == 'SingleTeacherDistill'
    distiller = cfg.model.distiller
    assert distiller.type == 'ConfigurableDistiller'
    assert distiller.student_recorders.logits.source == 'cls_head.fc_cls'
    assert distiller.teacher_recorders.logits.source == 'cls_head.fc_cls'
    assert distiller.distill_losses.loss_dist.type == 'DISTLoss'
    assert cfg.model.architecture.backbone.type == 'MobileNetV2TSM'
    assert cfg.model.teacher.backbone.type == 'ResNetTSM'
    swin = load_config(SEED_CONFIGS[1])
    assert swin.model.distiller.distill_losses.loss_dist.loss_weight == 4
    assert swin.model.teacher.backbone.type == 'mmpretrain.SwinTransformer'
    assert swin.model.teacher.backbone.arch == 'base'
    assert swin.model.architecture.backbone.depth == 50


def test_any_key_can_be_overridden_including_the_referenced_models():
    cfg = load_config(
        SEED_CONFIGS[0],
        {
            'model.architecture.cls_head.num_classes': 7,
            'model.distiller.distill_losses.loss_dist.tau': 2,
            'train_dataloader.batch_size': 3,
        },
    )
    assert cfg.model.architecture.cls_head.num_classes == 7
    assert cfg.model.distiller.distill_losses.loss_dist.tau == 2
    assert cfg.train_dataloader.batch_size == 3


def test_unknown_config_names_the_available_ones():
    with pytest.raises(UnknownConfigError, match=r'unknown config .*kd_logits_tsm-res50'):
        load_config('kd_logits_does-not-exist')


def test_student_of_a_kd_config_is_the_plain_student():
    kd = load_config('kd_logits_tsm-res50_tsm-mobilenetv2_tiny')
    alone = load_config('tsm_mobilenetv2_tiny')
    assert is_distill_config(kd) and not is_distill_config(alone)
    assert student_model_cfg(kd).backbone == student_model_cfg(alone).backbone


def _kd_loss_step(name: str, size: int):
    from mmaction.structures import ActionDataSample
    from mmengine.registry import init_default_scope
    from mmrazor.registry import MODELS

    from video_kd.openmmlab.runtime import register_all_modules

    register_all_modules()
    init_default_scope('mmrazor')
    torch.manual_seed(0)
    model = MODELS.build(load_config(name).model)
    clips = [torch.randint(0, 255, (8, 3, size, size), dtype=torch.uint8) for _ in range(2)]
    samples = [ActionDataSample().set_gt_label(torch.tensor([label])) for label in (0, 1)]
    data = model.data_preprocessor(dict(inputs=clips, data_samples=samples), True)
    losses = model(**data, mode='loss')
    losses['distill.loss_dist'].backward()
    return model, losses


@pytest.mark.slow
@pytest.mark.parametrize('name', SEED_CONFIGS)
def test_seed_kd_config_builds_real_models_and_distills(name):
    model, losses = _kd_loss_step(name, size=224)
    assert torch.isfinite(losses['student.loss_cls'])
    assert torch.isfinite(losses['distill.loss_dist']) and losses['distill.loss_dist'] > 0
    student_grads = [p.grad for p in model.architecture.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in student_grads)
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    n_student = sum(p.numel() for p in model.architecture.parameters())
    n_teacher = sum(p.numel() for p in model.teacher.parameters())
    assert n_teacher > 3 * n_student  # a big teacher, a small student


@pytest.mark.parametrize('name', [n.replace('_8xb16_k400', '_tiny') for n in SEED_CONFIGS])
def test_tiny_kd_configs_distill(name):
    model, losses = _kd_loss_step(name, size=56)
    assert torch.isfinite(losses['distill.loss_dist'])
    assert all(p.grad is None for p in model.teacher.parameters())


def test_max_epochs_override_stretches_the_schedule_that_spans_training():
    from video_kd.distill.train_config import set_max_epochs

    cfg = load_config('tsm_mobilenetv2_tiny')
    set_max_epochs(cfg, 4)
    assert cfg.train_cfg.max_epochs == 4
    assert cfg.param_scheduler[0].T_max == 4


@pytest.mark.parametrize('name', [*SEED_CONFIGS, 'kd_logits_tsm-res50_tsm-mobilenetv2_tiny'])
def test_distributed_metrics_gather_through_the_process_group(name):
    """Regression: mmengine's default gathers the ranks' results through a directory rank 0
    makes in its own file system, which another node (pod) never sees: validation of a
    two-pod PyTorchJob died with FileNotFoundError '.dist_test/.../part_1.pkl'."""
    from video_kd.distill.train_config import collect_over_process_group

    cfg = load_config(name)
    collect_over_process_group(cfg)
    for key in ('val_evaluator', 'test_evaluator'):
        metrics = cfg[key] if isinstance(cfg[key], list) else [cfg[key]]
        assert metrics and all(m.collect_device == 'gpu' for m in metrics), (key, metrics)
    cfg.val_evaluator = dict(type='Evaluator', metrics=[dict(type='AccMetric')])
    cfg.test_evaluator = [dict(type='AccMetric', collect_device='cpu', collect_dir='/shared')]
    collect_over_process_group(cfg)
    assert cfg.val_evaluator.metrics[0].collect_device == 'gpu'
    assert cfg.test_evaluator[0].collect_device == 'cpu'  # the user's choice stays
