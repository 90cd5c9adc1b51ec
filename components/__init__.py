"""The pipeline's steps as KFP components, one folder each.

Every folder holds ``component.py`` (a lightweight KFP component whose body
calls the step's ``run`` from the installed ``video_kd`` package, so it runs
in our image) and ``__main__.py`` (the same step as a plain command,
``python -m components.<step> --help``).  Where things live:

==================  ===============================  ====================================
component           step logic                       what else it uses
==================  ===============================  ====================================
check_inputs        ``video_kd.steps.check_inputs``          every step's own checks
                    (``check_pipeline_params``)      (``video_kd.steps.*``); reads and
                                                     writes nothing
data_prep           ``video_kd.steps.data_prep``     ``video_kd.data.data_layout``, ``.data_check``,
                                                     ``.data_stream``, ``.reencode``,
                                                     ``.dataset`` (generated data), ``.runs``
teacher_download    ``video_kd.steps.teacher``       ``video_kd.storage.download``,
                                                     ``video_kd.distill.teacher_checkpoint``
train               ``video_kd.steps.train``         ``video_kd.distill.train_config`` (the one
                                                     mapping of options onto config keys),
                                                     ``video_kd.backends``; each training
                                                     process: ``video_kd.distill.train_pod``
convert             ``video_kd.steps.convert``       ``video_kd.distill.convert``
evaluate            ``video_kd.steps.evaluate``      ``video_kd.distill.evaluate``, ``.steps.report``
export              ``video_kd.steps.export``        ``video_kd.deploy.deployable`` (export, speed,
                                                     plots, model_card)
promote             ``video_kd.steps.promote``       ``video_kd.deploy.promotion`` (the gate,
                                                     its compare-and-swap, the history)
==================  ===============================  ====================================

The pipeline that chains them is ``pipelines/kd_pipeline.py``.
"""

DEFAULT_IMAGE = 'ghcr.io/kubeflow-video-kd/video-kd:0.1.0'
STEPS = ('check_inputs', 'data_prep', 'teacher_download', 'train', 'convert', 'evaluate', 'export',
         'promote')  # fmt: skip
