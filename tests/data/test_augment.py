"""PFENet augmentations and the eval pad-resize, on hand-made images."""

import types

import numpy as np
import pytest

from mmnet_jax import conventions
from mmnet_jax.data import augment as aug

MEAN, STD = conventions.IMAGENET_MEAN, conventions.IMAGENET_STD


def test_to_rgb_handles_gray_and_rgba():
  gray = np.arange(6, dtype=np.uint8).reshape(2, 3)
  out = aug.to_rgb(gray)
  assert out.shape == (2, 3, 3) and out.dtype == np.float32
  np.testing.assert_array_equal(out[..., 2], gray)
  rgba = np.random.default_rng(0).integers(0, 255, (2, 3, 4)).astype(np.uint8)
  np.testing.assert_array_equal(aug.to_rgb(rgba), rgba[..., :3])
  with pytest.raises(ValueError, match='image must be'):
    aug.to_rgb(np.zeros((2, 3, 2)))


def test_resize_matches_opencv_geometry_by_hand():
  # cv2 INTER_LINEAR: source x = (d + .5) * scale - .5, clamped: -.25, .25, .75, 1.25.
  row = np.array([[[0.], [10.]]], np.float32)  # (1, 2, 1)
  np.testing.assert_allclose(aug.resize_bilinear(row, 1, 4)[0, :, 0], [0, 2.5, 7.5, 10])
  # cv2 INTER_NEAREST: source x = floor(d * scale).
  np.testing.assert_array_equal(aug.resize_nearest(np.array([[3, 7, 9]]), 1, 5),
                                [[3, 3, 7, 7, 9]])
  np.testing.assert_array_equal(aug.resize_nearest(np.arange(6)[None], 1, 3), [[0, 2, 4]])


def test_rotation_by_hand():
  src = np.arange(16, dtype=np.uint8).reshape(4, 4)
  m = aug.rotation_matrix(2.0, 2.0, 90)  # cv2 centre (w/2, h/2), anticlockwise
  out = aug.warp_affine_nearest(src, m, 255)
  # Inverse map: x_s = 4 - y_d, y_s = x_d; row 0 falls outside -> border value.
  expected = np.full((4, 4), 255)
  for yd in range(1, 4):
    for xd in range(4):
      expected[yd, xd] = src[xd, 4 - yd]
  np.testing.assert_array_equal(out, expected)
  img = np.random.default_rng(0).random((5, 6, 3)).astype(np.float32)
  np.testing.assert_allclose(aug.warp_affine_bilinear(img, aug.rotation_matrix(3, 2.5, 0), MEAN),
                             img, atol=1e-6)
  # A constant image rotated by 10 deg: interior stays 7, corners blend towards the mean fill.
  rotated = aug.warp_affine_bilinear(np.full((5, 6, 3), 7, np.float32),
                                     aug.rotation_matrix(3, 2.5, 10), MEAN)
  assert np.allclose(rotated[2, 3], 7, atol=1e-4) and (rotated >= 7 - 1e-4).all()
  assert (rotated[0, 0] > 7).all()


def test_gaussian_blur_is_opencv_binomial_kernel():
  impulse = np.zeros((9, 9, 1), np.float32)
  impulse[4, 4] = 1
  k = np.array([1, 4, 6, 4, 1]) / 16
  np.testing.assert_allclose(aug.gaussian_blur5(impulse)[2:7, 2:7, 0], np.outer(k, k),
                             atol=1e-7)
  const = np.full((6, 7, 3), 42.0, np.float32)
  np.testing.assert_allclose(aug.gaussian_blur5(const), const, atol=1e-4)


def _ops(kind):
  """augment.py's ops, or tf_augment's returning numpy arrays."""
  if kind == 'numpy':
    return aug
  from mmnet_jax.data import tf_augment  # pylint: disable=g-import-not-at-top
  names = ('resize_bilinear', 'resize_nearest', 'warp_affine_bilinear', 'warp_affine_nearest',
           'gaussian_blur5')
  return types.SimpleNamespace(**{
      n: (lambda f: lambda *a: np.asarray(f(*a)))(getattr(tf_augment, n)) for n in names})


