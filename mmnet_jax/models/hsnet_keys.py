"""HSNet's released checkpoints (train.py's `best_model.pt`: the DataParallel state dict,
'module.…' keys): its keys for `python -m mmnet_jax.convert --format hsnet-official`.

hsnet.py's modules: `backbone` (a torchvision ResNet: conv1, bn1, layer1..4, and the unused
ImageNet fc, skipped) and `hpn_learner` (learner.py): five building blocks, each an
nn.Sequential of (CenterPivotConv4d with conv1 / conv2, GroupNorm, ReLU) x 3, so indices
0, 3, 6 are the 4-D convolutions and 1, 4, 7 the GroupNorms; decoder1 / decoder2 are
nn.Sequential(conv, ReLU, conv[, ReLU]) with the convs at 0 and 2.
"""

from mmnet_jax.models.keymap import HeadKeyMap, Target

_BLOCKS = ('encoder_layer4', 'encoder_layer3', 'encoder_layer2', 'encoder_layer4to3',
           'encoder_layer3to2')


def _learner_modules() -> dict[str, Target]:
  out = {}
  for block in _BLOCKS:
    for i in range(3):
      for conv in ('conv1', 'conv2'):
        out[f'hpn_learner.{block}.{3 * i}.{conv}'] = Target(
            ('hpn_learner', block, f'conv{i}', conv), 'conv', True)
      out[f'hpn_learner.{block}.{3 * i + 1}'] = Target(
          ('hpn_learner', block, f'norm{i}'), 'norm', True)
  for dec in ('decoder1', 'decoder2'):
    for idx in ('0', '2'):
      out[f'hpn_learner.{dec}.{idx}'] = Target(('hpn_learner', f'{dec}_{idx}'), 'conv', True)
  return out


HSNET_OFFICIAL = HeadKeyMap(
    modules=_learner_modules(),
    skip=r'backbone\.fc\.',
    fem=False,
    backbone_prefix='backbone.',
    stem='torchvision',
)
