"""Our configs against the seed's, key by key, with every intended difference listed and explained.

Upstream: the configs in the installed mmaction2 1.2.0 wheel (``mmaction/.mim/configs``)
and the seed's two KD configs (``projects/knowledge_distillation``, not in the wheel),
whose values are transcribed in tests/data/seed_kd_configs.json with their source
commits.  A key that differs and is not in an allow-list below fails the test; so does an
allowed key whose values are not the listed pair (ours, upstream), and an allow-list
entry that no longer differs (the list stays the truth).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import NamedTuple

import pytest
from mmengine.config import Config

from video_kd.openmmlab.config import CONFIG_DIR, load_config, teacher_config
from video_kd.runs import RunLayout

SEED = json.loads((Path(__file__).parent / 'data' / 'seed_kd_configs.json').read_text())
ABSENT = '<absent>'
# Compare intent, not the offline policy: remote weights stay as URLs here.
ONLINE = {'allow_pretrained_download': True}
IGNORED = re.compile(r'(^|\.)_scope_$|^allow_pretrained_download$')  # package bookkeeping


class Intended(NamedTuple):
    """An intended difference: our value, upstream's, and why.  Keyed by config key; a
    difference at that key with any other pair of values is not intended."""

    ours: object
    upstream: object
    why: str


TIMM_SWIN_B = 'timm.swin_base_patch4_window7_224'
SWIN_BACKBONE = {
    'model.backbone.type': Intended(
        'mmpretrain.SwinTransformer',
        TIMM_SWIN_B,
        'timm needs torchvision, which does not load beside the pinned CPU torch: the same '
        "Swin-B from mmpretrain (the seed's checkpoint is converted)",
    ),
    'model.backbone.pretrained': Intended(
        ABSENT, True, "timm's ImageNet flag; the teacher's weights come from its checkpoint"
    ),
    'model.backbone.arch': Intended(
        'base', ABSENT, "mmpretrain's name of the Swin-B that timm's model name implies"
    ),
    'model.backbone.img_size': Intended(224, ABSENT, 'timm model name: ..._224'),
    'model.backbone.out_indices[0]': Intended(
        3, ABSENT, "the last stage's features, what timm's forward_features gives"
    ),
    'model.backbone.drop_path_rate': Intended(
        0.1, ABSENT, "timm's default (0.1), written out: mmpretrain's is the same"
    ),
}

# ours (shipped name) -> (upstream wheel config, intended differences)
PLAIN_CONFIGS = {
    'tsm_imagenet-pretrained-mobilenetv2_8xb16-1x1x8-100e_kinetics400-rgb': (
        'recognition/tsm/tsm_imagenet-pretrained-mobilenetv2_8xb16-1x1x8-100e_kinetics400-rgb.py',
        {},
    ),
    'tsm_imagenet-pretrained-r50_8xb16-1x1x8-50e_kinetics400-rgb': (
        'recognition/tsm/tsm_imagenet-pretrained-r50_8xb16-1x1x8-50e_kinetics400-rgb.py',
        {},
    ),
    'tsn_imagenet-pretrained-r50_8xb32-1x1x8-100e_kinetics400-rgb': (
        'recognition/tsn/tsn_imagenet-pretrained-r50_8xb32-1x1x8-100e_kinetics400-rgb.py',
        {},
    ),
    'tsn_imagenet-pretrained-swin-transformer_32xb8-1x1x8-50e_kinetics400-rgb': (
        'recognition/tsn/custom_backbones/'
        'tsn_imagenet-pretrained-swin-transformer_32xb8-1x1x8-50e_kinetics400-rgb.py',
        SWIN_BACKBONE,
    ),
}


def teacher_url_dropped(kd_name: str) -> dict[str, Intended]:
    """The seed's KD config names its teacher by URL; ours leaves it to the pipeline."""
    url = SEED['configs'][kd_name]['teacher_ckpt']
    assert url.startswith('https://download.openmmlab.com/mmaction/v1.0/') and url.endswith('.pth')
    why = 'set by the pipeline (teacher_url, sha256-checked) or --teacher-ckpt'
    return {
        'teacher_ckpt': Intended(None, url, why),
        'model.teacher_ckpt': Intended(None, url, 'the same'),
    }


