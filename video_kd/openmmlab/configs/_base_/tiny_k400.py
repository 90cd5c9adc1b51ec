# Tiny Kinetics-400-style runtime for tests and the local demo: 8 frames of 56x56 cut from
# 64x64 clips, a few classes, 15 short epochs.  On the generated dataset's defaults the
# TSM-R50 teacher reaches 80-92% top-1 in that budget; the MobileNetV2 student alone stays
# near chance (it needs ~40 epochs at lr 3e-3, see benchmarks/kd_gain.py), the distilled
# one gets well above it.  Data paths point at `data_root`; the training entry point
# rewrites them from --data-root (and num_classes from its classes.txt).
_base_ = 'mmaction::_base_/default_runtime.py'

dataset_type = 'VideoDataset'
data_root = 'data/kd_demo'
num_classes = 5
num_segments = 8
crop_size = 56

train_pipeline = [
    dict(type='DecordInit', io_backend='disk'),
    dict(type='SampleFrames', clip_len=1, frame_interval=1, num_clips=num_segments),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 64)),
    dict(
        type='MultiScaleCrop',
        input_size=crop_size,
        scales=(1, 0.875, 0.75),
        random_crop=False,
        max_wh_scale_gap=1,
    ),
    dict(type='Resize', scale=(crop_size, crop_size), keep_ratio=False),
    dict(type='Flip', flip_ratio=0.5),
    dict(type='FormatShape', input_format='NCHW'),
    dict(type='PackActionInputs'),
]
val_pipeline = [
    dict(type='DecordInit', io_backend='disk'),
    dict(type='SampleFrames', clip_len=1, frame_interval=1, num_clips=num_segments, test_mode=True),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 64)),
    dict(type='CenterCrop', crop_size=crop_size),
    dict(type='FormatShape', input_format='NCHW'),
    dict(type='PackActionInputs'),
]
test_pipeline = val_pipeline

train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        ann_file=f'{data_root}/train_list.txt',
        data_prefix=dict(video=f'{data_root}/videos'),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        ann_file=f'{data_root}/val_list.txt',
        data_prefix=dict(video=f'{data_root}/videos'),
        pipeline=val_pipeline,
        test_mode=True,
    ),
)
test_dataloader = val_dataloader

val_evaluator = dict(type='AccMetric')
test_evaluator = val_evaluator

max_epochs = 15
# validation every epoch: the report's curves get a point per epoch; on the tiny val set a
# pass costs a fraction of a training epoch
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_begin=1, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=1e-4),
    clip_grad=dict(max_norm=20, norm_type=2),
)
param_scheduler = [dict(type='CosineAnnealingLR', T_max=max_epochs, by_epoch=True, eta_min=1e-5)]

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=2),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=2, save_best=None),
)
log_processor = dict(window_size=2)
env_cfg = dict(dist_cfg=dict(backend='gloo'))  # CPU default; the launcher picks nccl on GPU
auto_scale_lr = dict(enable=False, base_batch_size=8)
randomness = dict(seed=0)
