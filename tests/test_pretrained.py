"""ImageNet initialisation of the student: fetched over HTTP/S3, loaded by MMAction2, verified.

The "ImageNet" files are made here from the 2D backbones MMAction2's TSM/TSN backbones
inflate, in the layouts the seed's URLs serve: an mmcls classifier checkpoint
(``backbone.*`` + ``head.*``, what ``mmcls://mobilenet_v2`` is) and a torchvision
ResNet-50 state dict (``conv1.weight``, ``bn1.*``, ..., ``fc.*``, what
``torchvision://resnet50`` is; mmpretrain's ResNet uses the same names).
"""

from __future__ import annotations

import logging

import pytest
import torch

import video_kd  # noqa: F401  (compat before OpenMMLab)
from video_kd import s3
from video_kd.config import load_config, student_model_cfg
from video_kd.pretrained import (
    PretrainedWeightsError,
    apply_pretrained,
    describe_weights,
    fetch_pretrained,
)

TSM_MOBILENET = 'tsm_mobilenetv2_tiny'
KD_TSM = 'kd_logits_tsm-res50_tsm-mobilenetv2_tiny'
TSM_R50 = 'tsm_r50_tiny'
KD_TSN = 'kd_logits_tsn-swin_tsn-r50_tiny'  # TSN-R50 student: MMAction2's plain ResNet


def random_like(state: dict) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        key: torch.randn(value.shape, generator=generator)
        if torch.is_floating_point(value)
        else value
        for key, value in state.items()
    }


@pytest.fixture(scope='module')
def mobilenet_v2_classifier(tmp_path_factory):
    """mmcls's ImageNet MobileNetV2 layout: backbone.* and a 1000-class head."""
    from mmaction.models.backbones import MobileNetV2

    backbone = random_like(MobileNetV2().state_dict())
    state = {f'backbone.{key}': value for key, value in backbone.items()}
    state.update({'head.fc.weight': torch.randn(1000, 1280), 'head.fc.bias': torch.zeros(1000)})
    path = tmp_path_factory.mktemp('imagenet') / 'mobilenet_v2_imagenet.pth'
    torch.save({'state_dict': state, 'meta': {'CLASSES': ['tench']}}, path)
    return path, backbone


@pytest.fixture(scope='module')
def resnet50_torchvision(tmp_path_factory):
    """torchvision's ImageNet ResNet-50 layout (mmpretrain's ResNet has its names)."""
    from mmpretrain.models.backbones import ResNet

    state = random_like(ResNet(depth=50).state_dict())
    state = {key: value for key, value in state.items() if 'num_batches_tracked' not in key}
    state.update({'fc.weight': torch.randn(1000, 2048), 'fc.bias': torch.zeros(1000)})
    path = tmp_path_factory.mktemp('imagenet') / 'resnet50-imagenet.pth'
    torch.save(state, path)
    return path, state


def build_student(cfg):
    """The student as the Runner builds and initialises it."""
    from mmaction.registry import MODELS
    from mmengine.registry import DefaultScope

    from video_kd.runtime import register_all_modules

    register_all_modules()
    with DefaultScope.overwrite_default_scope('mmaction'):
        model = MODELS.build(student_model_cfg(cfg))
    model.init_weights()
    return model


@pytest.mark.parametrize('config', [TSM_MOBILENET, KD_TSM])
def test_mobilenet_v2_tsm_loads_every_tensor_the_mmaction_way(config, mobilenet_v2_classifier):
    path, backbone_2d = mobilenet_v2_classifier
    cfg = load_config(config)
    report = apply_pretrained(cfg, path)
    assert report['backbone'] == 'MobileNetV2TSM' and report['pretrained2d']
    assert report['loaded'] == 260  # what pretrained2d=False silently cut to 250
    backbone = student_model_cfg(cfg).backbone
    assert backbone.pretrained.endswith('mobilenet_v2_imagenet_backbone.pth')
    assert backbone.pretrained2d is True
    loaded = build_student(cfg).backbone.state_dict()
    shifted = {key.split('.net.')[0] for key in loaded if '.net.' in key}
    assert len(shifted) == 10  # temporally shifted convs: loaded through the .net wrapper
    for key, value in loaded.items():
        if torch.is_floating_point(value):
            torch.testing.assert_close(
                value, backbone_2d[key.replace('.net.', '.')], rtol=0, atol=0
            )


@pytest.mark.parametrize('config', [TSM_R50, KD_TSN])
def test_resnet50_students_load_torchvision_weights(config, resnet50_torchvision):
    path, state = resnet50_torchvision
    cfg = load_config(config)
    report = apply_pretrained(cfg, path)
    assert report['file'] == str(path)  # torchvision's layout is read as it is
    assert report['loaded'] == report['file_tensors'] - 2  # all but fc.weight, fc.bias
    backbone = build_student(cfg).backbone
    conv1 = backbone.conv1.conv.weight
    torch.testing.assert_close(conv1, state['conv1.weight'], rtol=0, atol=0)
    last = backbone.layer4[2].conv3.conv
    last = getattr(last, 'net', last)  # TSM wraps some convs
    torch.testing.assert_close(last.weight, state['layer4.2.conv3.weight'], rtol=0, atol=0)


def test_a_file_for_another_backbone_names_expected_and_found(mobilenet_v2_classifier):
    path, _ = mobilenet_v2_classifier
    with pytest.raises(PretrainedWeightsError) as error:
        apply_pretrained(load_config(TSM_R50), path)
    message = str(error.value)
    assert "do not fit the student's backbone ResNetTSM" in message
    assert 'expected a ResNet-50' in message and 'found a MobileNetV2 (312 tensors)' in message
    assert '\n' not in message


