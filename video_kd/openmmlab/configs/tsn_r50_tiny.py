# Tiny TSN-ResNet50 (the student alone of the TSN pair), for tests.
_base_ = ['mmaction::_base_/models/tsn_r50.py', './_base_/tiny_k400.py']

model = dict(cls_head=dict(num_classes={{_base_.num_classes}}))
