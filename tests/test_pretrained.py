"""ImageNet initialisation of the student: fetched over HTTP/S3, loaded by MMAction2, verified.

The "ImageNet" files are made here from the 2D backbones MMAction2's TSM/TSN backbones
inflate, in the layouts the seed's URLs serve: an mmcls classifier checkpoint
(``backbone.*`` + ``head.*``, what ``mmcls://mobilenet_v2`` is) and a torchvision
ResNet-50 state dict (``conv1.weight``, ``bn1.*``, ..., ``fc.*``, what
``torchvision://resnet50`` is; mmpretrain's ResNet uses the same names).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
import torch

import video_kd  # noqa: F401  (compat before OpenMMLab)
from video_kd.core.errors import run_cli
from video_kd.distill.pretrained import (
    HASH_NAMING_HOSTS,
    SEED_IMAGENET_WEIGHTS,
    PretrainedWeightsError,
    apply_pretrained,
    describe_weights,
    fetch_pretrained,
    name_hash,
)
from video_kd.openmmlab.config import load_config, student_model_cfg
from video_kd.storage import s3

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

    from video_kd.openmmlab.runtime import register_all_modules

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
    with caplog.at_level(logging.WARNING, logger='video_kd.openmmlab.config'):
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


# --------------------------------------------------------------------------- the seed's files
README = Path(__file__).resolve().parent.parent / 'docs' / 'training.md'  # the README's page


def test_the_seeds_file_names_carry_their_hash_prefix():
    assert {backbone: name_hash(url) for backbone, url in SEED_IMAGENET_WEIGHTS.items()} == {
        'MobileNetV2TSM': '3b2dc3af',
        'ResNetTSM': '0676ba61',
        'ResNet': '11ad3fa6',
    }
    assert name_hash('/data/resnet50-0676ba61.pth') == '0676ba61'  # a copy of a seed file
    cached = 's3://b/kd/cache/pretrained/' + 'a' * 64 + '/resnet50-11ad3fa6.pth'
    assert name_hash(cached) == '11ad3fa6'
    assert name_hash('https://example.com/weights/model-20200708.pth') is None  # not a hash here


@pytest.mark.parametrize(
    ('config', 'backbone'),
    [
        ('tsm_imagenet-pretrained-mobilenetv2_8xb16-1x1x8-100e_kinetics400-rgb', 'MobileNetV2TSM'),
        ('tsm_imagenet-pretrained-r50_8xb16-1x1x8-50e_kinetics400-rgb', 'ResNetTSM'),
        ('tsn_imagenet-pretrained-r50_8xb32-1x1x8-100e_kinetics400-rgb', 'ResNet'),
        ('kd_logits_tsm-res50_tsm-mobilenetv2_8xb16_k400', 'MobileNetV2TSM'),
        ('kd_logits_tsn-swin_tsn-r50_8xb16_k400', 'ResNet'),
    ],
)
def test_the_seeds_weights_are_what_mmaction2s_configs_name(config, backbone):
    """mmcls:// and torchvision:// resolved with mmengine's own tables, as mmengine would."""
    import mmengine
    from mmengine.runner.checkpoint import get_mmcls_models

    from video_kd.distill.pretrained import seed_weights

    online = load_config(config, {'allow_pretrained_download': True})
    named = student_model_cfg(online).backbone.pretrained
    hub = Path(mmengine.__path__[0]) / 'hub'
    zoo = {
        'mmcls://': get_mmcls_models(),
        'torchvision://': mmengine.load(hub / 'torchvision_0.12.json'),
    }
    for scheme, urls in zoo.items():
        if named.startswith(scheme):
            named = urls[named.removeprefix(scheme)]
    assert named == SEED_IMAGENET_WEIGHTS[backbone] == seed_weights(load_config(config))


def test_the_readme_lists_the_seeds_weights_for_each_student():
    section = README.read_text().split("## The seed's own weights", 1)[1].split('\n## ', 1)[0]
    for url in SEED_IMAGENET_WEIGHTS.values():
        assert f'`{url}`' in section, url


