"""The pipeline's steps, one module each; the KFP components and their plain entry points call them.

=================  ==================================================================
module             the step
=================  ==================================================================
``data_prep``      validate a dataset, claim the run, publish the cleaned lists (``data/``)
``teacher``        fetch the teacher (verified, cached by checksum) into ``teacher/``
``train``          resolve the training config once, run it as a PyTorchJob / locally
``convert``        KD checkpoint -> student-only checkpoint in ``student/``
``evaluate``       MMAction2's test loop on val: student, teacher, student alone (``eval/``)
``report``         the evaluation's Markdown report
``export``         the deployable student: ONNX verified, speed, plots, model card (``export/``)
``common``         what the steps share: scratch dirs, verified fetches, artifact look-ups
=================  ==================================================================

Each step module has a ``run(...)`` that reads its inputs from S3, writes its
outputs under the run's directory (``video_kd.runs``), records them in the
run's manifest and returns the metadata of its KFP output artifact, a typed
record of ``video_kd.core.artifacts`` (``Dataset``, ``Teacher``, ``KDModel``, ...).
The training processes themselves start in ``video_kd.distill.train_pod``.
"""