@pytest.mark.opencv
@pytest.mark.parametrize('kind', ['numpy', 'tf'])
def test_matches_opencv(kind):
  import cv2
  aug = _ops(kind)  # pylint: disable=redefined-outer-name
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (75, 100, 3)).astype(np.float32)
  lbl = rng.integers(0, 3, (75, 100)).astype(np.uint8)
  s = 1.0713
  ref = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
  h, w = ref.shape[:2]
  np.testing.assert_allclose(aug.resize_bilinear(img, h, w, 1 / s, 1 / s), ref, atol=1e-3)
  np.testing.assert_array_equal(
      aug.resize_nearest(lbl, h, w, 1 / s, 1 / s),
      cv2.resize(lbl, None, fx=s, fy=s, interpolation=cv2.INTER_NEAREST))
  m = cv2.getRotationMatrix2D((50, 37.5), 7.3, 1)
  ref = cv2.warpAffine(img, m, (100, 75), flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=MEAN.tolist())
  np.testing.assert_allclose(aug.warp_affine_bilinear(img, m, MEAN), ref, atol=0.05)
  ref = cv2.warpAffine(lbl, m, (100, 75), flags=cv2.INTER_NEAREST,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=255)
  assert (aug.warp_affine_nearest(lbl, m, 255) != ref).mean() < 1e-3  # .5 ties only
  np.testing.assert_allclose(aug.gaussian_blur5(img), cv2.GaussianBlur(img, (5, 5), 0),
                             atol=1e-3)


def transform(image, label, seed, crop, scale=(0.9, 1.1), rotate=10.0):
  return aug.train_transform(image, label, np.random.default_rng(seed), crop_size=crop,
                             scale_min=scale[0], scale_max=scale[1], rotate_deg=rotate)


def test_train_transform_outputs_and_determinism():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (50, 70, 3)).astype(np.uint8)
  label = np.zeros((50, 70), np.uint8)
  label[10:30, 20:50] = 1
  label[0:2] = 255
  for seed in range(20):
    img, lbl = transform(image, label, seed, 33)
    assert img.shape == (33, 33, 3) and img.dtype == np.float32 and lbl.shape == (33, 33)
    assert set(np.unique(lbl)) <= {0, 1, 255}
    assert np.isfinite(img).all()
  a, b = transform(image, label, 3, 33), transform(image, label, 3, 33)
  assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
  assert transform(image, label, 4, 33)[0].tobytes() != a[0].tobytes()


def test_small_image_is_padded_with_mean_and_255():
  image = np.full((20, 20, 3), 200, np.uint8)
  label = np.ones((20, 20), np.uint8)
  for seed in range(6):
    img, lbl = transform(image, label, seed, 64, scale=(1.0, 1.0), rotate=0.0)
    assert (lbl == 1).sum() == 400 and (lbl == 255).sum() == 64 * 64 - 400
    # Padding is the mean colour: exactly 0 after normalisation. Centred pad: 22 before.
    np.testing.assert_array_equal(img[lbl == 255], 0)
    assert lbl[22, 22] == 1 and lbl[21, 22] == 255 and lbl[41, 41] == 1 and lbl[42, 41] == 255
    np.testing.assert_allclose(img[30, 30], (200 - MEAN) / STD, rtol=1e-5)


def test_flip_and_identity_geometry():
  image = np.random.default_rng(1).integers(0, 256, (24, 24, 3)).astype(np.uint8)
  label = np.zeros((24, 24), np.uint8)
  label[:, :7] = 1
  label[3, 20] = 255
  seen = set()
  for seed in range(16):
    _, lbl = transform(image, label, seed, 24, scale=(1.0, 1.0), rotate=0.0)
    if np.array_equal(lbl, label):
      seen.add('same')
    elif np.array_equal(lbl, label[:, ::-1]):
      seen.add('flipped')
    else:
      raise AssertionError(f'seed {seed}: label is neither the input nor its mirror')
  assert seen == {'same', 'flipped'}


def test_crop_keeps_85_percent_of_foreground_when_possible():
  label = np.zeros((200, 200), np.uint8)
  label[120:160, 30:70] = 1  # 40x40 object; a 100x100 crop can hold all of it
  image = np.zeros((200, 200, 3), np.float32)
  kept = []
  for seed in range(40):
    _, lbl = aug.random_crop(image, label, 100, np.random.default_rng(seed))
    kept.append((lbl == 1).sum() / 1600)
  assert min(kept) >= 0.85
  # A single draw fails often, so the re-draw loop is what keeps the foreground.
  single = [aug.random_crop(image, label, 100, np.random.default_rng(s), max_redraws=0)[1]
            for s in range(40)]
  assert min((l == 1).sum() / 1600 for l in single) < 0.85
  # Impossible (object larger than the crop) and empty foreground: no crash, right shape.
  big = np.ones((200, 200), np.uint8)
  assert aug.random_crop(image, big, 100, np.random.default_rng(0))[1].shape == (100, 100)
  empty = np.zeros((200, 200), np.uint8)
  assert aug.random_crop(image, empty, 100, np.random.default_rng(0))[1].shape == (100, 100)


