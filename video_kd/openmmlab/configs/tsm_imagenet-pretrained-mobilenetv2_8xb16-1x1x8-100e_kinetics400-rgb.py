# Student alone (the seed's baseline: 68.71 top-1): the upstream MMAction2 config, shipped
# here so a converted `_student.pth` is tested with exactly the config it was trained with.
_base_ = 'mmaction::recognition/tsm/tsm_imagenet-pretrained-mobilenetv2_8xb16-1x1x8-100e_kinetics400-rgb.py'
