"""Teacher-logit cache: view keys, exact hits, S3 round trip, a cached KD run end to end."""

import re

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN, run_module

import video_kd  # noqa: F401  (compat before OpenMMLab)
from video_kd.core.errors import UserError
from video_kd.distill import logit_cache

KD = 'kd_logits_tsm-res50_tsm-mobilenetv2_tiny'
FAKE_SHA = 'ab' * 32


@pytest.fixture(scope='module')
def small_data(tmp_path_factory):
    from video_kd.data.dataset import generate_dataset

    return generate_dataset(
        tmp_path_factory.mktemp('lc') / 'data',
        num_classes=3,
        train_per_class=2,
        val_per_class=1,
        num_frames=12,
        size=64,
    )


def cached_cfg(data_root, cache_dir):
    from video_kd.data.data_stream import set_data_root
    from video_kd.openmmlab.config import load_config
    from video_kd.openmmlab.runtime import register_all_modules

    register_all_modules()
    cfg = load_config(KD)
    set_data_root(cfg, data_root)
    location = logit_cache.enable_cache(cfg, str(cache_dir), FAKE_SHA)
    return cfg, location


def train_dataset(cfg):
    from mmaction.registry import DATASETS
    from mmengine.registry import init_default_scope

    init_default_scope('mmaction')
    return DATASETS.build(cfg.train_dataloader.dataset)


def test_extensions_are_module_level_classes_registered_on_import():
    from mmaction.registry import TRANSFORMS
    from mmengine.registry import HOOKS
    from mmrazor.registry import MODELS

    from video_kd.distill import fast_teacher

    cached = MODELS.get('CachedLogitsSingleTeacherDistill')
    assert cached is logit_cache.CachedLogitsSingleTeacherDistill
    assert issubclass(cached, fast_teacher.InferenceTeacherDistill)
    assert TRANSFORMS.get('SeededViews') is logit_cache.SeededViews
    assert HOOKS.get('TeacherLogitCacheHook') is logit_cache.TeacherLogitCacheHook


def test_enable_cache_rewrites_the_config(small_data, tmp_path):
    cfg, location = cached_cfg(small_data, tmp_path)
    assert cfg.model.type == 'CachedLogitsSingleTeacherDistill'
    pipeline = cfg.train_dataloader.dataset.pipeline
    assert [t['type'] for t in pipeline] == ['SeededViews', 'PackActionInputs']
    assert 'Flip' in [t['type'] for t in pipeline[0]['transforms']]  # augmentation kept
    assert logit_cache.VIEW_KEY in pipeline[1]['meta_keys']
    assert location.startswith(str(tmp_path / 'teacher_logits' / FAKE_SHA))
    assert cfg.custom_hooks[-1] == dict(type='TeacherLogitCacheHook', location=location)
    # the view spec is part of the location: other views (K) -> another cache
    _cfg2, location2 = cached_cfg(small_data, tmp_path)
    assert location2 == location
    from video_kd.data.data_stream import set_data_root
    from video_kd.openmmlab.config import load_config

    cfg3 = load_config(KD, {'teacher_logit_cache': dict(num_views=2)})
    set_data_root(cfg3, small_data)
    assert logit_cache.enable_cache(cfg3, str(tmp_path), FAKE_SHA) != location


def test_views_are_reproducible_and_keys_record_the_view_parameters(small_data, tmp_path):
    cfg, _ = cached_cfg(small_data, tmp_path)
    ds = train_dataset(cfg)
    seen = {}
    np.random.seed(0)
    for _ in range(24):  # 24 draws of K=4 views of one video
        sample = ds[0]
        meta = sample['data_samples'].metainfo
        key, view = meta[logit_cache.VIEW_KEY], meta[logit_cache.VIEW_PARAMS]
        assert key == logit_cache.digest(view, 32)
        assert {'frame_inds', 'crop_bbox', 'flip', 'img_shape'} <= set(view)
        if key in seen:  # the same view again: the same pixels, the same parameters
            assert torch.equal(seen[key][0], sample['inputs'])
            assert seen[key][1] == view
        seen[key] = (sample['inputs'], view)
    assert len(seen) == 4 == len({v['view'] for _, v in seen.values()})
    views = [v for _, v in seen.values()]
    # distinct keys really are distinct views (crop, frames or flip differ)
    params = {(str(v['crop_bbox']), str(v['frame_inds']), v['flip']) for v in views}
    assert len(params) == 4
    # views that differ only in their crop box, or only in the flip, are distinct entries
    # (the views are seeded: these four always hold several crops and both flips)
    assert len({str(v['crop_bbox']) for v in views}) >= 2
    assert {v['flip'] for v in views} == {False, True}
    other = ds[1]['data_samples'].metainfo[logit_cache.VIEW_KEY]
    assert other not in seen  # another video, another key


