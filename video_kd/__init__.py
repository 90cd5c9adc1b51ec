"""Knowledge distillation of MMAction2 video recognizers with MMRazor.

Importing this package first installs :mod:`video_kd.openmmlab.compat`, which must run
before any OpenMMLab import.
"""

import warnings

# Known and harmless at our pins, silenced before anything can raise them: mmengine
# imports pkg_resources (hence setuptools<81), and mmcv-lite has no compiled
# deformable attention (TSM/TSN never use it).
warnings.filterwarnings('ignore', message='pkg_resources is deprecated')
warnings.filterwarnings('ignore', message='Fail to import ``MultiScaleDeformableAttention``')

from video_kd.openmmlab import compat  # noqa: E402,F401  (before any OpenMMLab import)

__version__ = '0.1.0'
