# Teacher of the TSN pair (seed: 79.22 top-1): TSN with a Swin-B (patch 4, window 7, 224).
# Upstream builds the backbone with timm (`timm.swin_base_patch4_window7_224`), which needs
# torchvision; torchvision does not load beside our pinned CPU torch, so the same
# architecture comes from mmpretrain here.  Parameter names differ from timm's: the seed's
# released checkpoint is converted (video_kd.distill.teacher_checkpoint, video_kd.distill.swin_convert).
# drop_path_rate 0.1 is timm's default, which upstream keeps; MMRazor runs the teacher in
# train mode, so this rate shapes the teacher's logits during distillation.
_base_ = 'mmaction::recognition/tsn/tsn_imagenet-pretrained-r50_8xb32-1x1x8-100e_kinetics400-rgb.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmpretrain.SwinTransformer',
        arch='base',
        img_size=224,
        out_indices=(3,),
        drop_path_rate=0.1,
    ),
    cls_head=dict(in_channels=1024),
)

train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=50, val_begin=1, val_interval=1)
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=50, by_epoch=True, milestones=[20, 40], gamma=0.1)
]