def build_model(cfg):
    from mmrazor.registry import MODELS

    from video_kd.openmmlab.config import set_num_classes

    set_num_classes(cfg.model, 3)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    return model


def batch(model, ds, indices):
    from mmengine.dataset import pseudo_collate

    data = model.data_preprocessor(pseudo_collate([ds[i] for i in indices]), training=True)
    return data['inputs'], data['data_samples']


@pytest.mark.slow  # builds TSM-R50 + MobileNetV2 and runs them: ~10-30 s on 2 cores
def test_hits_return_exactly_the_teachers_logits_and_skip_the_teacher(small_data, tmp_path):
    cfg, _ = cached_cfg(small_data, tmp_path)
    model = build_model(cfg)
    ds = train_dataset(cfg)
    calls = []  # clips per teacher forward (the 2D backbone sees clips x 8 segments)
    model.teacher.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0] // 8))
    np.random.seed(1)
    inputs, samples = batch(model, ds, [0, 1, 2])
    keys = [s.metainfo[logit_cache.VIEW_KEY] for s in samples]

    losses = model.loss(inputs, samples)  # all misses: one teacher forward on 3 clips
    assert len(calls) == 1 and len(model.logit_cache) == 3
    assert losses['teacher_cache_hit'].item() == 0
    assert set(losses) >= {'student.loss_cls', 'distill.loss_dist'}

    # a real teacher forward (eval, as the cache computes it) on each view
    fc_out = []
    handle = model.teacher.cls_head.fc_cls.register_forward_hook(
        lambda m, i, o: fc_out.append(o.detach().clone())
    )
    model.teacher.eval()
    with torch.no_grad():
        model.teacher(inputs, samples, mode='loss')
    model.train()
    handle.remove()
    per_sample = fc_out[0].split(fc_out[0].shape[0] // 3)
    for key, expected in zip(keys, per_sample, strict=False):
        assert torch.equal(model.logit_cache.get(key)['logits'], expected)
        assert expected.shape[0] == 8  # TSM: one row per segment

    calls.clear()
    losses = model.loss(inputs, samples)  # all hits: no teacher forward
    assert calls == [] and losses['teacher_cache_hit'].item() == 1
    recorded = model.distiller.teacher_recorders.get_recorder('logits').get_record_data()
    assert torch.equal(recorded, fc_out[0])
    losses['distill.loss_dist'].backward()  # the cached logits feed a normal backward

    # a batch mixing one new view and cached ones runs the teacher on the new one only
    np.random.seed(123)
    new_inputs, new_samples = batch(model, ds, [3, 0])
    new_keys = [s.metainfo[logit_cache.VIEW_KEY] for s in new_samples]
    expected_misses = sum(k not in model.logit_cache for k in new_keys)
    model.loss(new_inputs, new_samples)
    assert calls == ([expected_misses] if expected_misses else [])
    assert model.cache_misses == 3 + expected_misses


def test_samples_without_view_keys_are_refused(small_data, tmp_path):
    cfg, _ = cached_cfg(small_data, tmp_path)
    model = build_model(cfg)
    inputs = torch.zeros(1, 8, 3, 56, 56)
    from mmaction.structures import ActionDataSample

    sample = ActionDataSample().set_gt_label(torch.tensor([0]))
    with pytest.raises(UserError, match='SeededViews'):
        model.loss(inputs, [sample])


def test_not_a_distill_config_is_refused(tmp_path):
    from video_kd.openmmlab.config import load_config

    with pytest.raises(UserError, match='distillation'):
        logit_cache.enable_cache(load_config('tsm_mobilenetv2_tiny'), str(tmp_path), FAKE_SHA)


def fake_entries(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {f'key{seed}-{i}': {'logits': torch.randn(8, 5, generator=gen)} for i in range(n)}


def test_cache_round_trips_through_s3_without_overwriting(bucket):
    from video_kd.storage import s3

    location = logit_cache.cache_location(f's3://{bucket}/datasets/demo', FAKE_SHA, 'spec1')
    assert location == f's3://{bucket}/datasets/demo/teacher_logits/{FAKE_SHA}/spec1'
    cache = logit_cache.LogitCache()
    first = fake_entries(3)
    for key, logits in first.items():
        cache.put(key, logits, {'video': key})
    uri1 = cache.flush(location, 'run1-rank0')
    assert cache.flush(location, 'run1-rank0-again') is None  # nothing new: no shard
    second = fake_entries(2, seed=1)
    for key, logits in second.items():
        cache.put(key, logits)
    uri2 = cache.flush(location, 'run1-rank1')
    assert s3.list_uris(location + '/') == sorted([uri1, uri2])

    loaded = logit_cache.LogitCache()
    assert loaded.load(location) == 5 and loaded.shards_loaded == 2
    for key, logits in {**first, **second}.items():
        assert torch.equal(loaded.get(key)['logits'], logits['logits'])
    assert loaded.views['key0-0'] == {'video': 'key0-0'}
    assert loaded.new_keys == []  # loaded entries are not written again
    with pytest.raises(s3.ObjectExistsError):
        loaded.put('fresh', {'logits': torch.zeros(1)})
        loaded.flush(location, 'run1-rank0')  # a writer name already used: refused


def test_local_cache_round_trip(tmp_path):
    cache = logit_cache.LogitCache()
    for key, logits in fake_entries(2).items():
        cache.put(key, logits)
    path = cache.flush(str(tmp_path / 'c'), 'w0')
    assert path.endswith('w0.pt')
    loaded = logit_cache.LogitCache()
    assert loaded.load(str(tmp_path / 'c')) == 2
    assert logit_cache.LogitCache().load(str(tmp_path / 'nothing-here')) == 0


@pytest.mark.slow
def test_cached_kd_training_end_to_end(kd_data, tiny_teacher, tmp_path):
    import shutil

    data = shutil.copytree(kd_data, tmp_path / 'data')  # the cache goes with the dataset
    cache = data / 'teacher_logits'

    def train(work_dir, epochs):
        result = run_module(
            'video_kd.distill.train',
            KD,
            '--work-dir',
            work_dir,
            '--data-root',
            data,
            '--teacher-ckpt',
            tiny_teacher,
            '--teacher-logit-cache',
            '--max-epochs',
            epochs,
            *TINY_TRAIN,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        log = result.stdout + result.stderr
        hits, misses, entries = map(
            int,
            re.search(
                r'teacher-logit cache: (\d+) hits, (\d+) misses \(.*\); (\d+) entries', log
            ).groups(),
        )
        loaded = int(re.search(r'(\d+) entries loaded from', log).group(1))
        return log, hits, misses, entries, loaded

    log, hits, misses, entries, loaded = train(tmp_path / 'kd1', 2)
    assert 'teacher_cache_hit' in log and 'distill.loss_dist' in log
    assert loaded == 0
    assert hits + misses == 2 * 12  # 12 training videos, 2 epochs
    assert entries == misses  # the teacher ran exactly once per new view
    assert (tmp_path / 'kd1' / 'epoch_2.pth').is_file()
    shards = list(cache.rglob('*.pt'))
    assert shards and set(data.rglob('*.pt')) == set(shards)  # all under <data>/teacher_logits

    # retraining with the same teacher and data starts from the stored views
    log, hits2, misses2, entries2, loaded2 = train(tmp_path / 'kd2', 1)
    assert loaded2 == entries
    assert hits2 + misses2 == 12 and entries2 == entries + misses2
    assert hits2 >= 1

    # the student checkpoint converts as for an uncached KD run
    result = run_module('video_kd.distill.convert', tmp_path / 'kd2' / 'epoch_1.pth')
    assert result.returncode == 0, result.stderr[-2000:]