KD_CONFIGS = {
    'kd_logits_tsm-res50_tsm-mobilenetv2_8xb16_k400': teacher_url_dropped(
        'kd_logits_tsm-res50_tsm-mobilenetv2_8xb16_k400'
    ),
    'kd_logits_tsn-swin_tsn-r50_8xb16_k400': {
        **teacher_url_dropped('kd_logits_tsn-swin_tsn-r50_8xb16_k400'),
        'model.architecture.backbone.pretrained': Intended(
            ABSENT,
            False,
            'a no-op upstream (mmengine get_model takes it as a default), so the student keeps '
            'its ImageNet URL; ours merges overrides for real, so leaving it out is what keeps '
            'the URL',
        ),
        'model.teacher.cfg_path': Intended(
            'tsn_imagenet-pretrained-swin-transformer_32xb8-1x1x8-50e_kinetics400-rgb',
            'mmaction::recognition/tsn/custom_backbones/'
            'tsn_imagenet-pretrained-swin-transformer_32xb8-1x1x8-50e_kinetics400-rgb.py',
            'our shipped teacher config: upstream with the mmpretrain Swin-B',
        ),
    },
}


def wheel_config(relative: str) -> Config:
    from mmengine.hub import get_config

    return get_config(f'mmaction::{relative}')


def flatten(node, prefix: str = '') -> dict[str, object]:
    """{'a.b[0].c': value} of nested dicts and lists; tuples compare as lists."""
    if isinstance(node, dict):
        items = node.items()
        keys = [(f'{prefix}.{key}' if prefix else str(key), value) for key, value in items]
    elif isinstance(node, (list, tuple)):
        keys = [(f'{prefix}[{index}]', value) for index, value in enumerate(node)]
    else:
        return {prefix: node}
    flat: dict[str, object] = {}
    for key, value in keys:
        flat.update(flatten(value, key))
    return flat


def differences(ours, theirs, prefix: str = '') -> dict[str, tuple]:
    a, b = flatten(_plain(ours), prefix), flatten(_plain(theirs), prefix)
    return {
        key: (a.get(key, ABSENT), b.get(key, ABSENT))
        for key in sorted(set(a) | set(b))
        if not IGNORED.search(key) and a.get(key, ABSENT) != b.get(key, ABSENT)
    }


def _plain(node):
    return node.to_dict() if hasattr(node, 'to_dict') else node


def assert_only_intended(found: dict[str, tuple], allowed: dict[str, Intended]) -> None:
    unexplained = {key: pair for key, pair in found.items() if key not in allowed}
    assert not unexplained, f'differences from the seed not in the allow-list: {unexplained}'
    changed = {
        key: {'found (ours, upstream)': pair, 'intended': allowed[key][:2]}
        for key, pair in found.items()
        if pair != allowed[key][:2]
    }
    assert not changed, f'allowed keys whose values are not the intended ones: {changed}'
    stale = sorted(set(allowed) - set(found))
    assert not stale, f'allow-list entries that no longer differ: {stale}'


@pytest.mark.parametrize('name', list(PLAIN_CONFIGS))
def test_student_and_teacher_configs_match_the_wheel(name):
    upstream, allowed = PLAIN_CONFIGS[name]
    found = differences(load_config(name, ONLINE), wheel_config(upstream))
    assert_only_intended(found, allowed)


@pytest.mark.parametrize('name', list(KD_CONFIGS))
def test_kd_config_matches_the_seeds_text(name):
    """The KD file itself (references unresolved) against the seed's values."""
    seed = SEED['configs'][name]
    ours = Config.fromfile(str(CONFIG_DIR / f'{name}.py'))
    found = differences({k: ours[k] for k in ('teacher_ckpt', 'model', 'val_cfg')}, seed)
    found.pop('_base_', None)
    seed_base = seed['_base_'].split('::', 1)[1]
    base_found = differences(
        {k: v for k, v in ours.items() if k not in ('teacher_ckpt', 'model', 'val_cfg')},
        {k: v for k, v in wheel_config(seed_base).items() if k not in ('model', 'val_cfg')},
    )
    assert not base_found, f'runtime, data or schedule differ from the seed base: {base_found}'
    assert_only_intended(found, KD_CONFIGS[name])


