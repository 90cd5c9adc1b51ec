"""timm Swin Transformer weights -> the mmpretrain Swin of our TSN-Swin teacher.

The seed's TSN-Swin teacher (``tsn_imagenet-pretrained-swin-transformer_32xb8-1x1x8-50e``,
released 2023-05-30) was trained with timm's Swin-B, so its checkpoint names timm's
parameters.  Our teacher builds the same architecture from mmpretrain (timm needs
torchvision, which does not load beside the pinned CPU torch).  The mapping is
deterministic:

* renames: ``layers.i`` -> ``stages.i``, ``attn.qkv`` -> ``attn.w_msa.qkv``,
  ``mlp.fc1`` / ``mlp.fc2`` -> ``ffn.layers.0.0`` / ``ffn.layers.1``,
  ``patch_embed.proj`` -> ``patch_embed.projection``, the final ``norm`` -> ``norm3``;
* timm 0.6 keeps a stage's PatchMerging at its end (``layers.i.downsample``), like
  mmpretrain; timm >= 0.9 moves it to the start of the next stage
  (``layers.{i+1}.downsample``);
* the buffers ``attn_mask`` and ``relative_position_index`` are constants that
  both libraries compute from the window size: timm's are dropped and mmpretrain's
  come from the freshly built model;
* PatchMerging concatenates each 2x2 neighbourhood in a different order: timm as
  x0..x3 = ``[0::2, 0::2]``, ``[1::2, 0::2]``, ``[0::2, 1::2]``, ``[1::2, 1::2]``,
  neighbour-major (channel ``n * C + c``); mmpretrain with ``nn.Unfold``,
  channel-major with the neighbours in row order (channel ``c * 4 + 2 * row + col``).
  The ``reduction`` weight's input channels and the ``norm`` over them are permuted
  accordingly.  Without this, every key and shape matches and the features are wrong
  (tests/test_swin_convert.py proves both against timm's own code).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from video_kd.core.errors import UserError
from video_kd.openmmlab.checkpoints import state_dict_mismatch

if TYPE_CHECKING:
    from mmpretrain.models.backbones import SwinTransformer

logger = logging.getLogger(__name__)

BACKBONE = 'backbone.'
MMPRETRAIN = 'mmpretrain'
TIMM_06 = 'timm-0.6'
TIMM_09 = 'timm>=0.9'
TIMM_NEIGHBOURS_TO_UNFOLD = (0, 2, 1, 3)  # timm's x0..x3 -> nn.Unfold's row order
_DROPPED_BUFFERS = ('attn_mask', 'relative_position_index')
_BLOCK_RENAMES = (
    ('attn.qkv.', 'attn.w_msa.qkv.'),
    ('attn.proj.', 'attn.w_msa.proj.'),
    ('attn.relative_position_bias_table', 'attn.w_msa.relative_position_bias_table'),
    ('mlp.fc1.', 'ffn.layers.0.0.'),
    ('mlp.fc2.', 'ffn.layers.1.'),
)


class TeacherCheckpointError(UserError):
    """A teacher checkpoint that cannot be converted to the config's teacher."""


@dataclass(frozen=True)
class SwinShape:
    """What tells Swin sizes apart: embedding width, blocks and heads per stage, window."""

    embed_dims: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int

    def describe(self) -> str:
        name = _ARCH_NAMES.get((self.embed_dims, self.depths), 'a Swin')
        return (
            f'{name} (embed_dims {self.embed_dims}, depths {list(self.depths)}, '
            f'heads {list(self.num_heads)}, window {self.window_size})'
        )


_ARCH_NAMES: dict[tuple[int, tuple[int, ...]], str] = {
    (96, (2, 2, 6, 2)): 'Swin-T',
    (96, (2, 2, 18, 2)): 'Swin-S',
    (128, (2, 2, 18, 2)): 'Swin-B',
    (192, (2, 2, 18, 2)): 'Swin-L',
}


# --------------------------------------------------------------------------- layouts


def detect_layout(state: dict[str, torch.Tensor]) -> str | None:
    """mmpretrain, timm 0.6 or timm >= 0.9 Swin names under ``backbone.``; None otherwise."""
    if f'{BACKBONE}stages.0.blocks.0.attn.w_msa.qkv.weight' in state:
        return MMPRETRAIN
    if f'{BACKBONE}layers.0.blocks.0.attn.qkv.weight' not in state:
        return None
    if f'{BACKBONE}layers.0.downsample.reduction.weight' in state:
        return TIMM_06  # PatchMerging at the end of its stage
    if f'{BACKBONE}layers.1.downsample.reduction.weight' in state:
        return TIMM_09  # ... at the start of the next one
    return None


# Where each naming keeps a stage's blocks, a block's attention and the patch embedding.
_NAMING = {
    'timm': ('layers', 'attn', 'patch_embed.proj.weight'),
    MMPRETRAIN: ('stages', 'attn.w_msa', 'patch_embed.projection.weight'),
}


