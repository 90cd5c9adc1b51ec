# Tiny TSM-ResNet50 (the teacher), for tests and the local demo.
_base_ = ['mmaction::_base_/models/tsm_r50.py', './_base_/tiny_k400.py']

model = dict(cls_head=dict(num_classes={{_base_.num_classes}}))
