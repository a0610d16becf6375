"""16-bit PNGs: scaled to 0..255 in predict and in dataset building, never clipped or wrapped."""

import io
import os
import struct
import zlib

import numpy as np
from PIL import Image
import pytest

from mmnet_jax import predict
from mmnet_jax.data import dataset_registry
from mmnet_jax.data import image_io
from tests.data import test_pascal

# round(v * 255 / 65535) for these 16-bit samples.
SAMPLES = np.array([[0, 1, 128, 300], [32768, 40000, 65279, 65535]], np.uint16)
SCALED = np.array([[0, 0, 0, 1], [128, 156, 254, 255]], np.uint8)


def png16(samples: np.ndarray) -> bytes:
  """A 16-bit PNG of (h, w) grayscale or (h, w, 3) RGB samples, written by hand (PIL cannot
  write 16-bit RGB)."""
  h, w = samples.shape[:2]
  color_type = 2 if samples.ndim == 3 else 0
  rows = b''.join(b'\0' + samples[y].astype('>u2').tobytes() for y in range(h))

  def chunk(kind, data):
    return (struct.pack('>I', len(data)) + kind + data
            + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff))

  return (b'\x89PNG\r\n\x1a\n'
          + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 16, color_type, 0, 0, 0))
          + chunk(b'IDAT', zlib.compress(rows)) + chunk(b'IEND', b''))


def test_png16_writer_is_read_back_exactly():
  with Image.open(io.BytesIO(png16(SAMPLES))) as im:
    assert im.mode == 'I;16'
    np.testing.assert_array_equal(np.asarray(im), SAMPLES)


def test_predict_scales_16bit_grayscale(tmp_path):
  path = tmp_path / 'gray16.png'
  path.write_bytes(png16(SAMPLES))
  image = predict.load_image(str(path))
  assert image.dtype == np.uint8 and image.shape == SAMPLES.shape + (3,)
  # Mid-grey 32768 is 128, not 255 (the old convert('RGB') clipped everything above 255).
  np.testing.assert_array_equal(image, np.repeat(SCALED[..., None], 3, axis=-1))


def test_predict_16bit_rgb_is_the_high_byte(tmp_path):
  # Pillow opens 16-bit colour as 8-bit RGB (the high byte): within 1 of the exact scaling.
  rgb = np.stack([SAMPLES, SAMPLES[::-1], SAMPLES // 2], axis=-1)
  path = tmp_path / 'rgb16.png'
  path.write_bytes(png16(rgb))
  image = predict.load_image(str(path))
  exact = np.round(rgb.astype(np.float64) * 255 / 65535)
  assert image.dtype == np.uint8 and np.abs(image - exact).max() <= 1


def test_16bit_mask_ids_are_not_scaled(tmp_path):
  path = tmp_path / 'mask16.png'
  path.write_bytes(png16(np.array([[0, 300, 65535], [300, 1, 0]], np.uint16)))
  assert predict.load_mask(str(path)).tolist() == [[0, 1, 1], [1, 1, 0]]
  assert predict.load_mask(str(path), mask_class=300).tolist() == [[0, 1, 0], [1, 0, 0]]


def test_8bit_images_are_stored_as_their_file(tmp_path):
  path = str(tmp_path / 'rgb8.png')
  Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(path)
  with Image.open(path) as im:
    assert image_io.builder_image(path, im) == path


@pytest.mark.parametrize('image_id', ['2007_000010', '2008_000005'])  # val (VOC), train (SBD)
def test_pascal_build_scales_16bit_grayscale(tmp_path, image_id):
  # The builder stores image files as they are; TFDS decodes 16-bit grayscale by casting
  # (32768 -> 0). A 16-bit PNG at a listed image path must come back scaled.
  voc = test_pascal.write_tree(str(tmp_path / 'manual'))
  h, w = test_pascal.H, test_pascal.W
  samples = np.tile(SAMPLES, (h // 2, w // 4))
  with open(os.path.join(voc, 'JPEGImages', f'{image_id}.jpg'), 'wb') as f:
    f.write(png16(samples))   # decoders go by content, not by the name
  cfg = test_pascal.config(tmp_path / 'manual', tmp_path / 'tfds')
  split = dataset_registry.open_split(cfg, 'val' if image_id.startswith('2007') else 'train')
  image, label = split.load(split.image_ids.index(image_id))
  np.testing.assert_array_equal(image, np.repeat(np.tile(SCALED, (h // 2, w // 4))[..., None],
                                                 3, axis=-1))
  np.testing.assert_array_equal(label, test_pascal.LABELS[image_id])


def test_coco_build_scales_16bit_grayscale(tmp_path):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from tests.data import fake_formats  # pylint: disable=g-import-not-at-top
  from tests.data import test_coco  # pylint: disable=g-import-not-at-top
  root = str(tmp_path / 'manual')
  fake_formats.write_coco(root, 'val', test_coco.VAL_IMAGES, test_coco.VAL_ANNS)
  fake_formats.write_coco(root, 'train', test_coco.TRAIN_IMAGES, test_coco.TRAIN_ANNS)
  image_id, h, w = test_coco.VAL_IMAGES[0]
  samples = np.tile(SAMPLES, (h // 2, w // 4))
  with open(os.path.join(root, 'val2014', fake_formats.coco_file_name('val', image_id)),
            'wb') as f:
    f.write(png16(samples))
  cfg = ml_collections.ConfigDict(dict(name='coco', manual_dir=root,
                                       data_dir=str(tmp_path / 'tfds')))
  split = dataset_registry.open_split(cfg, 'val')
  index = [i for i, n in enumerate(split.image_ids) if n.endswith(f'{image_id:012d}')]
  image, _ = split.load(index[0])
  np.testing.assert_array_equal(image, np.repeat(np.tile(SCALED, (h // 2, w // 4))[..., None],
                                                 3, axis=-1))
