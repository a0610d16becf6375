"""tf_augment's graph ops against augment.py's numpy ops, on random pairs of many sizes.

Images must agree within IMAGE_TOL on 0-255 (measured: 0, the same float ops in the same
order), except the rotation (one fused TensorFlow op with float32 source coordinates; numpy's
are float64): within WARP_TOL (measured 3.8e-3). Labels agree exactly, except the rotation's
pixels whose source coordinates lie within NEAR_TIE of a .5 rounding tie: the test asserts that
every differing pixel is such a near-tie and counts them (measured 5e-6 of the pixels at random
angles; 4.3e-3 at multiples of 45 degrees, where exact ties round half away from zero here).
"""

import numpy as np
import pytest
import tensorflow as tf

from mmnet_jax import conventions
from mmnet_jax.data import augment as aug
from mmnet_jax.data import tf_augment as ta

MEAN = conventions.IMAGENET_MEAN
IMAGE_TOL = 1e-4     # on 0-255 (normalised outputs are compared at IMAGE_TOL / std)
TIE_FRACTION = 1e-4  # labels differing on rotation near-ties (measured 5e-6)
EXACT_TIE_FRACTION = 1e-2   # at multiples of 45 degrees (measured 4.3e-3)
WARP_TOL = 0.02      # rotation on 0-255: float32 source coordinates (OpenCV vs numpy: 0.014)
NEAR_TIE = 1e-3      # pixels from a .5 tie where float32 coordinates may round either way
TINY = [(1, 1), (1, 2), (2, 1), (2, 2), (1, 5), (5, 1), (2, 3), (3, 3), (3, 4)]


def random_pair(rng, h, w):
  image = (rng.random((h, w, 3)) * 255).astype(np.float32)
  label = rng.choice(np.array([0, 1, 255], np.uint8), (h, w), p=[0.5, 0.4, 0.1])
  return image, label


def sizes(rng, n):
  """The tiny sizes, then n random (h, w) with sides 1..120."""
  return TINY + [tuple(int(s) for s in rng.integers(1, 121, 2)) for _ in range(n)]


def assert_image_close(ours, numpy_image, tol=IMAGE_TOL):
  ours = np.asarray(ours)
  assert ours.shape == numpy_image.shape and ours.dtype == np.float32
  assert np.abs(ours - numpy_image).max(initial=0) <= tol


def assert_label_equal(ours, numpy_label):
  ours = np.asarray(ours)
  assert ours.dtype == numpy_label.dtype
  np.testing.assert_array_equal(ours, numpy_label)


def test_to_rgb_gray_and_rgba():
  rng = np.random.default_rng(0)
  for image in (rng.integers(0, 255, (4, 5), np.uint8), rng.integers(0, 255, (4, 5, 1), np.uint8),
                rng.integers(0, 255, (4, 5, 4), np.uint8)):
    assert_image_close(ta.to_rgb(image), aug.to_rgb(image), 0)


def test_resize_matches_numpy():
  rng = np.random.default_rng(1)
  for h, w in sizes(rng, 100):
    image, label = random_pair(rng, h, w)
    s = rng.uniform(0.5, 2.0)
    out_h, out_w = max(int(np.rint(h * s)), 1), max(int(np.rint(w * s)), 1)
    # RandScale's call (scale given) and a dsize call (scale from the sizes).
    assert_image_close(ta.resize_bilinear(image, out_h, out_w, 1 / s, 1 / s),
                       aug.resize_bilinear(image, out_h, out_w, 1 / s, 1 / s))
    assert_label_equal(ta.resize_nearest(label, out_h, out_w, 1 / s, 1 / s),
                       aug.resize_nearest(label, out_h, out_w, 1 / s, 1 / s))
    out_h, out_w = (int(v) for v in rng.integers(1, 121, 2))
    assert_image_close(ta.resize_bilinear(image, out_h, out_w),
                       aug.resize_bilinear(image, out_h, out_w))
    assert_label_equal(ta.resize_nearest(label, out_h, out_w),
                       aug.resize_nearest(label, out_h, out_w))


def _source_coords(matrix, h, w):
  inv = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))
  ys, xs = np.mgrid[:h, :w]
  return (inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2],
          inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2])


def _near_tie(coord):
  """Within NEAR_TIE pixels of a .5 rounding boundary (float32 coordinates land either side)."""
  return np.abs(coord + 0.5 - np.round(coord + 0.5)) < NEAR_TIE


