"""dataset.pipeline='service': the graph training stream built by two tf.data service worker
processes equals the local graph stream bit for bit, in step order, across table files, with
bad samples redrawn and steps the workers could not build rebuilt; the record export
resumes and refuses another split's folder."""

import json
import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from mmnet_jax import config_checks
from mmnet_jax import default_config
from mmnet_jax.data import pipeline
from mmnet_jax.data import service
from mmnet_jax.data import service_server
from mmnet_jax.data import streams
from tests.data.test_graph_pipeline import graph_config
from tests.data.test_graph_pipeline import stored_split
from tests.data.test_pipeline import assert_same


def service_config(records_dir, window=64, shots=2):
  c = graph_config(shots)
  c.dataset.pipeline = 'service'
  c.dataset.service = ml_collections.ConfigDict(dict(
      address='', local_workers=2, reorder_window=window, records_dir=str(records_dir)))
  return c


@pytest.mark.parametrize('records', [True, False])
def test_service_stream_equals_the_local_graph_stream(tmp_path, monkeypatch, records):
  monkeypatch.setattr(service, 'TABLE_STEPS', 3)   # steps 2..9 span four table files
  bad = 5
  split = stored_split(corrupt={bad}, records=records)   # a truncated JPEG among the images
  config = service_config(tmp_path)
  pool = pipeline.train_pool(split, [1, 2, 3, 4], config)
  stream = streams.train_dataset(pool, config, start_step=2, host_batch_size=4, num_steps=10)
  assert isinstance(stream, service.ServiceTrainStream)
  assert len(service.local_service(2).workers) == 2
  got = list(stream)

  config.dataset.pipeline = 'graph'
  local = streams.train_dataset(pool, config, start_step=2, host_batch_size=4, num_steps=10)
  expected = list(local)
  assert len(got) == len(expected) == 8
  for a, b in zip(got, expected):
    assert_same(a, b)
  touched = sum(bool(np.isin([bad], np.concatenate([b['query_index'].ravel(),
                                                    b['support_index'].ravel()])).any())
                for b in expected)
  # The steps whose regular draw hit the bad image came back without it: dropped by the
  # workers, rebuilt here with the same redraws and counts as the local stream.
  assert stream.dropped >= 1 and stream.skips.count == local.skips.count >= stream.dropped
  assert touched == 0 and repr(split.image_ids[bad]) in stream.skips.last


def test_resume_mid_table_gives_the_same_steps(tmp_path, monkeypatch):
  monkeypatch.setattr(service, 'TABLE_STEPS', 4)
  split = stored_split()
  config = service_config(tmp_path)
  pool = pipeline.train_pool(split, [1, 2, 3, 4], config)
  full = list(streams.train_dataset(pool, config, start_step=0, host_batch_size=4, num_steps=7))
  resumed = streams.train_dataset(pool, config, start_step=3, host_batch_size=4, num_steps=7)
  tail = list(resumed)
  assert len(tail) == 4 and resumed.dropped == 0   # nothing bad: every step from the workers
  for a, b in zip(tail, full[3:]):
    assert_same(a, b)
  resumed.close()
  assert os.listdir(tmp_path / 'tables') == []   # the stream's table folder is removed


def test_steps_past_the_written_tables_are_rebuilt(tmp_path, monkeypatch):
  # Workers run ahead of tables written only 1 step ahead: those steps fail on the workers
  # and are rebuilt here; the stream is still the local one.
  monkeypatch.setattr(service, 'TABLE_STEPS', 1)
  monkeypatch.setattr(service, 'TABLE_AHEAD', 1)
  split = stored_split()
  config = service_config(tmp_path, window=2)
  pool = pipeline.train_pool(split, [1, 2, 3, 4], config)
  stream = streams.train_dataset(pool, config, start_step=0, host_batch_size=4, num_steps=6)
  got = list(stream)
  config.dataset.pipeline = 'graph'
  expected = list(streams.train_dataset(pool, config, start_step=0, host_batch_size=4,
                                        num_steps=6))
  assert len(got) == 6
  for a, b in zip(got, expected):
    assert_same(a, b)
  assert stream.skips.count == 0


def test_export_resumes_and_lists_unreadable_records(tmp_path):
  split = stored_split(n=6)
  calls = []
  original = split.load_record

  def load_record(i):
    calls.append(i)
    if i == 4:
      raise ValueError('damaged')
    return original(i)
  object.__setattr__(split, 'load_record', load_record)
  path = service.records_path(split, str(tmp_path))
  os.makedirs(path)
  with open(os.path.join(path, service.record_name(1)), 'wb') as f:
    f.write(original(1))           # a file an interrupted export finished
  with open(os.path.join(path, service.record_name(2) + '.tmp-x-1-2'), 'wb') as f:
    f.write(b'half')               # one it did not: ignored, rewritten under the real name
  assert service.export_records(split, str(tmp_path)) == path
  assert sorted(calls) == [0, 2, 3, 4, 5]
  manifest = json.load(open(os.path.join(path, service.MANIFEST)))
  assert manifest['missing'] == [4] and manifest['count'] == 6
  assert not os.path.exists(os.path.join(path, service.record_name(4)))
  for i in (0, 2, 5):
    assert open(os.path.join(path, service.record_name(i)), 'rb').read() == original(i)
  calls.clear()
  service.export_records(split, str(tmp_path))   # done: nothing read again
  assert calls == []


def test_export_refuses_a_folder_of_other_records(tmp_path):
  split = stored_split(n=6)
  path = service.export_records(split, str(tmp_path))
  manifest = os.path.join(path, service.MANIFEST)
  found = json.load(open(manifest))
  found['count'] = 7
  json.dump(found, open(manifest, 'w'))
  with pytest.raises(ValueError, match='manifest.json: records of .* expected'):
    service.export_records(split, str(tmp_path))


def test_config_fields_are_checked():
  config = default_config.get_config()
  config.dataset.pipeline = 'service'
  config.dataset.service.reorder_window = 0
  config.dataset.service.local_workers = 0
  problems = '\n'.join(config_checks.problems(config))
  assert 'dataset.service.reorder_window' in problems and 'an int >= 1' in problems
  assert 'dataset.service.local_workers' in problems


def test_worker_needs_a_dispatcher(capsys):
  with pytest.raises(SystemExit):
    service_server.main(['worker'])
  assert '--dispatcher' in capsys.readouterr().err


def test_address_is_used_as_given():
  options = {'address': 'host:5050', 'local_workers': 2}
  assert service.service_target(options) == 'grpc://host:5050'
