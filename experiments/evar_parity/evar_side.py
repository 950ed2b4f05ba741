"""EVAR's own code, loaded at run time from checkouts of its two repositories (never copied here).

- ``daisukelab/general-learning``: ``MLP/torch_mlp_clf2.py`` (``TorchMLPClassifier2``, which
  EVAR's README downloads into ``evar/utils/``); needs torch, scikit-learn and pandas.
- ``nttcslab/eval-audio-repr``: ``lineareval.py``'s ``_one_linear_eval`` (how EVAR builds, fits and
  scores the classifier) and ``evar/data.py``'s ``BaseRawAudioDataset`` (the unit-length crop),
  both taken out of the files with ``ast`` and run as they are: their modules import the whole
  EVAR stack (fire, nnAudio, the encoders), which this comparison does not need.
"""
from __future__ import annotations

import ast
import importlib.util
import logging
import os

import numpy as np


def _source_of(path: str, name: str) -> str:
  """The source of the top-level function or class ``name`` in the file ``path``."""
  with open(path) as f:
    text = f.read()
  for node in ast.parse(text).body:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
      return ast.get_source_segment(text, node)
  raise ValueError(f"{path} defines no {name}")


class Evar:
  """EVAR's classifier and crop, from the checkouts ``evar_root`` and ``general_learning_root``."""

  def __init__(self, evar_root: str, general_learning_root: str):
    import torch
    import torch.nn.functional as F
    clf_path = os.path.join(general_learning_root, "MLP", "torch_mlp_clf2.py")
    spec = importlib.util.spec_from_file_location("torch_mlp_clf2", clf_path)
    self.clf_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(self.clf_module)
    self.torch = torch
    ns = {"TorchMLPClassifier2": self.clf_module.TorchMLPClassifier2, "logging": logging}
    exec(_source_of(os.path.join(evar_root, "lineareval.py"), "_one_linear_eval"), ns)
    self._one_linear_eval = ns["_one_linear_eval"]
    ns = {"np": np, "torch": torch, "F": F}
    exec(_source_of(os.path.join(evar_root, "evar", "data.py"), "BaseRawAudioDataset"), ns)
    self._dataset = ns["BaseRawAudioDataset"]

  def linear_eval(self, X, y, X_val, y_val, X_test, y_test, *, lr: float, seed: int | None,
                  classes, epochs: int = 200, early_stop_epochs: int = 20) -> float:
    """One fit and test score of ``lineareval.py --seed SEED`` on given embeddings: its
    ``seed_everything(seed)`` (``None``: the random state goes on, as between the folds of one
    run) then ``_one_linear_eval`` with lineareval's defaults (linear, standard scaler, no
    mixup). ``X_val=None``: EVAR's hold-out (its fold tasks)."""
    if seed is not None:
      self.clf_module.seed_everything(seed)
    score, _ = self._one_linear_eval(
        X, y, X_val, y_val, X_test, y_test, hidden_sizes=(), epochs=epochs,
        early_stop_epochs=early_stop_epochs, lr=lr, classes=classes, standard_scaler=True,
        mixup=False, debug=False, save_path=None)
    return float(score)

  def unit_crop(self, wave: np.ndarray, unit_samples: int, random_crop: bool) -> np.ndarray:
    """``BaseRawAudioDataset.__getitem__``'s crop / zero pad of one waveform."""
    torch = self.torch

    class One(self._dataset):
      def __len__(self):
        return 1

      def get_audio(self, index):
        return torch.tensor(wave)

    return One(unit_samples, random_crop=random_crop)[0].numpy()


class Recorder:
  """Hooks, for one EVAR fit, that record what its random draws gave: the classifier's initial
  weights (its module's ``MLP``), every epoch's shuffle (torch's ``RandomSampler``), the tensors
  it trains, validates and tests on (``TensorDataset``: standardized features after its
  hold-out, one-hot or multi-hot targets), each epoch's valid score and the best epoch. Nothing in EVAR's files changes; the hooks are removed on exit."""

  def __init__(self, evar: Evar):
    self.evar = evar
    self.init, self.perms, self.tensors, self.valid_scores = None, [], [], []
    self.best_epoch = None

  def __enter__(self):
    torch, module, rec = self.evar.torch, self.evar.clf_module, self
    self._saved = (module.MLP, module._calc_metric, module._train_model,
                   torch.utils.data.RandomSampler.__iter__, torch.utils.data.TensorDataset.__init__)
    mlp, calc, train_model, sampler_iter, dataset_init = self._saved

    class MLP(mlp):
      def __init__(self, *a, **k):
        super().__init__(*a, **k)
        rec.init = {n: v.detach().clone().numpy() for n, v in self.state_dict().items()}

    def calc_metric(metrics, targets, preds, classes):
      out = calc(metrics, targets, preds, classes)
      if classes is None:  # the per-epoch valid score (the test score passes the classes)
        rec.valid_scores.append(float(out[0][metrics[0]]))
      return out

    def train(*a, **k):
      out = train_model(*a, **k)
      rec.best_epoch = int(out[1])
      return out

    def iterate(sampler):
      order = list(sampler_iter(sampler))
      rec.perms.append(np.asarray(order))
      return iter(order)

    def dataset(ds, *tensors):
      rec.tensors.append([t.numpy().copy() for t in tensors])
      dataset_init(ds, *tensors)

    module.MLP, module._calc_metric, module._train_model = MLP, calc_metric, train
    torch.utils.data.RandomSampler.__iter__ = iterate
    torch.utils.data.TensorDataset.__init__ = dataset
    return self

  def __exit__(self, *exc):
    torch, module = self.evar.torch, self.evar.clf_module
    (module.MLP, module._calc_metric, module._train_model,
     torch.utils.data.RandomSampler.__iter__, torch.utils.data.TensorDataset.__init__) = self._saved
    return False
