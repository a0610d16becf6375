"""MM-Net's released checkpoints (train.py: {'state_dict': {'module.…'}, 'epoch', 'optimizer'}):
its head keys for `python -m mmnet_jax.convert --format mmnet-official`."""

from mmnet_jax.models.keymap import HeadKeyMap, Target

MMNET_OFFICIAL = HeadKeyMap(
    modules={
        'part_emb_2_level': Target(('memory', 'slots'), 'parameter', False),
        'down_query_level_2.0': Target(('down_query', 'conv'), 'conv', False),
        'down_supp_level_2.0': Target(('down_supp', 'conv'), 'conv', False),
    },
    skip=r'(alpha|beta)\.',   # PartNet's unused Linear(256, 256) layers
)