def test_empty_foreground_support_does_not_crash():
  image = np.random.default_rng(2).integers(0, 256, (40, 30)).astype(np.uint8)  # grayscale
  img, lbl = transform(image, np.zeros((40, 30), np.uint8), 0, 33)
  assert np.isfinite(img).all() and not (lbl == 1).any()


def test_eval_resize_hand_made_100x60():
  rng = np.random.default_rng(3)
  image = rng.integers(0, 256, (100, 60, 3)).astype(np.uint8)
  label = np.zeros((100, 60), np.uint8)
  label[40:60, 10:30] = 1
  label[0, :] = 255
  # Longer side 100 > 50: h -> 50, w -> int(60 * 0.5) = 30, both floored to 8: 48 x 24.
  assert aug.eval_size(100, 60, 50) == (48, 24)
  # Resize scales a smaller image up too: w -> 473, h -> int(60 * 4.73) = 283, floored: 280 x 472.
  assert aug.eval_size(60, 100, 473) == (280, 472)
  assert aug.eval_size(60, 100, 473, 'test_resize') == (60, 100)  # test_Resize: kept, not floored
  assert aug.eval_size(375, 500, 473) == (352, 472)  # 473 -> 472, int(354.7)=354 -> 352
  assert aug.eval_size(375, 500, 473, 'test_resize') == (352, 472)
  with pytest.raises(ValueError, match=r"config.eval.resize='pfenet'; expected one of"):
    aug.eval_size(375, 500, 473, 'pfenet')
  img, lbl, original = aug.eval_resize(image, label, 50)
  assert img.shape == (50, 50, 3) and lbl.shape == (50, 50) and original.shape == (100, 100)
  black = -MEAN / STD  # PFENet pastes on zeros before normalising
  np.testing.assert_allclose(img[48:], np.broadcast_to(black, (2, 50, 3)), rtol=1e-6)
  np.testing.assert_allclose(img[:, 24:], np.broadcast_to(black, (50, 26, 3)), rtol=1e-6)
  np.testing.assert_allclose(img[:48, :24], (aug.resize_bilinear(
      image.astype(np.float32), 48, 24) - MEAN) / STD, rtol=1e-5)
  assert (lbl[48:] == 255).all() and (lbl[:, 24:] == 255).all()
  np.testing.assert_array_equal(lbl[:48, :24], aug.resize_nearest(label, 48, 24))
  np.testing.assert_array_equal(original[:, :60], label)
  assert (original[:, 60:] == 255).all()
  # test_Resize at size 473 pastes it unchanged; fill='mean' makes the canvas 0.
  img, lbl, _ = aug.eval_resize(image, label, 473, fill='mean', mode='test_resize')
  np.testing.assert_allclose(img[:100, :60], (image - MEAN) / STD, rtol=1e-5)
  np.testing.assert_array_equal(img[100:], 0)
  np.testing.assert_array_equal(lbl[:100, :60], label)
  assert (lbl[100:] == 255).all() and (lbl[:, 60:] == 255).all()


def test_image_smaller_than_the_crop_is_padded_not_rejected():
  """Bad-input policy (docs/robustness.md): small images are padded as PFENet does, with the
  mean colour (0 after normalisation) and ignore (255) labels."""
  image = np.full((10, 7, 3), 90, np.uint8)
  label = np.ones((10, 7), np.uint8)
  out, lbl = aug.train_transform(image, label, np.random.default_rng(0), crop_size=33,
                                     scale_min=1.0, scale_max=1.0, rotate_deg=0.0)
  assert out.shape == (33, 33, 3) and lbl.shape == (33, 33)
  assert 0 < (lbl == 1).sum() <= 70 and (lbl == 255).sum() == 33 * 33 - (lbl == 1).sum()
  np.testing.assert_allclose(out[lbl == 255], 0.0, atol=1e-6)   # the mean colour, normalised
  one_pixel, _ = aug.train_transform(np.zeros((1, 1), np.uint8), np.zeros((1, 1), np.uint8),
                                         np.random.default_rng(1), crop_size=33,
                                         scale_min=0.9, scale_max=1.1)
  assert one_pixel.shape == (33, 33, 3) and np.isfinite(one_pixel).all()


