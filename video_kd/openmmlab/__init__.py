"""What the OpenMMLab stack needs from us: version shims, registration, config loading.

``compat`` patches the pinned stack (run first, from ``video_kd/__init__``), ``runtime``
fills the registries and sets up distributed processes, ``config`` loads our configs
(``configs/``) and checks ``--cfg-options`` against them, ``checkpoints`` reads and
writes checkpoint files.
"""
