"""timm Swin -> mmpretrain Swin, proven numerically against timm's own model code.

timm (pinned, installed for the tests only with --no-deps: see the Makefile) builds
a real Swin-T; its state dict, in timm's >= 0.9 layout and in the 0.6 layout of the
seed's released teacher, is converted and loaded into mmpretrain's Swin-T, and both
models must compute the same features.  The stand-in for torchvision only lets timm
import: its Swin code never touches torchvision.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import video_kd  # noqa: F401  (compat before OpenMMLab)
from video_kd.distill import swin_convert
from video_kd.distill.swin_convert import (
    MMPRETRAIN,
    TIMM_06,
    TIMM_09,
    TeacherCheckpointError,
    convert_state_dict,
    detect_layout,
    timm_to_mmpretrain,
)

TOLERANCE = 1e-4
TIMM_PIN = '1.0.31'
TIMM_INSTALL = f'pip install --no-deps timm=={TIMM_PIN}'  # never its torchvision


def test_make_install_pins_the_timm_these_tests_use():
    makefile = (Path(__file__).resolve().parent.parent / 'Makefile').read_text()
    assert f'--no-deps "timm=={TIMM_PIN}"' in makefile


@pytest.fixture(scope='module')
def timm_swin():
    """timm's Swin-T (window 7, 224), headless as MMAction2 builds it, random weights."""
    import torchvision_standin

    with torchvision_standin.installed(dependents=('timm',)):  # removed again after the module
        try:
            import timm
        except ImportError:
            pytest.fail(f'timm is missing: `make install` installs it ({TIMM_INSTALL})')
        assert timm.__version__ == TIMM_PIN, f'timm {timm.__version__}: the tests pin {TIMM_PIN}'
        torch.manual_seed(0)
        model = timm.create_model('swin_tiny_patch4_window7_224', pretrained=False, num_classes=0)
        with torch.no_grad():  # norms away from 1/0 too, so a wrong channel order shows
            for param in model.parameters():
                param.add_(torch.randn_like(param) * 0.05)
        yield model.eval()


class Recognizer(torch.nn.Module):
    """What convert_state_dict needs of the teacher: a ``backbone``."""

    def __init__(self, backbone: torch.nn.Module):
        super().__init__()
        self.backbone = backbone


def mmpretrain_swin(arch: str = 'tiny') -> Recognizer:
    from mmpretrain.models.backbones import SwinTransformer

    return Recognizer(SwinTransformer(arch=arch, img_size=224, out_indices=(3,))).eval()


def backbone_prefixed(state: dict) -> dict:
    return {f'backbone.{key}': value for key, value in state.items()}


def timm_06_layout(state: dict) -> dict:
    """The seed checkpoint's layout: each PatchMerging at the end of its stage, buffers kept."""

    def stage_back(match: re.Match) -> str:
        return f'layers.{int(match.group(1)) - 1}.downsample'

    return {re.sub(r'layers\.(\d+)\.downsample', stage_back, key): v for key, v in state.items()}


def max_feature_difference(timm_model, converted: dict, reorder_ok: bool = True) -> float:
    teacher = mmpretrain_swin()
    teacher.load_state_dict(converted, strict=True)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = teacher.backbone(images)[0]  # N, C, H, W after norm3
        theirs = timm_model.forward_features(images).permute(0, 3, 1, 2)  # NHWC -> NCHW
    assert ours.shape == theirs.shape
    return float((ours - theirs).abs().max())


def timm_state(model, with_buffers: bool = True) -> dict:
    state = model.state_dict()
    if with_buffers:  # timm >= 0.9 keeps these out of state_dict(); 0.6 saved them
        state.update({name: buf for name, buf in model.named_buffers() if name not in state})
    return backbone_prefixed(state)


def test_timm_09_layout_gives_timms_features(timm_swin):
    state = timm_state(timm_swin, with_buffers=False)
    assert detect_layout(state) == TIMM_09
    converted, layout = convert_state_dict(state, mmpretrain_swin())
    assert layout == TIMM_09
    assert max_feature_difference(timm_swin, converted) < TOLERANCE


def test_timm_06_layout_gives_timms_features(timm_swin):
    from timm.models.swin_transformer import checkpoint_filter_fn

    old = timm_06_layout(timm_state(timm_swin))
    plain = {key.removeprefix('backbone.'): value for key, value in old.items()}
    # timm itself reads this as its old layout and loads it back exactly
    timm_swin.load_state_dict(checkpoint_filter_fn(plain, timm_swin), strict=True)
    assert detect_layout(old) == TIMM_06
    converted, layout = convert_state_dict(old, mmpretrain_swin())
    assert layout == TIMM_06
    assert max_feature_difference(timm_swin, converted) < TOLERANCE


def test_without_the_patch_merging_reorder_keys_fit_but_features_do_not(timm_swin):
    state = timm_state(timm_swin, with_buffers=False)
    converted = timm_to_mmpretrain(state, TIMM_09, reorder=False)
    expected = mmpretrain_swin().state_dict()
    for key, value in expected.items():
        converted.setdefault(key, value)  # the window constants, as convert_state_dict does
    assert set(converted) == set(expected)
    assert max_feature_difference(timm_swin, converted) > 100 * TOLERANCE