@pytest.mark.parametrize('name', list(KD_CONFIGS))
def test_resolved_student_and_teacher_are_the_seeds_models(name):
    seed = SEED['configs'][name]['model']
    resolved = load_config(name, ONLINE).model
    student = wheel_config(seed['architecture']['cfg_path'].split('::', 1)[1]).model
    assert_only_intended(differences(resolved.architecture, student, 'model'), {})
    teacher = wheel_config(seed['teacher']['cfg_path'].split('::', 1)[1]).model
    allowed = SWIN_BACKBONE if 'swin' in name else {}
    assert_only_intended(differences(resolved.teacher, teacher, 'model'), allowed)


@pytest.mark.parametrize('name', list(KD_CONFIGS))
def test_offline_differs_only_in_the_imagenet_urls(name):
    offline = flatten(_plain(load_config(name)))
    online = flatten(_plain(load_config(name, ONLINE)))
    changed = {key for key in set(offline) | set(online) if offline.get(key) != online.get(key)}
    changed.discard('allow_pretrained_download')
    assert changed and all(re.search(r'\.(pretrained|pretrained2d)$', key) for key in changed)


def test_the_teacher_is_scored_with_its_own_test_pipeline():
    name = 'kd_logits_tsm-res50_tsm-mobilenetv2_8xb16_k400'
    cfg = teacher_config(name)
    upstream = wheel_config(
        'recognition/tsm/tsm_imagenet-pretrained-r50_8xb16-1x1x8-50e_kinetics400-rgb.py'
    )
    for key in ('test_pipeline', 'test_dataloader', 'test_evaluator'):
        assert not differences(cfg[key], upstream[key]), key
    assert cfg.model == load_config(name).model.teacher
    student = load_config(name)
    assert differences(cfg.test_dataloader, student.test_dataloader)  # not the student's views


def test_swin_teacher_drop_path_is_timms_default():
    timm_default = 0.1  # timm's SwinTransformer(drop_path_rate=0.1), kept by upstream's config
    cfg = load_config('tsn_imagenet-pretrained-swin-transformer_32xb8-1x1x8-50e_kinetics400-rgb')
    assert cfg.model.backbone.drop_path_rate == timm_default


def test_the_evaluate_step_scores_the_teacher_with_its_own_config(tmp_path):
    """The evaluate step plans the teacher with the teacher's own config (K400 TSM: 8 clips
    x TenCrop 224), not the KD config (the student's 8 x ThreeCrop 256): the evaluation
    processes score it with that config, and metrics.json records which config scored it."""
    from video_kd.distill import evaluate as mmaction_test
    from video_kd.distill import evaluate_pod
    from video_kd.steps import evaluate as evaluate_step

    name = 'kd_logits_tsm-res50_tsm-mobilenetv2_8xb16_k400'
    teacher_views = mmaction_test.describe_test_pipeline(teacher_config(name))
    student_views = mmaction_test.describe_test_pipeline(load_config(name))
    assert 'TenCrop(crop_size=224)' in teacher_views
    assert 'ThreeCrop(crop_size=256)' in student_views
    # the step: the teacher's config file (hashed for the score cache) and its record
    path, recorded = evaluate_step._teacher_config_file(name, tmp_path)
    assert mmaction_test.describe_test_pipeline(load_config(path)) == teacher_views
    assert recorded == (
        'mmaction::recognition/tsm/tsm_imagenet-pretrained-r50_8xb16-1x1x8-50e_kinetics400-rgb.py'
        f' (model: the teacher of {name})'
    )
    # the evaluation processes: a planned teacher is scored with that config, the student
    # with the KD config (its student part)
    planned = evaluate_step._planned('teacher', '', name, 's3://b/t.pth', 'a' * 64,
                                     RunLayout('b', 'kd', 'run-1'), 'attempt')  # fmt: skip
    inputs = tmp_path / 'inputs'
    inputs.mkdir()
    teacher_config(planned['teacher_of']).dump(evaluate_pod.model_config(planned, inputs))
    scored = load_config(evaluate_pod.model_config(planned, inputs))
    assert mmaction_test.describe_test_pipeline(scored) == teacher_views
    student = evaluate_step._planned('student', name, '', 's3://b/s.pth', 'b' * 64,
                                     RunLayout('b', 'kd', 'run-1'), 'attempt')  # fmt: skip
    assert evaluate_pod.model_config(student, inputs) == name
