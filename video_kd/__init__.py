"""Knowledge distillation of MMAction2 video recognizers with MMRazor.

Importing this package first installs :mod:`video_kd.openmmlab.compat`, which must run
before any OpenMMLab import, and registers the quick exit of
:func:`video_kd.core.process.freeze_heap_at_exit`.
"""

import warnings

# Known and harmless at our pins, silenced before anything can raise them: mmengine
# imports pkg_resources (hence setuptools<81), and mmcv-lite has no compiled
# deformable attention (TSM/TSN never use it).
warnings.filterwarnings('ignore', message='pkg_resources is deprecated')
warnings.filterwarnings('ignore', message='Fail to import ``MultiScaleDeformableAttention``')

from video_kd.core.process import freeze_heap_at_exit  # noqa: E402
from video_kd.openmmlab import compat  # noqa: E402,F401  (before any OpenMMLab import)

freeze_heap_at_exit()  # every step's process: a 0.4 s exit instead of 1.2 s

__version__ = '0.1.0'