@pytest.mark.parametrize('angles', ['random', 'multiples_of_45'])
def test_rotation_matches_numpy(angles):
  rng = np.random.default_rng(2 if angles == 'random' else 3)
  differing = total = 0
  worst = 0.0
  for h, w in sizes(rng, 100 if angles == 'random' else 25):
    image, label = random_pair(rng, h, w)
    chosen = ([rng.uniform(-180, 180)] if angles == 'random'
              else [0, 45, -45, 90, -90, 135, 180, -180])
    for angle in chosen:
      matrix = aug.rotation_matrix(w / 2, h / 2, angle)
      np.testing.assert_array_equal(ta.rotation_matrix(w / 2, h / 2, angle), matrix)
      ours = ta.warp_affine_bilinear(image, matrix, MEAN).numpy()
      theirs = aug.warp_affine_bilinear(image, matrix, MEAN)
      assert ours.shape == theirs.shape and ours.dtype == np.float32
      worst = max(worst, float(np.abs(ours - theirs).max(initial=0)))
      ours = ta.warp_affine_nearest(label, matrix, 255).numpy()
      theirs = aug.warp_affine_nearest(label, matrix, 255)
      assert ours.dtype == theirs.dtype
      src_x, src_y = _source_coords(matrix, h, w)
      diff = ours != theirs
      assert (_near_tie(src_x) | _near_tie(src_y))[diff].all()
      differing += diff.sum()
      total += diff.size
  print(f'rotation ({angles}): worst image difference {worst:.2e}, '
        f'{differing} of {total} label pixels differ')
  assert worst <= WARP_TOL
  # Exact ties (multiples of 45 degrees, probability 0 under RandRotate) round half away from
  # zero here and up in augment.py: whole columns of them differ.
  assert differing <= (TIE_FRACTION if angles == 'random' else EXACT_TIE_FRACTION) * total


def test_blur_flip_pad_crop_normalise_match_numpy():
  rng = np.random.default_rng(4)
  for h, w in sizes(rng, 80):
    image, label = random_pair(rng, h, w)
    assert_image_close(ta.gaussian_blur5(image), aug.gaussian_blur5(image))
    flipped = ta.hflip(image, label)
    assert_image_close(flipped[0], image[:, ::-1])
    assert_label_equal(flipped[1], label[:, ::-1])
    size = int(rng.integers(1, 130))
    ours = ta.pad_to(image, label, size)
    theirs = aug.pad_to(image, label, size)
    assert_image_close(ours[0], theirs[0], 0)
    assert_label_equal(ours[1], theirs[1])
    top, left = (int(rng.integers(0, side - size + 1)) for side in theirs[1].shape)  # padded
    cropped = ta.crop(ours[0], ours[1], top, left, size)
    assert_image_close(cropped[0], theirs[0][top:top + size, left:left + size], 0)
    assert_label_equal(cropped[1], theirs[1][top:top + size, left:left + size])
    assert_image_close(ta.normalize(image), conventions.normalize_image(image), 0)


def _crop_draws(rng, padded_h, padded_w, size, n=32):
  """random_crop's draws from `rng`, in its order (top, left, top, left, ...)."""
  draws = [(int(rng.integers(0, padded_h - size + 1)), int(rng.integers(0, padded_w - size + 1)))
           for _ in range(n)]
  return np.array(draws, np.int32).T


def test_choose_crop_matches_random_crop():
  rng = np.random.default_rng(5)
  for seed, (h, w) in enumerate(sizes(rng, 60)):
    image, _ = random_pair(rng, h, w)
    # One foreground box, so that some crops keep < 85% of it and are re-drawn.
    label = np.zeros((h, w), np.uint8)
    y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
    label[y:y + int(rng.integers(1, h + 1)), x:x + int(rng.integers(1, w + 1))] = 1
    size = int(rng.integers(1, 80))
    theirs = aug.random_crop(image, label, size, np.random.default_rng(seed))
    padded_image, padded_label = ta.pad_to(image, label, size)
    tops, lefts = _crop_draws(np.random.default_rng(seed), *padded_label.shape, size)
    top, left = ta.choose_crop(padded_label, size, tops, lefts)
    ours = ta.crop(padded_image, padded_label, top, left, size)
    assert_image_close(ours[0], theirs[0], 0)
    assert_label_equal(ours[1], theirs[1])