def test_a_sha256_that_contradicts_the_file_name_is_refused_before_fetching(tmp_path):
    url = SEED_IMAGENET_WEIGHTS['ResNetTSM']
    with pytest.raises(PretrainedWeightsError) as error:
        fetch_pretrained(url, tmp_path / 'dest', 'AB' * 32)  # no network here: never fetched
    assert str(error.value) == (
        'student_pretrained_sha256 abababababab... is not the SHA-256 of resnet50-0676ba61.pth: '
        'its name carries the first 8 hex digits, 0676ba61; pin the full value that '
        f'`python -m video_kd.distill.pretrained CONFIG {url}` prints'
    )
    assert not (tmp_path / 'dest').exists()


def test_the_train_step_refuses_a_contradicting_sha256_before_publishing(bucket):
    from video_kd.distill.train_config import TrainOptions
    from video_kd.runs import RunLayout
    from video_kd.steps import train as train_step

    layout = RunLayout(bucket, 'kd', 'run-1')
    data_meta = {'run_root': layout.root, 'num_classes': 3, 'videos_uri': f's3://{bucket}/d/videos'}
    options = TrainOptions(
        student_pretrained_url=SEED_IMAGENET_WEIGHTS['MobileNetV2TSM'],
        student_pretrained_sha256='0' * 64,
    )
    with pytest.raises(PretrainedWeightsError, match=r'its name carries .* 3b2dc3af'):
        train_step.publish_config(layout, data_meta, {'sha256': 'a' * 64}, KD_TSM, options)
    assert not s3.list_uris(layout.root + '/')


def _claimed_run(bucket):
    from video_kd import runs
    from video_kd.runs import RunLayout

    layout = RunLayout(bucket, 'kd', 'run-1')
    runs.claim_run(layout)
    data_meta = {'run_root': layout.root, 'num_classes': 3, 'videos_uri': f's3://{bucket}/d/videos'}
    return layout, data_meta


def test_without_a_sha256_the_train_step_fetches_checks_caches_and_pins_once(
    bucket, http_server, tmp_path, monkeypatch, caplog, mobilenet_v2_classifier
):
    """No student_pretrained_sha256: the step fetches the file once, checks its content
    against the hash prefix in its name (on a host that names files so), caches it under
    the SHA-256 it computed and writes that value into the resolved config, so the
    training processes read the S3 copy, checked, and the log gives the value to pin."""
    from video_kd.distill import pretrained, train_config
    from video_kd.distill.train_config import TrainOptions
    from video_kd.steps import train as train_step

    monkeypatch.setattr(pretrained, 'HASH_NAMING_HOSTS', (*HASH_NAMING_HOSTS, '127.0.0.1'))
    content = mobilenet_v2_classifier[0].read_bytes()  # weights that fit: checked before publish
    sha = hashlib.sha256(content).hexdigest()
    name = f'mobilenet_v2_imagenet-{sha[:8]}.pth'
    (http_server.root / name).write_bytes(content)
    layout, data_meta = _claimed_run(bucket)
    options = TrainOptions(student_pretrained_url=http_server.url(name))
    with caplog.at_level(logging.INFO):
        config_uri = train_step.publish_config(
            layout, data_meta, {'sha256': 'a' * 64}, KD_TSM, options
        )
    cached = layout.cache_uri('pretrained', sha, name)
    assert s3.read_bytes(cached) == content
    assert s3.list_uris(layout.shared_uri('pretrained') + '/') == [cached]
    resolved = train_config.load_resolved(s3.download_file(config_uri, tmp_path / 'config.py'))
    assert resolved.student_pretrained == {
        'url': http_server.url(name),
        'sha256': sha,
        'fetch_from': cached,
    }
    assert http_server.requests[name] == 1
    assert 'not fetched (offline)' not in caplog.text  # no "random init" warning
    assert f'Pin it: student_pretrained_sha256 / --student-pretrained-sha256 {sha}' in caplog.text
    # what each training process then does: the S3 copy, checked against that sha256
    fetched = pretrained.fetch_pretrained(
        resolved.student_pretrained.fetch_from, tmp_path / 'pod', resolved.student_pretrained.sha256
    )
    assert fetched.read_bytes() == content and http_server.requests[name] == 1


