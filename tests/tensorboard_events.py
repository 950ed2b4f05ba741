"""Reading a run's TensorBoard events back the way TensorBoard's dashboards do (its plugin event
accumulator), without TensorFlow: for the tests."""
from __future__ import annotations


def read_events(logdir: str) -> dict:
  """``{"scalars": {tag: [(step, value)]}, "images": {tag: [(step, width, height, png)]},
  "hparams": {name: value}}`` of the event files in ``logdir``."""
  # pylint: disable=import-outside-toplevel
  from tensorboard.backend.event_processing import plugin_event_accumulator as pea
  from tensorboard.plugins.hparams import plugin_data_pb2
  from tensorboard.util import tensor_util
  acc = pea.EventAccumulator(logdir, size_guidance={pea.TENSORS: 0})
  acc.Reload()
  scalars, images = {}, {}
  for tag in acc.Tags()["tensors"]:
    plugin = acc.SummaryMetadata(tag).plugin_data.plugin_name
    for e in acc.Tensors(tag):
      value = tensor_util.make_ndarray(e.tensor_proto)
      if plugin == "scalars":
        scalars.setdefault(tag, []).append((e.step, float(value)))
      elif plugin == "images":
        width, height, *pngs = value
        images.setdefault(tag, []).extend((e.step, int(width), int(height), png) for png in pngs)
  hparams = {}
  for content in acc.PluginTagToContent("hparams").values():
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    for name, v in start.hparams.items():
      hparams[name] = getattr(v, v.WhichOneof("kind"))
  return {"scalars": scalars, "images": images, "hparams": hparams}