def test_rgba_drops_alpha_and_grayscale_is_repeated():
  rgb = np.random.default_rng(0).integers(0, 256, (5, 6, 3)).astype(np.uint8)
  rgba = np.concatenate([rgb, np.zeros((5, 6, 1), np.uint8)], axis=2)
  np.testing.assert_array_equal(aug.to_rgb(rgba), rgb.astype(np.float32))
  np.testing.assert_array_equal(aug.to_rgb(rgb[:, :, 0])[:, :, 2], rgb[:, :, 0])
  with pytest.raises(ValueError, match=r'got shape \(5, 6, 2\)'):
    aug.to_rgb(rgb[:, :, :2])


def _pfenet_resize_restated(image, label, size):
  """PFENet util/transform.py `Resize` restated from its rule, independently of augment.py:
  cv2.resize INTER_LINEAR (float image) / INTER_NEAREST per output pixel in float64, pasted
  top-left on zeros (image, then normalised as ToTensor + Normalize) and 255 (label)."""
  h, w = label.shape
  if h >= w:
    nh, nw = size, int(w * (size * 1.0 / h))
  else:
    nh, nw = int(h * (size * 1.0 / w)), size
  nh, nw = (nh if nh % 8 == 0 else int(nh / 8) * 8), (nw if nw % 8 == 0 else int(nw / 8) * 8)
  src = image.astype(np.float64)
  out = np.zeros((size, size, 3))
  lab = np.full((size, size), 255.0)
  for y in range(nh):
    fy = (y + 0.5) * (h / nh) - 0.5
    y0 = int(np.floor(fy))
    dy = fy - y0
    if y0 < 0:
      y0, dy = 0, 0.0
    if y0 >= h - 1:
      y0, dy = h - 1, 0.0
    y1 = min(y0 + 1, h - 1)
    fx = (np.arange(nw) + 0.5) * (w / nw) - 0.5
    x0 = np.floor(fx).astype(int)
    dx = fx - x0
    dx[x0 < 0], x0[x0 < 0] = 0.0, 0
    high = x0 >= w - 1
    dx[high], x0[high] = 0.0, w - 1
    x1 = np.minimum(x0 + 1, w - 1)
    top = src[y0, x0] * (1 - dx)[:, None] + src[y0, x1] * dx[:, None]
    bottom = src[y1, x0] * (1 - dx)[:, None] + src[y1, x1] * dx[:, None]
    out[y] = 0.0
    out[y, :nw] = top * (1 - dy) + bottom * dy
    sy = min(int(np.floor(y * (h / nh))), h - 1)
    sx = np.minimum(np.floor(np.arange(nw) * (w / nw)).astype(int), w - 1)
    lab[y, :nw] = label[sy, sx]
  return (out - MEAN) / STD, lab


@pytest.mark.parametrize('size', [473, 641])
@pytest.mark.parametrize('hw', [(100, 60), (60, 100), (320, 427), (400, 300), (375, 500),
                                (473, 473), (472, 311), (612, 459), (500, 641), (641, 200),
                                (1000, 750), (17, 9)])
def test_eval_resize_equals_pfenet_resize_restated(hw, size):
  """Every size, up- and down-scaled: image within 1e-5 (normalised), label identical."""
  rng = np.random.default_rng(hw[0] * 7 + hw[1])
  image = rng.integers(0, 256, hw + (3,)).astype(np.uint8)
  label = rng.integers(0, 2, hw).astype(np.uint8)
  label[rng.random(hw) < 0.05] = 255
  img, lbl, _ = aug.eval_resize(image, label, size)
  want_img, want_lbl = _pfenet_resize_restated(image, label, size)
  np.testing.assert_allclose(img, want_img, rtol=0, atol=1e-5)
  np.testing.assert_array_equal(lbl, want_lbl.astype(np.uint8))
  assert not aug.eval_scored_by_crop(*hw, size)   # Resize: the canvas is resized for scoring
