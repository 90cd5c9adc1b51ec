# Tiny variant of kd_logits_tsm-res50_tsm-mobilenetv2_8xb16_k400.py: same distiller and
# DIST loss, tiny clips and schedule (tests and the local demo).
_base_ = './tsm_mobilenetv2_tiny.py'

teacher_ckpt = None
model = dict(
    _delete_=True,
    _scope_='mmrazor',
    type='SingleTeacherDistill',
    architecture=dict(cfg_path='tsm_mobilenetv2_tiny', pretrained=False),
    teacher=dict(cfg_path='tsm_r50_tiny', pretrained=False),
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

val_cfg = dict(_delete_=True, type='mmrazor.SingleTeacherDistillValLoop')
