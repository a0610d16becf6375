"""Convert original PyTorch checkpoints and ImageNet backbones to mmnet_jax variables.

  python -m mmnet_jax.convert --format FORMAT --input FILE --output DIR [--config FILE[:ARG]]

Formats:
  mmnet-official      MM-Net train.py checkpoint
                      {'state_dict': {'module.…'}, 'epoch', 'optimizer'}
            -> full model (params + backbone BN batch_stats).
  pfenet-official     PFENet train.py checkpoint (train_epoch_*.pth, final.pth), the same layout
            -> full model.
  hsnet-official      HSNet train.py best_model.pt (the DataParallel state dict, 'module.…';
                      torchvision ResNet under 'backbone.', its fc skipped) -> full model.
  pfenet-resnet       PFENet/semseg resnet{50,101}_v2.pth (deep stem, fc ignored) -> backbone.
  torchvision-resnet  torchvision resnet{50,101} state dict (7x7 stem, fc ignored) -> backbone.

A model's checkpoint formats belong to the model: its spec's `convert_formats` maps each name
to the head key map (models/keymap.py); this module maps the backbone and looks the format up
over the registered models.

The output directory holds an orbax PyTree checkpoint of {'params': ..., 'batch_stats': ...}
under `checkpoint/` and `convert_info.json` (format, source, counts, skipped keys). Every
input key is either mapped, deliberately skipped (BN num_batches_tracked, fc, the key map's
skips such as MM-Net's unused alpha/beta Linear layers) or reported as an error; so is every
expected key that is absent.
The `.pth` is read with `mmnet_jax.torch_pickle` (no torch, no code execution).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
from typing import Any, Mapping

import numpy as np

from mmnet_jax import storage
from mmnet_jax import torch_pickle
from mmnet_jax.models import registry
from mmnet_jax.models.keymap import HeadKeyMap, Target

# ImageNet backbones (no head): format -> stem layout.
BACKBONE_FORMATS = {'pfenet-resnet': 'deep', 'torchvision-resnet': 'torchvision'}

_CKPT_SUBDIR = 'checkpoint'
_INFO_FILE = 'convert_info.json'

_BN_PARAMS = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
              'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}
_NORM_PARAMS = {'weight': ('params', 'scale'), 'bias': ('params', 'bias')}   # GroupNorm

_DEEP_STEM = ('conv1', 'bn1', 'conv2', 'bn2', 'conv3', 'bn3')
# PFENet and MM-Net wrap the deep stem in nn.Sequential: indices 2, 5, 8 are ReLUs, 9 the
# max-pool.
_OFFICIAL_STEM = {'0': 'conv1', '1': 'bn1', '3': 'conv2', '4': 'bn2', '6': 'conv3', '7': 'bn3'}
_BLOCK_MODULES = ('conv1', 'bn1', 'conv2', 'bn2', 'conv3', 'bn3')


class ConversionError(ValueError):
  """A checkpoint does not match the expected key structure or the model's shapes."""


def model_formats() -> dict[str, HeadKeyMap]:
  """Format name -> head key map, over the registered models' `convert_formats`."""
  out = {}
  for name in registry.names():
    out.update(registry.get(name).convert_formats)
  return out


def formats() -> tuple[str, ...]:
  """Every --format: the models' checkpoint formats, then the backbone formats."""
  return tuple(sorted(model_formats())) + tuple(BACKBONE_FORMATS)


def _key_map(fmt: str) -> HeadKeyMap | None:
  """The head key map of a model format; None for a backbone format; raises if unknown."""
  if fmt in BACKBONE_FORMATS:
    return None
  maps = model_formats()
  if fmt not in maps:
    raise ConversionError(f'unknown format {fmt!r}; expected one of {formats()}')
  return maps[fmt]