def test_an_mmpretrain_checkpoint_passes_unchanged():
    teacher = mmpretrain_swin()
    state = teacher.state_dict()
    converted, layout = convert_state_dict(dict(state), teacher)
    assert layout == MMPRETRAIN
    assert all(converted[key] is state[key] for key in state)


@pytest.mark.parametrize('naming', [TIMM_09, MMPRETRAIN])
def test_a_swin_of_another_size_is_named(naming, timm_swin):
    """A Swin-T checkpoint for a Swin-B teacher: the sizes, in timm's naming and in ours."""
    if naming == TIMM_09:
        state = timm_state(timm_swin, with_buffers=False)
    else:
        state = mmpretrain_swin('tiny').state_dict()
    assert detect_layout(state) == naming
    with pytest.raises(TeacherCheckpointError) as error:
        convert_state_dict(state, mmpretrain_swin('base'))
    message = str(error.value)
    assert message == (
        'teacher checkpoint is Swin-T (embed_dims 96, depths [2, 2, 6, 2], heads [3, 6, 12, 24], '
        "window 7), but the config's teacher is Swin-B (embed_dims 128, depths [2, 2, 18, 2], "
        'heads [4, 8, 16, 32], window 7)'
    )


def test_the_standin_leaves_no_trace(tmp_path):
    """After the block neither torchvision (the stand-in) nor timm (which holds its
    placeholders) is importable from the cache: later tests see the real environment."""
    script = """
import importlib.util, sys
import torchvision_standin
with torchvision_standin.installed(dependents=('timm',)):
    import timm  # imports torchvision.transforms & co at import time
    assert sys.modules['torchvision'].__version__ == '0.0.0+standin'
assert importlib.util.find_spec('torchvision') is None, 'the finder is still installed'
leftover = [name for name in sys.modules if name.split('.')[0] in ('torchvision', 'timm')]
assert not leftover, leftover
print('clean')
"""
    tests_dir = str(Path(__file__).resolve().parent)
    env = {
        **os.environ,
        'PYTHONPATH': os.pathsep.join([tests_dir, os.environ.get('PYTHONPATH', '')]),
    }
    result = subprocess.run(
        [sys.executable, '-c', script], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0 and result.stdout.strip() == 'clean', result.stderr[-2000:]


def test_an_unknown_layout_names_what_was_expected_and_found():
    state = {'backbone.conv1.weight': torch.zeros(1), 'cls_head.fc_cls.weight': torch.zeros(1)}
    with pytest.raises(
        TeacherCheckpointError,
        match=r'unknown layout: expected a TSN-Swin .* found 2 tensors, e\.g\. backbone\.conv1\.weight',
    ):
        convert_state_dict(state, mmpretrain_swin())


def test_unfold_order_matches_nn_unfold_on_a_real_feature_map():
    """timm's x0..x3 concatenation, permuted, is what nn.Unfold(2, stride=2) gives."""
    channels = 3
    x = torch.randn(1, 4, 4, channels)  # N, H, W, C as timm's PatchMerging sees it
    timm_order = torch.cat(
        [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1
    )
    unfolded = torch.nn.Unfold(kernel_size=2, stride=2)(x.permute(0, 3, 1, 2))  # N, 4C, L
    unfold_order = unfolded.transpose(1, 2).reshape(1, 2, 2, 4 * channels)
    assert torch.equal(swin_convert.unfold_order(timm_order), unfold_order)


# --------------------------------------------------------------------------- teacher step
TINY_KD = 'kd_logits_tsn-swin_tsn-r50_tiny'  # Swin-T teacher, 5 classes


def save_teacher(path, timm_model, layout_of=lambda state: state, classes: int = 5):
    state = layout_of(timm_state(timm_model, with_buffers=True))
    state['cls_head.fc_cls.weight'] = torch.randn(classes, 768)
    state['cls_head.fc_cls.bias'] = torch.randn(classes)
    torch.save({'state_dict': state, 'meta': {'note': 'timm Swin-T'}}, path)
    return path


def test_released_layout_is_converted_beside_the_source_and_fits_training(tmp_path, timm_swin):
    from video_kd.distill.teacher_checkpoint import convert_teacher_checkpoint
    from video_kd.distill.train_config import check_teacher_checkpoint
    from video_kd.openmmlab.config import load_config
    from video_kd.storage.s3 import sha256_file

    src = save_teacher(tmp_path / 'swin_t.pth', timm_swin, timm_06_layout)
    cfg = load_config(TINY_KD)
    dst, info = convert_teacher_checkpoint(src, cfg, num_classes=5)
    assert dst == tmp_path / 'swin_t_mmpretrain.pth'
    assert info == {
        'layout': TIMM_06,
        'converted': True,
        'source_sha256': sha256_file(src),
        'converted_sha256': sha256_file(dst),
    }
    check_teacher_checkpoint(cfg, str(dst))  # the train step's own strict check
    again, info_again = convert_teacher_checkpoint(dst, cfg)
    assert again == dst and info_again['layout'] == MMPRETRAIN and not info_again['converted']


def test_teacher_for_other_classes_is_refused(tmp_path, timm_swin):
    from video_kd.distill.teacher_checkpoint import convert_teacher_checkpoint
    from video_kd.openmmlab.config import load_config

    src = save_teacher(tmp_path / 'swin_t.pth', timm_swin, classes=400)
    with pytest.raises(TeacherCheckpointError, match='classifies 400 classes, the dataset has 5'):
        convert_teacher_checkpoint(src, load_config(TINY_KD), num_classes=5)


def test_cli_unknown_layout_is_one_line_exit_2(tmp_path):
    from conftest import run_module

    bad = tmp_path / 'resnet.pth'
    torch.save({'state_dict': {'backbone.conv1.weight': torch.zeros(64, 3, 7, 7)}}, bad)
    result = run_module('video_kd.distill.teacher_checkpoint', bad, TINY_KD)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith('error: teacher checkpoint of unknown layout: expected a TSN-Swin')
    assert 'found 1 tensors, e.g. backbone.conv1.weight' in last
    assert not list(tmp_path.glob('*_mmpretrain.pth'))


GEN = 'generate://?num_classes=3&train_per_class=4&val_per_class=2&num_frames=12'


def test_teacher_step_publishes_the_converted_teacher_with_both_checksums(
    bucket, http_server, tmp_path, timm_swin
):
    """The seed's layout served over HTTP: the teacher step converts it and publishes the
    result in <run>/teacher/, with its own sha256 and the source's in its output and in
    the run's manifest; the published file is what the train step's strict check takes."""
    from video_kd import runs
    from video_kd.distill.train_config import check_teacher_checkpoint
    from video_kd.openmmlab.config import load_config
    from video_kd.runs import Manifest, RunLayout
    from video_kd.steps import teacher as teacher_step
    from video_kd.storage import s3

    src = save_teacher(http_server.root / 'swin_t_released.pth', timm_swin, timm_06_layout)
    source_sha = s3.sha256_file(src)
    layout = RunLayout(bucket, 'kd', 'swin-run')
    runs.claim_run(layout)
    meta = teacher_step.run(
        layout.root, http_server.url(src.name), source_sha, kd_config=TINY_KD, num_classes=5
    )
    published = layout.uri('teacher', 'swin_t_released_mmpretrain.pth')
    # the converted teacher and the step's output record (teacher.json): nothing else
    assert s3.list_uris(layout.uri('teacher') + '/') == [
        published,
        layout.uri('teacher', 'teacher.json'),
    ]
    assert s3.read_json(layout.uri('teacher', 'teacher.json'))['source_sha256'] == source_sha
    back = s3.download_file(published, tmp_path / 'back.pth')
    converted_sha = s3.sha256_file(back)
    assert converted_sha != source_sha
    assert meta['s3_uri'] == published and meta['filename'] == 'swin_t_released_mmpretrain.pth'
    assert (meta['layout'], meta['converted']) == (TIMM_06, True)
    assert meta['sha256'] == meta['converted_sha256'] == converted_sha
    assert meta['source_sha256'] == source_sha
    entry = Manifest.load(layout).find(published)
    assert (entry.step, entry.sha256, entry.source_sha256) == ('teacher', converted_sha, source_sha)
    stored = [e for e in s3.read_json(layout.manifest_uri)['entries'] if e['uri'] == published]
    assert stored == [
        {
            'step': 'teacher',
            'uri': published,
            'sha256': converted_sha,
            'size_bytes': back.stat().st_size,
            'source_sha256': source_sha,
        }
    ]
    check_teacher_checkpoint(load_config(TINY_KD), str(back))


def test_teacher_step_refuses_an_unknown_layout_and_publishes_nothing(bucket, tmp_path):
    """A ResNet checkpoint for the Swin teacher, from S3, through the component's entry
    point: one error line, exit status 2, nothing in <run>/teacher/ or the manifest."""
    from conftest import run_module

    from video_kd.runs import Manifest, RunLayout
    from video_kd.steps import data_prep
    from video_kd.storage import s3

    run_root = data_prep.run(GEN, bucket, 'kd', workdir=tmp_path / 'prep')['run_root']
    bad = tmp_path / 'resnet.pth'
    torch.save({'state_dict': {'backbone.conv1.weight': torch.zeros(64, 3, 7, 7)}}, bad)
    url = s3.upload_file(bad, f's3://{bucket}/zoo/resnet.pth')
    result = run_module(
        'components.teacher_download', '--run-root', run_root, '--url', url,
        '--sha256', s3.sha256_file(bad), '--kd-config', TINY_KD,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
    assert errors == [result.stderr.strip().splitlines()[-1]]
    assert errors[0].startswith('error: teacher checkpoint of unknown layout: expected a TSN-Swin')
    assert 'found 1 tensors, e.g. backbone.conv1.weight' in errors[0]
    assert 'Traceback' not in result.stderr
    layout = RunLayout.from_root(run_root)
    assert not s3.list_uris(layout.uri('teacher') + '/')
    assert not [e for e in Manifest.load(layout).entries if e.step == 'teacher']
