# Student alone of the TSN pair (seed: 74.12 top-1): the upstream MMAction2 config.
_base_ = 'mmaction::recognition/tsn/tsn_imagenet-pretrained-r50_8xb32-1x1x8-100e_kinetics400-rgb.py'