def _backbone_module(name: str, stem: str) -> Target | None:
  """Maps a torch backbone module name (no param suffix) to its flax target."""
  if stem == 'official':
    m = re.fullmatch(r'layer0\.(\d+)', name)
    if m and m.group(1) in _OFFICIAL_STEM:
      sub = _OFFICIAL_STEM[m.group(1)]
      return Target(('backbone', 'stem', sub), 'bn' if 'bn' in sub else 'conv', False)
  else:
    allowed = _DEEP_STEM if stem == 'deep' else ('conv1', 'bn1')
    if name in allowed:
      return Target(('backbone', 'stem', name), 'bn' if name.startswith('bn') else 'conv',
                     False)
  m = re.fullmatch(r'layer([1-4])\.(\d+)\.(conv[123]|bn[123]|downsample\.[01])', name)
  if m:
    layer, block, sub = m.groups()
    sub = {'downsample.0': 'downsample_conv', 'downsample.1': 'downsample_bn'}.get(sub, sub)
    kind = 'bn' if 'bn' in sub else 'conv'
    return Target(('backbone', f'layer{layer}_{block}', sub), kind, False)
  return None


def _stem_of(fmt: str) -> str:
  """The backbone stem layout of a format: 'official', 'deep' or 'torchvision'."""
  key_map = _key_map(fmt)
  return key_map.stem if key_map is not None else BACKBONE_FORMATS[fmt]


def _backbone_name(name: str, key_map: HeadKeyMap | None) -> str | None:
  """A key's module name inside the backbone, None if it is not a backbone key."""
  prefix = key_map.backbone_prefix if key_map is not None else ''
  return name[len(prefix):] if name.startswith(prefix) else None


def _is_skipped(name: str, key_map: HeadKeyMap | None) -> bool:
  """Keys that are dropped on purpose (never an error)."""
  if name.endswith('.num_batches_tracked'):
    return True
  if key_map is not None:
    return key_map.is_skipped(name)
  return re.match(r'fc\.', name) is not None  # ImageNet classifier


def _split_key(key: str, key_map: HeadKeyMap | None) -> tuple[str, str]:
  if key_map is not None and key_map.is_parameter(key):
    return key, ''
  module, _, param = key.rpartition('.')
  return module, param