def _numpy_draws(rng, h, w, crop_size, scale_min, scale_max, rotate_deg):
  """train_transform's draws from `rng`, in its order, as apply_train's params."""
  scale = scale_min + (scale_max - scale_min) * rng.random()
  out_h, out_w = max(int(np.rint(h * scale)), 1), max(int(np.rint(w * scale)), 1)
  rotate = bool(rng.random() < 0.5)
  angle = -rotate_deg + 2 * rotate_deg * rng.random() if rotate else 0.0
  blur, flip = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
  tops, lefts = _crop_draws(rng, max(out_h, crop_size), max(out_w, crop_size), crop_size)
  return {'scale': scale, 'rotate': rotate, 'angle': angle, 'blur': blur, 'flip': flip,
          'tops': tops, 'lefts': lefts}


def test_apply_train_matches_train_transform():
  rng = np.random.default_rng(6)
  for seed, (h, w) in enumerate(sizes(rng, 60)):
    image, label = random_pair(rng, h, w)
    crop_size = int(rng.integers(1, 100))
    kwargs = dict(crop_size=crop_size, scale_min=0.5, scale_max=2.0, rotate_deg=180.0)
    theirs = aug.train_transform(image, label, np.random.default_rng(seed), **kwargs)
    params = _numpy_draws(np.random.default_rng(seed), h, w, **kwargs)
    ours = ta.apply_train(image, label, params, crop_size=crop_size)
    assert_image_close(ours[0], theirs[0], WARP_TOL / conventions.IMAGENET_STD.min())
    assert_label_equal(ours[1], theirs[1])


@pytest.mark.parametrize('fill', ['black', 'mean'])
@pytest.mark.parametrize('mode', ['resize', 'test_resize'])
def test_eval_resize_matches_numpy(fill, mode):
  rng = np.random.default_rng(7)
  for h, w in sizes(rng, 30):
    size = int(rng.choice([8, 17, 64, 100]))
    if min(aug.eval_size(h, w, size, mode)) < 1:
      continue
    image, label = random_pair(rng, h, w)
    ours = ta.eval_resize(image, label, size, fill, mode)
    theirs = aug.eval_resize(image, label, size, fill, mode)
    assert_image_close(ours[0], theirs[0], IMAGE_TOL / conventions.IMAGENET_STD.min())
    assert_label_equal(ours[1], theirs[1])
    assert_label_equal(ours[2], theirs[2])
  with pytest.raises(tf.errors.InvalidArgumentError, match='too elongated'):
    ta.eval_resize(np.zeros((2, 100, 3), np.uint8), np.zeros((2, 100), np.uint8), 64, fill, mode)


def test_dataset_map_equals_eager():
  rng = np.random.default_rng(8)
  pairs = [random_pair(rng, h, w) for h, w in sizes(rng, 7)]
  kwargs = dict(crop_size=24, scale_min=0.5, scale_max=2.0, rotate_deg=180.0)

  def gen():
    for i, (image, label) in enumerate(pairs):
      yield image, label, np.array([i, 7], np.int32)
  ds = tf.data.Dataset.from_generator(gen, output_signature=(
      tf.TensorSpec([None, None, 3], tf.float32), tf.TensorSpec([None, None], tf.uint8),
      tf.TensorSpec([2], tf.int32)))
  ds = ds.map(lambda image, label, seed: ta.train_transform(image, label, seed, **kwargs),
              num_parallel_calls=4, deterministic=True)
  for i, (got, (image, label)) in enumerate(zip(ds.as_numpy_iterator(), pairs)):
    eager = ta.train_transform(image, label, tf.constant([i, 7]), **kwargs)
    np.testing.assert_array_equal(got[0], eager[0])
    np.testing.assert_array_equal(got[1], eager[1])
    assert got[0].shape == (24, 24, 3) and set(np.unique(got[1])) <= {0, 1, 255}


def test_graphs_have_no_python_callbacks():
  image = tf.TensorSpec([None, None, 3], tf.uint8)
  label = tf.TensorSpec([None, None], tf.uint8)
  train = tf.function(lambda i, l, s: ta.train_transform(i, l, s, crop_size=24, scale_min=0.5,
                                                         scale_max=2.0))
  evaluate = tf.function(lambda i, l: ta.eval_resize(i, l, 64))
  for graph in (train.get_concrete_function(image, label, tf.TensorSpec([2], tf.int32)).graph,
                evaluate.get_concrete_function(image, label).graph):
    graph_def = graph.as_graph_def()
    types = {n.op for n in graph_def.node}
    types |= {n.op for f in graph_def.library.function for n in f.node_def}  # cond branches
    assert not types & {'PyFunc', 'PyFuncStateless', 'EagerPyFunc'}, types