def test_without_a_sha256_content_that_is_not_its_name_is_refused_and_nothing_cached(
    bucket, http_server, tmp_path, monkeypatch
):
    from video_kd.distill import pretrained
    from video_kd.distill.train_config import TrainOptions
    from video_kd.steps import train as train_step

    monkeypatch.setattr(pretrained, 'HASH_NAMING_HOSTS', (*HASH_NAMING_HOSTS, '127.0.0.1'))
    content = b'imagenet weights'
    sha = hashlib.sha256(content).hexdigest()
    wrong = '0' * 8 if not sha.startswith('0' * 8) else '1' * 8
    name = f'mobilenet_v2_imagenet-{wrong}.pth'
    (http_server.root / name).write_bytes(content)
    layout, data_meta = _claimed_run(bucket)
    options = TrainOptions(student_pretrained_url=http_server.url(name))
    with pytest.raises(PretrainedWeightsError) as error:
        train_step.publish_config(layout, data_meta, {'sha256': 'a' * 64}, KD_TSM, options)
    assert str(error.value) == (
        f'{name} has SHA-256 {sha}, its name says {wrong}...: a corrupt or replaced file; '
        'do not pin it'
    )
    assert http_server.requests[name] == 1
    assert not s3.list_uris(layout.shared_uri('pretrained') + '/')
    assert not s3.list_uris(layout.root + '/train/')
    # each process's own fetch (video_kd.distill.train without a sha256) is checked the same way
    with pytest.raises(PretrainedWeightsError, match='its name says'):
        pretrained.fetch_pretrained(http_server.url(name), tmp_path / 'local')
    assert not any((tmp_path / 'local').iterdir())


@pytest.mark.parametrize('pinned', [True, False], ids=['pinned', 'unpinned'])
def test_weights_that_do_not_fit_are_refused_before_the_config_is_published(
    bucket, http_server, pinned
):
    """Issue 25 point 4: the pretrained-weights fit is checked by the train step before
    ``train/config.py`` is published (and before the shared cache keeps them), so a wrong
    file does not lock the run ("holds another training config")."""
    from video_kd.distill.train_config import TrainOptions
    from video_kd.steps import train as train_step

    path = http_server.root / 'not_mobilenet.pth'
    torch.save({'state_dict': {'backbone.stem.weight': torch.ones(4, 3, 3, 3)}}, path)
    sha = s3.sha256_file(path)
    layout, data_meta = _claimed_run(bucket)
    options = TrainOptions(
        student_pretrained_url=http_server.url(path.name),
        student_pretrained_sha256=sha if pinned else '',
    )
    with pytest.raises(PretrainedWeightsError, match='MobileNetV2TSM'):
        train_step.publish_config(layout, data_meta, {'sha256': 'a' * 64}, KD_TSM, options)
    assert not s3.list_uris(layout.root + '/train/')
    assert not s3.list_uris(layout.shared_uri('pretrained') + '/')


def test_the_train_cli_refuses_a_contradicting_sha256_in_one_line(tmp_path):
    from conftest import run_module

    url = SEED_IMAGENET_WEIGHTS['ResNet']
    result = run_module(
        'video_kd.distill.train', TSM_R50,
        '--work-dir', tmp_path / 'work', '--student-pretrained-url', url,
        '--student-pretrained-sha256', '1' * 64,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        'error: student_pretrained_sha256 111111111111... is not the SHA-256 of '
    )
    assert 'Traceback' not in result.stderr and not (tmp_path / 'work').exists()
    assert 'not fetched (offline)' not in result.stderr  # the weights are given: no warning


