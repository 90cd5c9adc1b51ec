# Logits distillation with the DIST loss: TSN-Swin-B teacher -> TSN-ResNet50 student on
# Kinetics-400 (seed: 75.54 top-1, +1.4).  The teacher's Swin-B comes from mmpretrain
# (see tsn_imagenet-pretrained-swin-transformer_32xb8-1x1x8-50e_kinetics400-rgb.py); the
# seed's released teacher (timm names) is converted by video_kd.distill.teacher_checkpoint.
_base_ = 'mmaction::recognition/tsn/tsn_imagenet-pretrained-r50_8xb32-1x1x8-100e_kinetics400-rgb.py'

teacher_ckpt = None
model = dict(
    _delete_=True,
    _scope_='mmrazor',
    type='SingleTeacherDistill',
    architecture=dict(
        cfg_path='mmaction::recognition/tsn/tsn_imagenet-pretrained-r50_8xb32-1x1x8-100e_kinetics400-rgb.py',
        # Upstream also passes backbone=dict(pretrained=False) here, which mmengine's
        # get_model takes as a default that the config's own key wins over: the student
        # keeps its ImageNet URL.  So does ours (dropped offline; see video_kd.distill.pretrained).
        pretrained=False,
    ),
    teacher=dict(
        cfg_path='tsn_imagenet-pretrained-swin-transformer_32xb8-1x1x8-50e_kinetics400-rgb',
        pretrained=False,
    ),
    teacher_ckpt=teacher_ckpt,
    distiller=dict(
        type='ConfigurableDistiller',
        student_recorders=dict(logits=dict(type='ModuleOutputs', source='cls_head.fc_cls')),
        teacher_recorders=dict(logits=dict(type='ModuleOutputs', source='cls_head.fc_cls')),
        distill_losses=dict(
            loss_dist=dict(
                type='DISTLoss', inter_loss_weight=1.0, intra_loss_weight=1.0, tau=1, loss_weight=4
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