def state_shape(state: dict[str, torch.Tensor], naming: str) -> SwinShape | None:
    """The Swin size of a state dict in ``naming`` ('timm' or mmpretrain; ``backbone.``);
    None when the tensors that tell it are missing (the key check names them then)."""
    stages, attn, patch_embed = _NAMING[naming]

    def attention(stage: int, block: int) -> str:
        return f'{BACKBONE}{stages}.{stage}.blocks.{block}.{attn}'

    depths: list[int] = []
    heads: list[int] = []
    while f'{attention(len(depths), 0)}.qkv.weight' in state:
        table = state.get(f'{attention(len(depths), 0)}.relative_position_bias_table')
        if table is None:
            return None
        heads.append(int(table.shape[1]))
        blocks = 0
        while f'{attention(len(depths), blocks)}.qkv.weight' in state:
            blocks += 1
        depths.append(blocks)
    embedding = state.get(f'{BACKBONE}{patch_embed}')
    if not depths or embedding is None:
        return None
    table_rows = int(state[f'{attention(0, 0)}.relative_position_bias_table'].shape[0])
    return SwinShape(
        embed_dims=int(embedding.shape[0]),
        depths=tuple(depths),
        num_heads=tuple(heads),
        window_size=(round(table_rows**0.5) + 1) // 2,  # the table has (2W - 1)^2 rows
    )


def model_shape(backbone: SwinTransformer) -> SwinShape:
    """The Swin size of a built mmpretrain SwinTransformer."""
    stages = list(backbone.stages)
    first = stages[0].blocks[0].attn.w_msa
    return SwinShape(
        embed_dims=int(backbone.embed_dims),
        depths=tuple(len(stage.blocks) for stage in stages),
        num_heads=tuple(int(stage.blocks[0].attn.w_msa.num_heads) for stage in stages),
        window_size=int(first.window_size[0]),
    )


# --------------------------------------------------------------------------- mapping


def unfold_order(tensor: torch.Tensor, reorder: bool = True) -> torch.Tensor:
    """PatchMerging's input channels from timm's order to ``nn.Unfold``'s (last dim).

    timm's channel ``n * C + c`` (neighbour n of x0..x3) becomes mmpretrain's
    ``c * 4 + m``, m the same neighbour in row order.
    """
    if not reorder:
        return tensor
    *lead, channels = tensor.shape
    by_neighbour = tensor.reshape(*lead, 4, channels // 4)[..., TIMM_NEIGHBOURS_TO_UNFOLD, :]
    return by_neighbour.transpose(-1, -2).reshape(*lead, channels)


def _rename(key: str, layout: str, last_stage: int) -> str | None:
    """mmpretrain name of one timm backbone key (without prefix); None: drop it."""
    if key.rsplit('.', 1)[-1] in _DROPPED_BUFFERS:
        return None
    if key.startswith('patch_embed.proj.'):
        return key.replace('patch_embed.proj.', 'patch_embed.projection.', 1)
    if key.startswith('norm.'):
        return f'norm{last_stage}.' + key[len('norm.') :]
    match = re.match(r'layers\.(\d+)\.(.*)', key)
    if not match:
        return key
    stage, rest = int(match.group(1)), match.group(2)
    if rest.startswith('downsample.') and layout == TIMM_09:
        stage -= 1  # timm >= 0.9: the merge that ends stage i opens stage i + 1
    for old, new in _BLOCK_RENAMES:
        rest = rest.replace(old, new)
    return f'stages.{stage}.{rest}'


def timm_to_mmpretrain(
    state: dict[str, torch.Tensor], layout: str, reorder: bool = True
) -> dict[str, torch.Tensor]:
    """Convert the ``backbone.`` keys of a timm Swin checkpoint; other keys pass as they are.

    ``reorder=False`` skips the PatchMerging channel permutation (for the test that
    shows it is needed).  Dropped buffers are not filled in here: see
    ``convert_state_dict``.
    """
    last_stage = (
        sum(
            1
            for key in state
            if re.match(rf'{BACKBONE}layers\.\d+\.blocks\.0\.norm1\.weight$', key)
        )
        - 1
    )
    converted = {}
    for key, value in state.items():
        if not key.startswith(BACKBONE):
            converted[key] = value
            continue
        name = _rename(key[len(BACKBONE) :], layout, last_stage)
        if name is None:
            continue
        if '.downsample.' in name:
            value = unfold_order(value, reorder)
        converted[BACKBONE + name] = value
    return converted


# --------------------------------------------------------------------------- checkpoints


def convert_state_dict(
    state: dict[str, torch.Tensor], teacher: torch.nn.Module
) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict that fits ``teacher`` exactly, detected layout); raises on misfit.

    ``teacher`` is the built recognizer whose ``backbone`` is mmpretrain's Swin.
    """
    layout = detect_layout(state)
    if layout is None:
        raise TeacherCheckpointError(
            'teacher checkpoint of unknown layout: expected a TSN-Swin with mmpretrain '
            '(backbone.stages.*.blocks.*.attn.w_msa.qkv) or timm 0.6 / >= 0.9 '
            f'(backbone.layers.*.blocks.*.attn.qkv) names, found {_key_sample(state)}'
        )
    expected = teacher.state_dict()
    found = state_shape(state, MMPRETRAIN if layout == MMPRETRAIN else 'timm')
    wanted = model_shape(teacher.backbone)
    if found and found != wanted:  # before any key is compared: the sizes, not 300 keys
        raise TeacherCheckpointError(
            f"teacher checkpoint is {found.describe()}, but the config's teacher is "
            f'{wanted.describe()}'
        )
    if layout != MMPRETRAIN:
        state = timm_to_mmpretrain(state, layout)
        for key, value in expected.items():  # constants of the window size, not weights
            if key.endswith(_DROPPED_BUFFERS) and key not in state:
                state[key] = value.clone()
    mismatch = state_dict_mismatch(expected, state)
    if mismatch:
        raise TeacherCheckpointError(
            f"teacher checkpoint ({layout} layout) does not fit the config's teacher: {mismatch}"
        )
    return state, layout


def _key_sample(state: dict[str, Any], limit: int = 3) -> str:
    keys = list(state)
    return f'{len(keys)} tensors, e.g. {", ".join(keys[:limit])}'
