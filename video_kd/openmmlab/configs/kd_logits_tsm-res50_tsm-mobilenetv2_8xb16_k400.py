# Logits distillation with the DIST loss (Huang et al. 2022):
# TSM-ResNet50 teacher -> TSM-MobileNetV2 student on Kinetics-400 (seed: 69.60 top-1, +0.9).
# Same model, distiller and loss as the OpenMMLab knowledge_distillation project.
# `teacher_ckpt` has no default: the pipeline's teacher step (or --teacher-ckpt) sets it.
_base_ = 'mmaction::recognition/tsm/tsm_imagenet-pretrained-mobilenetv2_8xb16-1x1x8-100e_kinetics400-rgb.py'

teacher_ckpt = None
model = dict(
    _delete_=True,
    _scope_='mmrazor',
    type='SingleTeacherDistill',
    architecture=dict(
        cfg_path='mmaction::recognition/tsm/tsm_imagenet-pretrained-mobilenetv2_8xb16-1x1x8-100e_kinetics400-rgb.py',
        pretrained=False,
    ),
    teacher=dict(
        cfg_path='mmaction::recognition/tsm/tsm_imagenet-pretrained-r50_8xb16-1x1x8-50e_kinetics400-rgb.py',
        pretrained=False,
    ),
    teacher_ckpt=teacher_ckpt,
    distiller=dict(
        type='ConfigurableDistiller',
        student_recorders=dict(logits=dict(type='ModuleOutputs', source='cls_head.fc_cls')),
        teacher_recorders=dict(logits=dict(type='ModuleOutputs', source='cls_head.fc_cls')),
        distill_losses=dict(
            loss_dist=dict(
                type='DISTLoss', inter_loss_weight=1.0, intra_loss_weight=1.0, tau=1, loss_weight=1
            )
        ),
        loss_forward_mappings=dict(
            loss_dist=dict(
                logits_S=dict(from_student=True, recorder='logits'),
                logits_T=dict(from_student=False, recorder='logits'),
            )
        ),
    ),
)

# Validates the student, and the teacher once, as MMRazor does.
val_cfg = dict(_delete_=True, type='mmrazor.SingleTeacherDistillValLoop')
