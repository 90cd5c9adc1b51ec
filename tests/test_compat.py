"""video_kd.openmmlab.compat: the stand-ins make the pinned OpenMMLab stack import, and fail loudly."""

import subprocess
import sys

import pytest

import video_kd  # noqa: F401
from video_kd.openmmlab import compat


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)


def test_stand_ins_are_installed_by_importing_the_package():
    assert compat.is_installed()


def test_openmmlab_imports_and_registers_what_kd_needs():
    import mmaction.models  # noqa: F401
    import mmrazor.models  # noqa: F401
    from mmaction.registry import MODELS as MMACTION_MODELS
    from mmrazor.registry import MODELS as MMRAZOR_MODELS

    assert MMRAZOR_MODELS.get('SingleTeacherDistill') is not None
    assert MMRAZOR_MODELS.get('DISTLoss') is not None
    assert MMACTION_MODELS.get('MobileNetV2TSM') is not None


@pytest.mark.parametrize(
    'use',
    [
        lambda: __import__('mmaction.models.localizers', fromlist=['DRN']).DRN(),
        lambda: __import__(
            'mmrazor.structures.quantization', fromlist=['QConfigHandler']
        ).QConfigHandler({}),
        lambda: __import__(
            'mmrazor.structures.quantization', fromlist=['BackendConfigs']
        ).BackendConfigs['native'],
        lambda: __import__('mmpretrain.models.utils.box_utils', fromlist=['box_iou']).box_iou(1, 2),
    ],
    ids=['drn', 'qconfig', 'backend-configs', 'mmpretrain-box-ops'],
)
def test_every_stubbed_feature_raises_a_clear_error(use):
    with pytest.raises(compat.StubbedFeatureError, match='not available in this installation'):
        use()


def test_without_compat_the_pinned_stack_does_not_import():
    """Guards the reason compat exists: if this starts passing, drop the stand-in."""
    result = run_python('import mmaction.models')
    assert result.returncode != 0
    assert 'mmaction.models.localizers.drn' in result.stderr


def test_importing_compat_after_openmmlab_fails_loudly():
    result = run_python('import mmrazor\nimport video_kd')
    assert result.returncode != 0
    assert 'CompatError' in result.stderr
    assert 'must be imported before any OpenMMLab package' in result.stderr


def test_mmengine_checkpoints_load_on_current_torch(tmp_path):
    """torch>=2.6 defaults to weights_only=True; mmengine's own checkpoints need more."""
    import numpy as np
    import torch
    from mmengine.logging.history_buffer import HistoryBuffer
    from mmengine.runner.checkpoint import CheckpointLoader

    path = tmp_path / 'ckpt.pth'
    torch.save(
        {
            'state_dict': {'w': torch.ones(1)},
            'message_hub': {'log': HistoryBuffer(np.array([1.0]), np.array([1]))},
        },
        path,
    )
    loaded = CheckpointLoader.load_checkpoint(str(path), map_location='cpu')
    assert loaded['state_dict']['w'].item() == 1.0


def test_the_package_imports_no_torch_yet_mmengine_checkpoints_load(tmp_path):
    """mmengine's checkpoint loader is re-registered once mmengine's checkpoint module is
    imported (compat._AfterImport), not by `import video_kd`: `video-kd runs` or `--help`
    does not pay for torch and mmengine, and a checkpoint still loads."""
    path = str(tmp_path / 'ckpt.pth')
    result = run_python(
        'import sys\n'
        'import video_kd\n'
        "print(sorted({'torch', 'mmengine'} & {m.split('.')[0] for m in sys.modules}))\n"
        'import numpy as np, torch\n'
        'from mmengine.logging.history_buffer import HistoryBuffer\n'
        'log = HistoryBuffer(np.array([1.0]), np.array([1]))\n'
        f"torch.save({{'message_hub': {{'log': log}}}}, {path!r})\n"
        'from mmengine.runner.checkpoint import CheckpointLoader\n'
        f"loaded = CheckpointLoader.load_checkpoint({path!r}, map_location='cpu')\n"
        "print(type(loaded['message_hub']['log']).__name__)\n"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()  # mmengine logs its loader between the two
    assert (lines[0], lines[-1]) == ('[]', 'HistoryBuffer')
