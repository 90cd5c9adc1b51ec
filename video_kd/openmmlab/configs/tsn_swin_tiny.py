# Tiny TSN-Swin teacher for tests: Swin-T (not Swin-B) from mmpretrain, on 56x56 frames.
_base_ = './tsn_r50_tiny.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmpretrain.SwinTransformer',
        arch='tiny',
        img_size=56,
        out_indices=(3,),
        pad_small_map=True,
    ),
    cls_head=dict(in_channels=768),
)
