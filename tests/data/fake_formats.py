"""Writers of tiny datasets in the exact on-disk formats of the official downloads (tests only).

* VOC2012: JPEGImages/<id>.jpg, SegmentationClass/<id>.png as 8-bit palette PNGs with the VOC
  colour map (index 255 = the cream border colour), ImageSets/Segmentation/{train,val}.txt.
* SegmentationClassAug/<id>.png: 8-bit grayscale class-index PNGs (the DeepLab conversion).
* SBD lists: one id per line.
* COCO 2014: <split>2014/COCO_<split>2014_<12 digits>.jpg and
  annotations/instances_<split>2014.json (images, annotations, categories).
"""

import json
import os

import numpy as np
from PIL import Image

from mmnet_jax.data import coco


def voc_colormap():
  """The 256-entry VOC palette (bit-interleaved class index -> RGB), flat list of 768."""
  cmap = []
  for i in range(256):
    r = g = b = 0
    c = i
    for j in range(8):
      r |= ((c >> 0) & 1) << (7 - j)
      g |= ((c >> 1) & 1) << (7 - j)
      b |= ((c >> 2) & 1) << (7 - j)
      c >>= 3
    cmap += [r, g, b]
  return cmap


def random_image(shape, seed):
  return np.random.default_rng(seed).integers(0, 256, shape + (3,), dtype=np.uint8)


def write_jpeg(path, image):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image).save(path, quality=95)


def write_palette_png(path, label):
  """A VOC-style palette PNG whose pixel values are the class indices."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  im = Image.fromarray(np.asarray(label, np.uint8), mode='P')
  im.putpalette(voc_colormap())
  im.save(path)


def write_gray_png(path, label):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(label, np.uint8), mode='L').save(path)


def write_ids(path, ids):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(''.join(f'{i}\n' for i in ids))


def write_voc(voc_root, labels, train_ids, val_ids, aug_ids):
  """VOC2012 tree: images for every id in `labels`, palette masks for VOC ids, the
  Segmentation lists, and SegmentationClassAug grayscale masks for `aug_ids`."""
  for n, (image_id, label) in enumerate(sorted(labels.items())):
    write_jpeg(os.path.join(voc_root, 'JPEGImages', f'{image_id}.jpg'),
               random_image(label.shape, n))
    if image_id in train_ids or image_id in val_ids:
      write_palette_png(os.path.join(voc_root, 'SegmentationClass', f'{image_id}.png'), label)
    if image_id in aug_ids:
      write_gray_png(os.path.join(voc_root, 'SegmentationClassAug', f'{image_id}.png'), label)
  seg = os.path.join(voc_root, 'ImageSets', 'Segmentation')
  write_ids(os.path.join(seg, 'train.txt'), train_ids)
  write_ids(os.path.join(seg, 'val.txt'), val_ids)
  write_ids(os.path.join(seg, 'trainval.txt'), sorted(train_ids + val_ids))


def coco_file_name(split, image_id):
  return f'COCO_{split}2014_{image_id:012d}.jpg'


def write_coco(root, split, images, annotations):
  """COCO 2014 files for one split.

  Args:
    images: [(image id, height, width)].
    annotations: COCO annotation dicts (id, image_id, category_id, segmentation, iscrowd);
      area and bbox are filled in from the decoded mask.
  """
  for image_id, h, w in images:
    write_jpeg(os.path.join(root, f'{split}2014', coco_file_name(split, image_id)),
               random_image((h, w), image_id))
  sizes = {i: (h, w) for i, h, w in images}
  anns = []
  for ann in annotations:
    h, w = sizes[ann['image_id']]
    m = coco.annotation_mask(ann['segmentation'], h, w)
    ys, xs = np.nonzero(m)
    anns.append(dict(ann, area=float(m.sum()),
                     bbox=[float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1),
                           float(np.ptp(ys) + 1)]))
  data = {
      'info': {'description': 'fake COCO 2014'}, 'licenses': [],
      'images': [{'id': i, 'file_name': coco_file_name(split, i), 'height': h, 'width': w}
                 for i, h, w in images],
      'annotations': anns,
      'categories': [{'id': c, 'name': f'cat{c}', 'supercategory': 'thing'}
                     for c in reversed(coco.CATEGORY_IDS)],   # unsorted on purpose
  }
  os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
  with open(os.path.join(root, 'annotations', f'instances_{split}2014.json'), 'w') as f:
    json.dump(data, f)
