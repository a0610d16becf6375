"""The reference configuration (MM-Net ResNet-50, PASCAL-5i fold 0, 1-shot), defined in the
package (`mmnet_jax.default_config`) so that an installed mmnet_jax needs no `configs/` folder.

`python main.py --config=configs/default.py` runs it; experiment files import this module and
override fields (see `mmnet_jax/default_config.py` for the argument string).
"""

from mmnet_jax.default_config import get_config, parse_arg, runlocal  # noqa: F401 (re-exported)