def test_a_resnet_file_for_mobilenet_is_refused(resnet50_torchvision):
    path, _ = resnet50_torchvision
    with pytest.raises(
        PretrainedWeightsError, match=r'MobileNetV2TSM: expected a MobileNetV2 .* found a ResNet-50'
    ):
        apply_pretrained(load_config(TSM_MOBILENET), path)


@pytest.mark.parametrize(
    ('config', 'named'),
    [
        (TSM_R50, r'4 of 265 backbone tensors not loaded \(e\.g\. layer4\.2\.conv3\.bn\.'),
        (KD_TSN, r'the file has no layer4\.2\.bn3\.weight'),
    ],
)
def test_missing_tensors_are_named(config, named, tmp_path, resnet50_torchvision):
    _, state = resnet50_torchvision
    partial = {key: value for key, value in state.items() if not key.startswith('layer4.2.bn3')}
    torch.save(partial, tmp_path / 'partial.pth')
    with pytest.raises(PretrainedWeightsError, match=named):
        apply_pretrained(load_config(config), tmp_path / 'partial.pth')


def test_fetched_over_http_checked_and_cached_in_s3(
    http_server, bucket, tmp_path, mobilenet_v2_classifier
):
    path, _ = mobilenet_v2_classifier
    (http_server.root / path.name).write_bytes(path.read_bytes())
    sha = s3.sha256_file(path)
    cache = f's3://{bucket}/video-kd/cache'
    first = fetch_pretrained(http_server.url(path.name), tmp_path / 'a', sha, cache=cache)
    assert s3.sha256_file(first) == sha
    assert s3.exists(f'{cache}/pretrained/{sha}/{path.name}')
    second = fetch_pretrained(http_server.url(path.name), tmp_path / 'b', sha, cache=cache)
    assert http_server.requests[path.name] == 1  # the second came from the S3 cache
    assert apply_pretrained(load_config(TSM_MOBILENET), second)['loaded'] == 260


def test_a_wrong_checksum_is_a_user_error_and_leaves_nothing(
    http_server, tmp_path, mobilenet_v2_classifier
):
    path, _ = mobilenet_v2_classifier
    (http_server.root / path.name).write_bytes(path.read_bytes())
    with pytest.raises(PretrainedWeightsError, match='SHA-256 mismatch'):
        fetch_pretrained(http_server.url(path.name), tmp_path / 'd', '0' * 64)
    assert not any((tmp_path / 'd').iterdir())


def test_without_weights_the_student_starts_from_random_init_and_the_log_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger='video_kd.config'):
        cfg = load_config(TSM_MOBILENET)
    backbone = student_model_cfg(cfg).backbone
    assert backbone.pretrained is None and backbone.pretrained2d is False
    assert 'mmcls://mobilenet_v2 not fetched (offline): random init' in caplog.text
    assert '--student-pretrained-url URL' in caplog.text


def test_cfg_options_reach_the_offline_switch_and_a_local_file(mobilenet_v2_classifier):
    allowed = load_config(TSM_MOBILENET, {'allow_pretrained_download': True})
    assert student_model_cfg(allowed).backbone.pretrained == 'mmcls://mobilenet_v2'
    path, _ = mobilenet_v2_classifier
    local = load_config(TSM_MOBILENET, {'model.backbone.pretrained': str(path)})
    assert 'pretrained2d' not in student_model_cfg(local).backbone  # MMAction2's default: True


def test_describe_weights_tells_common_backbones_apart(
    resnet50_torchvision, mobilenet_v2_classifier
):
    assert describe_weights(resnet50_torchvision[1]).startswith('a ResNet-50')
    assert describe_weights(mobilenet_v2_classifier[1]).startswith('a MobileNetV2')
    assert describe_weights({'x.weight': torch.zeros(1)}) == '1 tensors, e.g. x.weight'


TRAIN_WITH_WEIGHTS = """
import sys
from video_kd.errors import run_cli
from video_kd.pretrained import apply_pretrained
from video_kd import train

def main():
    args = train.parse_args(sys.argv[2:])
    train.setup_logging()
    cfg = train.build_config(args)
    apply_pretrained(cfg, sys.argv[1])  # where the train step / --pretrained will call it
    train.train(cfg)

raise SystemExit(run_cli(main))
"""


@pytest.mark.slow
def test_the_runner_trains_from_the_imagenet_weights(tmp_path, kd_data, mobilenet_v2_classifier):
    """mmengine's Runner initialises the student from the file: with lr 0, one epoch later
    every convolution still holds the file's weights (BN statistics move; weights do not)."""
    import subprocess
    import sys

    from conftest import TINY_TRAIN

    path, backbone_2d = mobilenet_v2_classifier
    work_dir = tmp_path / 'work'
    argv = [str(path), TSM_MOBILENET, '--work-dir', str(work_dir), '--data-root', str(kd_data)]
    argv += ['--max-epochs', '1', *TINY_TRAIN, 'optim_wrapper.optimizer.lr=0.0']
    result = subprocess.run(
        [sys.executable, '-c', TRAIN_WITH_WEIGHTS, *argv],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'all 260 tensors loaded' in result.stderr
    state = torch.load(work_dir / 'epoch_1.pth', map_location='cpu', weights_only=False)
    trained = {
        key.removeprefix('backbone.').replace('.net.', '.'): value
        for key, value in state['state_dict'].items()
        if key.startswith('backbone.') and key.endswith('conv.weight')
    }
    assert len(trained) == 52
    for key, value in trained.items():
        torch.testing.assert_close(value, backbone_2d[key], rtol=0, atol=0)
