"""Runs started together on a fresh data_dir: one builds the dataset, the others wait and read."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BUILD = '''
import sys, time
from mmnet_jax.data import synthetic, synthetic_tfds
gen = synthetic.SyntheticConfig(num_train=60, num_val=20)
while time.time() < float(sys.argv[2]):   # start together
  time.sleep(0.005)
split = synthetic_tfds.open_split(gen, 'val', sys.argv[1])
print('rows', len(split), split.image_ids[-1], flush=True)
'''


def test_concurrent_first_builds_all_succeed(tmp_path):
  """Three processes open the same unbuilt synthetic dataset at the same moment. Without the
  build lock each generated it and the later ones died renaming their copy onto the first's
  (FileExistsError: Cannot rename .../incomplete... Destination ... already exists)."""
  import time
  data_dir = str(tmp_path / 'tfds')
  start = time.time() + 8.0   # after the three interpreters have imported TFDS
  env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='3')
  procs = [subprocess.Popen([sys.executable, '-c', BUILD, data_dir, str(start)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(3)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
    assert 'rows 20 val_000019' in out
  versions = os.listdir(os.path.join(data_dir, 'synthetic_fss', 's0_n60-20_sz128-192_b2_c5'))
  assert [v for v in versions if not v.endswith('.lock')] == ['1.0.0'], versions