def test_the_cli_prints_the_sha256_to_pin_and_lists_the_seeds_weights(
    capsys, mobilenet_v2_classifier
):
    from conftest import run_module

    from video_kd.distill import pretrained

    path, _ = mobilenet_v2_classifier
    result = run_module('video_kd.distill.pretrained', TSM_MOBILENET, path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == f'{s3.sha256_file(path)}  {path}\n'  # mmengine's log: stderr
    assert 'all 260 tensors loaded' in result.stderr
    with pytest.raises(SystemExit):
        pretrained.main(['--help'])
    listed = capsys.readouterr().out.splitlines()
    for backbone, url in SEED_IMAGENET_WEIGHTS.items():
        assert f'  {backbone}: {url}' in listed


def test_the_cli_refuses_a_seed_file_whose_content_is_not_its_name(
    tmp_path, capsys, mobilenet_v2_classifier
):
    from video_kd.distill import pretrained

    path, _ = mobilenet_v2_classifier
    name = SEED_IMAGENET_WEIGHTS['MobileNetV2TSM'].rsplit('/', 1)[1]
    impostor = tmp_path / name
    impostor.write_bytes(path.read_bytes())  # the right layout, not the published bytes
    assert run_cli(pretrained.main, [TSM_MOBILENET, str(impostor)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ''
    assert captured.err.strip().splitlines()[-1] == (
        f'error: {name} has SHA-256 {s3.sha256_file(path)}, its name says 3b2dc3af...: a '
        'corrupt or replaced file; do not pin it'
    )


@pytest.mark.slow
def test_the_train_cli_trains_from_the_imagenet_weights(
    tmp_path, kd_data, http_server, mobilenet_v2_classifier
):
    """``python -m video_kd.distill.train --student-pretrained-url``: mmengine's Runner initialises
    the student from the file; with lr 0, one epoch later every convolution still holds the
    file's weights (BN statistics move; weights do not)."""
    from conftest import TINY_TRAIN, run_module

    path, backbone_2d = mobilenet_v2_classifier
    (http_server.root / path.name).write_bytes(path.read_bytes())
    work_dir = tmp_path / 'work'
    result = run_module(
        'video_kd.distill.train', TSM_MOBILENET, '--work-dir', work_dir, '--data-root', kd_data,
        '--max-epochs', '1', '--student-pretrained-url', http_server.url(path.name),
        '--student-pretrained-sha256', s3.sha256_file(path),
        *TINY_TRAIN, 'optim_wrapper.optimizer.lr=0.0',
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'all 260 tensors loaded' in result.stderr
    assert 'not fetched (offline)' not in result.stderr  # no "random init" before that line
    state = torch.load(work_dir / 'epoch_1.pth', map_location='cpu', weights_only=False)
    trained = {
        key.removeprefix('backbone.').replace('.net.', '.'): value
        for key, value in state['state_dict'].items()
        if key.startswith('backbone.') and key.endswith('conv.weight')
    }
    assert len(trained) == 52
    for key, value in trained.items():
        torch.testing.assert_close(value, backbone_2d[key], rtol=0, atol=0)


# --------------------------------------------------------------------------- the pods' path
GEN = 'generate://?num_classes=3&train_per_class=4&val_per_class=2&num_frames=12'


class _FirstStepReached(Exception):
    """Raised by the hook below: the test needs the Runner's state before any step."""


def _student_backbone_before_the_first_step(cfg) -> dict[str, torch.Tensor]:
    """Build the mmengine Runner from ``cfg`` and run it up to ``before_train``: after
    ``init_weights`` and checkpoint loading, before the first batch; the student's
    backbone state then."""
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    snapshot = {}

    class Snapshot(Hook):
        def before_train(self, runner) -> None:
            student = getattr(runner.model, 'architecture', runner.model)
            snapshot.update({k: v.clone() for k, v in student.backbone.state_dict().items()})
            raise _FirstStepReached

    runner = Runner.from_cfg(cfg)
    runner.register_hook(Snapshot(), priority='LOWEST')
    with pytest.raises(_FirstStepReached):
        runner.train()
    return snapshot


def _random_teacher(kd_config: str, num_classes: int, path) -> str:
    """A checkpoint that fits the KD config's teacher (random weights: the student is tested)."""
    from mmrazor.registry import MODELS

    from video_kd.openmmlab.config import set_num_classes
    from video_kd.openmmlab.runtime import register_all_modules

    register_all_modules()
    teacher_cfg = load_config(kd_config).model.teacher
    set_num_classes(teacher_cfg, num_classes)
    torch.save({'state_dict': MODELS.build(teacher_cfg).state_dict()}, path)
    return str(path)


@pytest.mark.slow
def test_the_pods_initialise_the_student_from_the_runs_s3_cache(
    bucket, http_server, tmp_path, mobilenet_v2_classifier
):
    """What a training pod does, step by step, with the train step's own functions: the
    step caches the weights in S3 by checksum and publishes the resolved config; the pod
    fetches its inputs (``video_kd.distill.train_pod``), localizes the config (which fetches the
    weights from the cache, checks and applies them) and builds the mmengine Runner.  When
    training starts, the student's backbone holds exactly the file's tensors, and the
    internet (here: the HTTP server, emptied after the step) was asked once."""
    from video_kd.data.data_stream import use_dataset
    from video_kd.distill import train_config, train_pod
    from video_kd.distill.train_config import TrainOptions
    from video_kd.runs import RunLayout
    from video_kd.steps import data_prep
    from video_kd.steps import teacher as teacher_step
    from video_kd.steps import train as train_step

    path, backbone_2d = mobilenet_v2_classifier
    served = http_server.root / path.name
    served.write_bytes(path.read_bytes())
    sha = s3.sha256_file(path)
    data_meta = data_prep.run(GEN, bucket, 'kd', workdir=tmp_path / 'prep')
    layout = RunLayout.from_root(data_meta['run_root'])
    ckpt = _random_teacher(KD_TSM, int(data_meta['num_classes']), tmp_path / 'teacher.pth')
    teacher = teacher_step.run(
        layout.root, ckpt, s3.sha256_file(ckpt), kd_config=KD_TSM, num_classes=3
    )
    options = TrainOptions(
        student_pretrained_url=http_server.url(path.name),
        student_pretrained_sha256=sha,
        cfg_options=['train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
                     'val_dataloader.num_workers=0', 'val_dataloader.persistent_workers=False'],
    )  # fmt: skip
    config_uri = train_step.publish_config(layout, data_meta, teacher, KD_TSM, options)
    served.unlink()  # from here on, only the run's S3 cache has the weights

    work = tmp_path / 'pod'
    argv = train_step.pod_command(layout, config_uri, data_meta, teacher, str(work))[2:]
    args = train_pod.parse_args(argv)  # what the pod's torchrun gets
    inputs, train_dir = work / 'inputs', work / 'mmengine'
    train_pod.fetch_inputs(args, layout, inputs, train_dir)
    cfg = train_config.load_resolved(inputs / train_config.CONFIG_NAME)
    assert cfg.student_pretrained.fetch_from == layout.cache_uri('pretrained', sha, path.name)
    train_config.localize(cfg, work_dir=train_dir, teacher_ckpt=inputs / 'teacher.pth')
    use_dataset(cfg, s3.read_json(args.data_meta))

    loaded = _student_backbone_before_the_first_step(cfg)
    floats = {key: value for key, value in loaded.items() if torch.is_floating_point(value)}
    assert len(floats) == 260
    for key, value in floats.items():
        torch.testing.assert_close(value, backbone_2d[key.replace('.net.', '.')], rtol=0, atol=0)
    assert http_server.requests[path.name] == 1  # the step's fetch; the pod read S3
