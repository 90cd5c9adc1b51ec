# Teacher of the TSM pair (seed: 73.22 top-1): the upstream MMAction2 config.
_base_ = 'mmaction::recognition/tsm/tsm_imagenet-pretrained-r50_8xb16-1x1x8-50e_kinetics400-rgb.py'
