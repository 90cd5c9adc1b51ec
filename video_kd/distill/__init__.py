"""Knowledge distillation: where a new loss, teacher mode or training option goes.

The training entry points (``train`` locally, ``train_pod`` in each training process),
the one mapping of options onto config keys (``train_config``), MMRazor algorithms of our
own (``fast_teacher``, ``logit_cache``), mmengine hooks (``s3_hook``), teacher and
pretrained weights, KD -> student conversion and MMAction2's test loop (``evaluate``).
"""
