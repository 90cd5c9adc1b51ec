# Tiny TSM-MobileNetV2 (the student alone), for tests and the local demo.
_base_ = ['mmaction::_base_/models/tsm_mobilenet_v2.py', './_base_/tiny_k400.py']

model = dict(cls_head=dict(num_classes={{_base_.num_classes}}))
