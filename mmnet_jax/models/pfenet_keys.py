"""PFENet's released checkpoints (train.py: {'epoch', 'state_dict': {'module.…'}, 'optimizer'}):
its head keys for `python -m mmnet_jax.convert --format pfenet-official`.

PFENet.py's modules: layer0 (the deep stem as one nn.Sequential) .. layer4, down_query.0,
down_supp.0 (1x1 convs), and the FEM decoder (models/keymap.py). Nothing else has parameters.
"""

from mmnet_jax.models.keymap import HeadKeyMap, Target

PFENET_OFFICIAL = HeadKeyMap(
    modules={
        'down_query.0': Target(('down_query', 'conv'), 'conv', False),
        'down_supp.0': Target(('down_supp', 'conv'), 'conv', False),
    },
)