def _strip_prefix(state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
  """Removes the DataParallel 'module.' prefix when every key has it."""
  keys = list(state_dict)
  if keys and all(k.startswith('module.') for k in keys):
    return {k[len('module.'):]: v for k, v in state_dict.items()}, 'module.'
  return dict(state_dict), ''


def _expected_params(module: Target) -> tuple[str, ...]:
  if module.kind == 'parameter':
    return ('',)
  if module.kind == 'bn':
    return tuple(_BN_PARAMS)
  if module.kind == 'norm':
    return tuple(_NORM_PARAMS)
  return ('weight', 'bias') if module.has_bias else ('weight',)


def _required_modules(found: set[tuple[str, ...]], fmt: str) -> list[Target]:
  """Modules that must be present given the blocks/scales that were found."""
  required = []
  stem = ('conv1', 'bn1') if _stem_of(fmt) == 'torchvision' else _DEEP_STEM
  required += [('backbone', 'stem', s) for s in stem]
  for layer in range(1, 5):
    blocks = {int(p[1].split('_')[1]) for p in found
              if p[0] == 'backbone' and p[1].startswith(f'layer{layer}_')}
    for b in range(max(blocks, default=0) + 1):
      names = _BLOCK_MODULES + (('downsample_conv', 'downsample_bn') if b == 0 else ())
      required += [('backbone', f'layer{layer}_{b}', s) for s in names]
  required = [Target(p, 'bn' if 'bn' in p[-1] else 'conv', False) for p in required]
  key_map = _key_map(fmt)
  if key_map is not None:
    required += key_map.required({p for p in found if p[0] != 'backbone'})
  return required


def _torch_name(path: tuple[str, ...], fmt: str) -> str:
  """Inverse of the module mapping, for error messages about missing modules."""
  key_map = _key_map(fmt)
  if path[0] != 'backbone':
    return key_map.torch_name(path)
  prefix = key_map.backbone_prefix if key_map is not None else ''
  if path[1] == 'stem':
    if _stem_of(fmt) == 'official':
      inv = {v: k for k, v in _OFFICIAL_STEM.items()}
      return f'{prefix}layer0.{inv[path[2]]}'
    return prefix + path[2]
  layer, block = path[1][len('layer'):].split('_')
  sub = {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}.get(path[2], path[2])
  return f'{prefix}layer{layer}.{block}.{sub}'


def _convert_array(key: str, value: Any, module: Target, param: str) -> np.ndarray:
  arr = np.asarray(value)
  if not np.issubdtype(arr.dtype, np.floating) and arr.dtype.name != 'bfloat16':
    raise ConversionError(f'{key}: expected a floating tensor, got dtype {arr.dtype}')
  arr = arr.astype(np.float32)
  if module.kind == 'parameter':
    if arr.ndim < 1 or arr.shape[0] != 1:
      raise ConversionError(f'{key}: expected a leading axis of 1, e.g. (1, C, N), '
                            f'got {arr.shape}')
    return arr[0]  # (C, N)
  if module.kind == 'conv' and param == 'weight':
    if arr.ndim != 4:
      raise ConversionError(f'{key}: expected a 4-D OIHW conv weight, got {arr.shape}')
    return np.ascontiguousarray(arr.transpose(2, 3, 1, 0))  # OIHW -> HWIO
  if arr.ndim != 1:
    raise ConversionError(f'{key}: expected a 1-D tensor, got {arr.shape}')
  return arr


def convert_state_dict_with_info(state_dict: Mapping[str, Any], fmt: str
                                 ) -> tuple[dict[str, dict], dict[str, Any]]:
  """Like `convert_state_dict`, also returning {'mapped', 'skipped', 'num_values'}."""
  key_map = _key_map(fmt)
  if not isinstance(state_dict, Mapping):
    raise ConversionError(f'expected a state dict (mapping), got {type(state_dict).__name__}')
  sd, prefix = _strip_prefix(state_dict)
  stem = _stem_of(fmt)
  tree: dict[str, dict] = {'params': {}, 'batch_stats': {}}
  skipped, unknown, seen = [], [], {}
  for key, value in sd.items():
    if _is_skipped(key, key_map):
      skipped.append(prefix + key)
      continue
    name, param = _split_key(key, key_map)
    inner = _backbone_name(name, key_map)
    module = _backbone_module(inner, stem) if inner is not None else None
    if module is None and key_map is not None:
      module = key_map.target(name)
    if module is None or param not in _expected_params(module):
      unknown.append(prefix + key)
      continue
    seen.setdefault(module.path, (module, set()))[1].add(param)
    arr = _convert_array(prefix + key, value, module, param)
    if module.kind == 'parameter':
      collection, leaf_path = 'params', module.path
    elif module.kind in ('bn', 'norm'):
      collection, leaf = (_BN_PARAMS if module.kind == 'bn' else _NORM_PARAMS)[param]
      leaf_path = module.path + (leaf,)
    else:
      collection = 'params'
      leaf_path = module.path + ({'weight': 'kernel', 'bias': 'bias'}[param],)
    node = tree[collection]
    for part in leaf_path[:-1]:
      node = node.setdefault(part, {})
    node[leaf_path[-1]] = arr
  if unknown:
    raise ConversionError(f'{len(unknown)} unmapped key(s) for format {fmt}: {unknown}')
  missing = []
  for module in _required_modules(set(seen), fmt):
    have = seen.get(module.path, (None, set()))[1]
    for param in _expected_params(module):
      if param not in have:
        name = _torch_name(module.path, fmt)
        missing.append(prefix + (f'{name}.{param}' if param else name))
  if missing:
    raise ConversionError(f'{len(missing)} missing key(s) for format {fmt}: {missing}')
  if not tree['batch_stats']:
    del tree['batch_stats']
  num_values = sum(a.size for a in _leaves(tree))
  info = {'mapped': len(_leaves(tree)), 'skipped': skipped, 'num_values': int(num_values)}
  return tree, info


def convert_state_dict(state_dict: Mapping[str, Any], fmt: str) -> dict[str, dict]:
  """Maps a torch state dict to {'params': ..., 'batch_stats': ...} (numpy float32).

  Args:
    state_dict: flat {torch key: array}; a leading 'module.' on every key is removed.
    fmt: one of `formats()`.

  Returns:
    Nested dicts following docs/architecture.md; backbone formats hold only 'backbone'.

  Raises:
    ConversionError: naming every unmapped key, or every expected key that is missing.
  """
  return convert_state_dict_with_info(state_dict, fmt)[0]


def extract_state_dict(checkpoint: Any, fmt: str, source: str = '<checkpoint>') -> Mapping:
  """Returns the flat state dict inside a loaded `.pth` object for `fmt`.

  A model format's file is train.py's {'epoch', 'state_dict', 'optimizer'}; a backbone's is
  the state dict itself.
  """
  if (_key_map(fmt) is not None and isinstance(checkpoint, Mapping)
      and 'state_dict' in checkpoint):
    checkpoint = checkpoint['state_dict']
  if not isinstance(checkpoint, Mapping) or not all(isinstance(k, str) for k in checkpoint):
    raise ConversionError(f'{source}: expected a state dict of str keys for format {fmt}')
  return checkpoint


def _leaves(tree: Any) -> list[np.ndarray]:
  if isinstance(tree, Mapping):
    return [leaf for v in tree.values() for leaf in _leaves(v)]
  return [tree]


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def merge_into(variables: Mapping, converted: Mapping) -> dict:
  """Returns `variables` with the subtrees present in `converted` replaced.

  For every collection of `converted` and every top-level module it holds (e.g. only
  'backbone' for a backbone file), the set of leaves must equal the model's and each shape
  must match; the values are cast to the model's dtype. Works on arrays or on
  `jax.ShapeDtypeStruct`s (then it only validates and returns the converted values).

  Raises:
    ConversionError: naming the parameter path and both shapes, or the leaves present
    on one side only.
  """
  out = {c: dict(_flatten(v)) for c, v in variables.items()}
  errors = []
  for collection, subtree in converted.items():
    if collection not in out:
      errors.append(f'collection {collection!r} is not in the model '
                    f'(model has {sorted(out)})')
      continue
    model_leaves = out[collection]
    conv_leaves = _flatten(subtree)
    tops = {p[0] for p in conv_leaves}
    for path in sorted(p for p in model_leaves if p[0] in tops):
      if path not in conv_leaves:
        errors.append(f'{collection}/{"/".join(path)} is in the model but not in the '
                      'converted checkpoint')
    for path, value in sorted(conv_leaves.items()):
      name = f'{collection}/{"/".join(path)}'
      if path not in model_leaves:
        errors.append(f'{name} is not a model variable')
        continue
      target = model_leaves[path]
      if tuple(target.shape) != tuple(np.shape(value)):
        errors.append(f'{name}: model shape {tuple(target.shape)} != converted shape '
                      f'{tuple(np.shape(value))}')
        continue
      model_leaves[path] = np.asarray(value).astype(target.dtype)
  if errors:
    raise ConversionError('converted checkpoint does not fit the model:\n  ' +
                          '\n  '.join(errors))
  return {c: _unflatten(leaves) for c, leaves in out.items()}


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = value
  return tree


def save_converted(tree: Mapping, out_dir: str, info: Mapping[str, Any] | None = None) -> None:
  """Writes `tree` (orbax PyTree checkpoint) and `info` JSON to `out_dir` atomically.

  The directory is assembled next to `out_dir` and renamed into place; an existing
  non-empty `out_dir` is never touched. On gs://, which has no atomic directory rename, the
  checkpoint is written in place (orbax commits it last) and the info JSON after it.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  out_dir = storage.abspath(out_dir)
  if storage.exists(out_dir) and (not storage.isdir(out_dir) or storage.listdir(out_dir)):
    raise FileExistsError(f'output {out_dir} already exists and is not empty; choose a new '
                          'directory')
  tree = {c: {k: v for k, v in sub.items()} for c, sub in tree.items()}
  if storage.is_remote(out_dir):
    ocp.PyTreeCheckpointer().save(storage.join(out_dir, _CKPT_SUBDIR), tree)
    storage.write_json_atomic(storage.join(out_dir, _INFO_FILE), dict(info or {}))
    return
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(out_dir)}.tmp-', dir=parent)
  try:
    ocp.PyTreeCheckpointer().save(os.path.join(tmp, _CKPT_SUBDIR), tree)
    with open(os.path.join(tmp, _INFO_FILE), 'w') as f:
      json.dump(dict(info or {}), f, indent=2, sort_keys=True)
    if os.path.isdir(out_dir):
      os.rmdir(out_dir)  # empty (checked above)
    os.rename(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def load_converted(out_dir: str) -> dict:
  """Restores a tree written by `save_converted` as nested dicts of numpy arrays."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  path = storage.join(storage.abspath(out_dir), _CKPT_SUBDIR)
  if not storage.isdir(path):
    raise FileNotFoundError(f'{out_dir}: no converted checkpoint (expected {path}/)')
  restored = ocp.PyTreeCheckpointer().restore(path)
  return _to_numpy(restored)


def _to_numpy(tree: Any) -> Any:
  if isinstance(tree, Mapping):
    return {k: _to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree)


def load_config(spec: str):
  """Loads `get_config(arg)` from 'path/to/config.py[:arg]'."""
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'--config: no such file {path}')
  module_spec = importlib.util.spec_from_file_location('_convert_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def abstract_variables(config) -> dict:
  """Shapes of the model's variables for `config` (jax.eval_shape of init, no FLOPs)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  model = registry.build(config)
  shots = int(config.get('shots', 1))
  size = 65  # any (H - 1) % 8 == 0 size: variable shapes do not depend on it
  q = jnp.zeros((1, size, size, 3), jnp.float32)
  s = jnp.zeros((1, shots, size, size, 3), jnp.float32)
  m = jnp.zeros((1, shots, size, size), jnp.float32)
  variables = jax.eval_shape(
      lambda: model.init({'params': jax.random.key(0), 'dropout': jax.random.key(1)},
                         q, s, m, train=False))
  return {c: _plain(v) for c, v in variables.items() if c in ('params', 'batch_stats')}


def _plain(tree):
  if isinstance(tree, Mapping):
    return {k: _plain(v) for k, v in tree.items()}
  return tree


def convert_file(input_path: str, fmt: str, output_dir: str, config_spec: str | None = None
                 ) -> dict[str, Any]:
  """Reads a `.pth`, converts it, optionally validates against a config, saves; returns info."""
  checkpoint = torch_pickle.load(input_path)
  state_dict = extract_state_dict(checkpoint, fmt, input_path)
  tree, info = convert_state_dict_with_info(state_dict, fmt)
  if config_spec:
    merge_into(abstract_variables(load_config(config_spec)), tree)
  info = {'format': fmt, 'source': storage.abspath(input_path), 'config': config_spec,
          'num_input_keys': len(state_dict), 'num_arrays': info['mapped'],
          'num_values': info['num_values'], 'skipped_keys': info['skipped'],
          'collections': sorted(tree),
          'modules': sorted({m for sub in tree.values() for m in sub})}
  if isinstance(checkpoint, Mapping) and 'epoch' in checkpoint:
    info['epoch'] = checkpoint['epoch']
  save_converted(tree, output_dir, info)
  return info


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--format', required=True, choices=formats())
  parser.add_argument('--input', required=True, help='the .pth file')
  parser.add_argument('--output', required=True, help='new (or empty) output directory')
  parser.add_argument('--config', default=None,
                      help='config file[:arg]; validates shapes against its model')
  args = parser.parse_args(argv)
  try:
    info = convert_file(args.input, args.format, args.output, args.config)
  except (ConversionError, torch_pickle.CheckpointFormatError,
          torch_pickle.UnsafeCheckpointError, OSError) as e:
    # OSError: an unreadable input (a directory, no permission) or an existing output.
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'wrote {args.output}: {info["num_arrays"]} arrays, {info["num_values"]:,} values, '
        f'{len(info["skipped_keys"])} skipped keys')
  return 0


if __name__ == '__main__':
  sys.exit(main())
