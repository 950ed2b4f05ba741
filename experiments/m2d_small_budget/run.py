"""M2D at the quickstart's budget: which recipe beats a random-init encoder and the MAE quickstart?

  python experiments/m2d_small_budget/run.py --variants authors,pred_enc --seeds 0,1,2
  python experiments/m2d_small_budget/run.py --list            # the variants and what they change
  python experiments/m2d_small_budget/run.py --variants authors --seeds 0 --layers   # + per block

Every variant is ``configs/quickstart.py`` (tiny ViT, 4 blocks, 80 x 208 input, synthetic audio,
batch 64, DWM after epoch 4) with the M2D objective and the variant's fields. Per pretraining seed
(``config.seed``: initialization, data order, crops, masks) the script pretrains each variant in
``OUT/runs/<variant>/seed<S>`` (a finished run of the same config is reused), pretrains the MAE
quickstart itself (``OUT/runs/mae_quickstart/seed<S>``), and linear-probes every encoder and a
random-init encoder of the same seed on the synthetic event / pitch / timbre tasks (clips drawn
with another seed than the pretraining clips; the quickstart's probe: 1500 clips per task, 3 probe
seeds). ``--layers`` also probes the output of every block of each encoder (M2D, MAE, random init),
the evidence of where a recipe loses or gains.

Outputs (rewritten after every run): ``OUT/results.csv`` (one row per variant, seed and model),
``OUT/results.md`` (per-seed table, then mean ± std over seeds of the average and of the paired
differences to the random-init encoder and to the MAE quickstart of the same seed).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

log = logging.getLogger("m2d_small_budget")
TASKS = ("synthetic_event", "synthetic_pitch", "synthetic_timbre")

# The M2D quickstart before the authors' defaults (README.md: "How the quickstart's recipe was chosen").
PREVIOUS = {"objective.name": "m2d", "objective.ema_schedule": "cosine",
            "objective.target_init": "copy", "objective.norm_pix_loss": False,
            "optim.clip_norm": 0.0, "optim.decay_groups": "kernels", "data.stats_crops": 0}
# The authors' training defaults (configs/m2d.py), at the quickstart's EMA 0.99 -> 0.999.
AUTHORS = {"objective.name": "m2d", "objective.ema_schedule": "linear",
           "objective.target_init": "independent", "objective.norm_pix_loss": True,
           "optim.clip_norm": 3.0, "optim.decay_groups": "timm", "data.stats_crops": 5000}
PRED_ENC = {"objective.predictor_depth": 4, "objective.predictor_dim": 192,
            "objective.predictor_heads": 3}  # the encoder's width, depth and heads

VARIANTS: dict[str, tuple[str, dict]] = {
    "previous": ("the previous M2D quickstart: cosine EMA 0.99 -> 0.999, target copied from the "
                 "online encoder, raw targets, no clipping, kernels-only decay, -7.1 / 4.2",
                 PREVIOUS),
    "authors": ("the authors' defaults (linear EMA ramp, independent target init, standardized "
                "targets, clip 3.0, timm decay groups, crop statistics), EMA 0.99 -> 0.999",
                AUTHORS),
    "pred_enc": ("authors + a predictor sized to the encoder (4 x 192, 3 heads)",
                 {**AUTHORS, **PRED_ENC}),
    "slow_ema": ("authors + EMA 0.999 -> 0.9999 (the target stays near its own random init)",
                 {**AUTHORS, "objective.ema_decay_start": 0.999,
                  "objective.ema_decay_end": 0.9999}),
    "fast_ema": ("authors + EMA 0.9 -> 0.99", {**AUTHORS, "objective.ema_decay_start": 0.9,
                                              "objective.ema_decay_end": 0.99}),
    "ratio_05": ("authors + mask ratio 0.5", {**AUTHORS, "mask.ratio": 0.5}),
    "lr_x2": ("authors + base lr 3e-3 (twice the quickstart's)", {**AUTHORS,
                                                                  "optim.base_lr": 3e-3}),
    "lr_half": ("authors + base lr 7.5e-4 (half)", {**AUTHORS, "optim.base_lr": 7.5e-4}),
    "frozen_indep": ("authors + EMA decay 1.0: the target stays its own random init (a fixed "
                     "random teacher)", {**AUTHORS, "objective.ema_decay_start": 1.0,
                                         "objective.ema_decay_end": 1.0}),
    "frozen_copy": ("authors + EMA decay 1.0 + target copied from the online init: the online "
                    "encoder predicts its own initial features of the masked patches",
                    {**AUTHORS, "objective.ema_decay_start": 1.0,
                     "objective.ema_decay_end": 1.0, "objective.target_init": "copy"}),
    "long": ("authors, 60 epochs = 480 steps (3x the steps, within 10 min)",
             {**AUTHORS, "epochs": 60, "mask.hint.start_epoch": 12.0}),
    "longer": ("authors, 100 epochs = 800 steps (5x; about 8 min on an idle 2-core CPU)",
               {**AUTHORS, "epochs": 100, "mask.hint.start_epoch": 20.0}),
    "longer_slow_ema": ("longer + EMA 0.999 -> 0.9999", {**AUTHORS, "epochs": 100,
                                                         "mask.hint.start_epoch": 20.0,
                                                         "objective.ema_decay_start": 0.999,
                                                         "objective.ema_decay_end": 0.9999}),
    "long_slow_ema": ("long + EMA 0.999 -> 0.9999", {**AUTHORS, "epochs": 60,
                                                     "mask.hint.start_epoch": 12.0,
                                                     "objective.ema_decay_start": 0.999,
                                                     "objective.ema_decay_end": 0.9999}),
}
MAE = "mae_quickstart"


def quickstart(tiny: bool = False):
  """``configs/quickstart.py`` as run here; ``tiny``: the test suite's size (seconds)."""
  from configs import quickstart as qs
  c = qs.get_config()
  c.probe.after_pretrain = False  # probed here, on one shared task suite
  c.mask_png_every_steps = 0
  if tiny:
    c.model.input_shape = (80, 64)
    c.model.width, c.model.depth, c.model.heads, c.model.mlp_dim = 32, 2, 2, 64
    c.objective.predictor_depth, c.objective.predictor_dim, c.objective.predictor_heads = 1, 32, 2
    c.data.synthetic.num_clips, c.data.synthetic.seconds = 16, 0.64
    c.batch_size, c.total_steps, c.epochs = 8, 3, 1
    c.mask.hint.start_epoch = 0.0
    c.checkpoint.every_steps, c.log_every_steps = 3, 1
  return c


def set_fields(c, fields: dict) -> None:
  for dotted, value in fields.items():
    node = c
    *path, last = dotted.split(".")
    for p in path:
      node = node[p]
    if last not in node:
      raise ValueError(f"variant field {dotted}: no such config field")
    node[last] = value


def variant_config(name: str, seed: int, steps: int = 0, tiny: bool = False):
  c = quickstart(tiny)
  if name != MAE:
    set_fields(c, VARIANTS[name][1])
  c.seed = seed
  if steps:
    c.total_steps = steps
  return c


def pretrain(config, workdir: str) -> dict:
  """Runs (or reuses a finished run of the same config in ``workdir``); its record."""
  from dwm_jax import main as main_lib
  record_path = os.path.join(workdir, "budget_run.json")
  key = config.to_json_best_effort(sort_keys=True)
  if os.path.isfile(record_path):
    with open(record_path) as f:
      record = json.load(f)
    if record.get("config") == key:
      log.info("reusing the finished run in %s", workdir)
      return record
  if os.path.isdir(workdir):
    shutil.rmtree(workdir)
  t = time.perf_counter()
  summary = main_lib.train_and_evaluate(config, workdir)
  metrics = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  record = {"pretrain_seconds": time.perf_counter() - t, "steps": int(summary["step"]),
            "train_seconds": float(summary["train_seconds"]),
            "sec_per_step": (config.batch_size / summary["clips_per_sec"]
                             if summary.get("clips_per_sec") else None),
            "final_loss": summary.get("final_loss"),
            "curve": [{k: m.get(k) for k in ("step", "loss", "aux/target_std", "grad_norm")}
                      for m in metrics],
            "config": key}
  with open(record_path, "w") as f:
    json.dump(record, f, indent=2)
  return record


def truncated(encoder, blocks: int):
  """The encoder's first ``blocks`` blocks and its final norm (a per-block probe)."""
  from dwm_jax.evaluate.encoder import Encoder
  cfg = encoder.model_cfg.as_configdict()
  cfg.depth = blocks
  params = {k: v for k, v in encoder.params.items()
            if not k.startswith("block_") or int(k.split("_")[1]) < blocks}
  return Encoder(cfg, params, encoder.norm_mean, encoder.norm_std, encoder.pos_embed)


def _erank(x: np.ndarray) -> float:
  """Effective rank (exp of the entropy of the normalized singular values^2) of ``x: [n, D]``."""
  x = x - x.mean(0)
  sv = np.linalg.svd(x, compute_uv=False) ** 2
  p = sv / sv.sum()
  return float(np.exp(-np.sum(p * np.log(p + 1e-12))))


def _cos_to_position_mean(x: np.ndarray) -> float:
  """Mean cosine of each token ``x: [B, N, D]`` to the mean token at its position over the batch:
  how much of a token position alone explains."""
  m = np.broadcast_to(x.mean(0, keepdims=True), x.shape)
  num = np.sum(x * m, -1)
  return float(np.mean(num / (np.linalg.norm(x, axis=-1) * np.linalg.norm(m, axis=-1) + 1e-12)))


def diagnostics(config, workdir: str, others: dict) -> dict:
  """Why an M2D run probes as it does, from its final state, on 256 training crops.

  ``drift_*``: relative L2 distance of the encoder blocks (online) and of the EMA target from
  their initial values (the run's init, re-created from its seed as the loop does); ``pos_*``:
  mean cosine of a token to the per-position mean token (target over all patches, online
  output); ``erank``: effective rank of the clip embeddings (mean over tokens) of the online
  encoder; ``others``: ``{label: Encoder}`` whose clip-embedding rank is reported alongside.
  """
  import jax
  import jax.numpy as jnp
  from dwm_jax import patching
  from dwm_jax.data import pipeline
  from dwm_jax.models import encoder_from_config
  from dwm_jax.train import checkpoint as ckpt, setup as setup_lib, state as state_lib

  setup = setup_lib.build(config, pipeline.dataset_size(config.data))
  manager = ckpt.make_manager(workdir, read_only=True)
  try:
    template = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype),
                            state_lib.abstract_train_state(setup))
    final, _ = ckpt.restore(manager, manager.latest_step(), state_template=template,
                            data_iter=None)
    config = ckpt.saved_config(manager, manager.latest_step())  # with its normalization
  finally:
    manager.close()
  k_init, _ = jax.random.split(jax.random.key(int(config.seed)))  # the loop's init key
  init = jax.jit(lambda k: state_lib.create_train_state(setup, k))(k_init)
  obj = setup.objective

  def rel(a, b):
    num = sum(float(np.sum((np.asarray(x) - np.asarray(y)) ** 2))
              for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    den = sum(float(np.sum(np.asarray(y) ** 2)) for y in jax.tree.leaves(b))
    return float(np.sqrt(num / den))

  loader = pipeline.make_pretrain_loader(config.data, input_shape=setup.input_shape,
                                         global_batch_size=256, seed=12345)
  patches = patching.patchify(jnp.asarray(next(iter(loader))["logmel"]), setup.patch_size)

  @jax.jit
  def features(params, target_params):
    online = params["encoder"]
    tokens = obj.encoder.apply({"params": online}, patches, method="embed")
    tree = {**target_params, **{k: online[k] for k in ("patch_embed", "cls_token")}}
    target = obj.encoder.apply({"params": tree}, tokens, method="encode_tokens")[:, 1:]
    return target, obj.encoder.apply({"params": online}, patches)[:, 1:]

  target, online = (np.asarray(a) for a in features(final.params, final.target_params))
  out = {"drift_online": rel(obj.target_params_of(final.params),
                             obj.target_params_of(init.params)),
         "drift_target": rel(final.target_params, init.target_params),
         "target_vs_online": rel(final.target_params, obj.target_params_of(final.params)),
         "pos_target": _cos_to_position_mean(target), "pos_online": _cos_to_position_mean(online),
         "erank": _erank(online.mean(1))}
  for label, enc in others.items():
    tokens = encoder_from_config(enc.model_cfg).apply({"params": enc.params}, patches)[:, 1:]
    out[f"erank_{label}"] = _erank(np.asarray(tokens).mean(1))
  return out


def summarize(rows: list[dict], seeds: list[int]) -> list[dict]:
  """Per variant: mean ± std over seeds of the average and of the paired differences."""
  by = {}
  for r in rows:
    by.setdefault((r["variant"], r["seed"]), {})[r["model"]] = r["average"]
  out = []
  for variant in dict.fromkeys(r["variant"] for r in rows if r["model"] == "pretrained"):
    done = [s for s in seeds if {"pretrained", "random_init"} <= set(by.get((variant, s), {}))]
    if not done:
      continue
    avg = np.array([by[(variant, s)]["pretrained"] for s in done])
    d_rnd = avg - np.array([by[(variant, s)]["random_init"] for s in done])
    d_mae = np.array([by[(variant, s)]["pretrained"] - by[(MAE, s)]["pretrained"]
                      for s in done if "pretrained" in by.get((MAE, s), {})])
    out.append({"variant": variant, "seeds": len(done), "average": avg, "vs_random": d_rnd,
                "vs_mae": d_mae})
  return out


def pm(x: np.ndarray, signed: bool = False) -> str:
  if len(x) == 0:
    return ""
  fmt = "{:+.1f}" if signed else "{:.1f}"
  s = fmt.format(100 * x.mean())
  return s + (f" ± {100 * x.std(ddof=1):.1f}" if len(x) > 1 else "")


def write_outputs(out: str, rows: list[dict], seeds: list[int], meta: dict,
                  diag: list[dict] | None = None) -> None:
  fields = ["variant", "seed", "model", "layer"] + list(TASKS) + [
      "average", "steps", "train_seconds", "sec_per_step", "final_loss"]
  with open(os.path.join(out, "results.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in rows:
      w.writerow({k: r.get(k, "") for k in fields})
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"meta": meta, "rows": rows, "diagnostics": diag or []}, f, indent=2)

  def cell(v, fmt):
    return "" if v in ("", None) else fmt.format(v)

  finals = [r for r in rows if r.get("layer") in (None, "")]
  base = {(r["variant"], r["seed"], r["model"]): r for r in finals}
  lines = [f"Setup: {meta['setup']}", "",
           "| variant | seed | event | pitch | timbre | average | random init | vs random | "
           "vs MAE | steps | train s | s/step | final loss |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in finals:
    if r["model"] != "pretrained":
      continue
    rnd = base.get((r["variant"], r["seed"], "random_init"))
    mae = base.get((MAE, r["seed"], "pretrained"))
    vs_r = f"{100 * (r['average'] - rnd['average']):+.1f}" if rnd else ""
    vs_m = (f"{100 * (r['average'] - mae['average']):+.1f}"
            if mae and r["variant"] != MAE else "")
    lines.append(
        f"| {r['variant']} | {r['seed']} | "
        + " | ".join(f"{100 * r[t]:.1f}" for t in TASKS)
        + f" | **{100 * r['average']:.1f}** | {cell(rnd and rnd['average'] * 100, '{:.1f}')} | "
        f"{vs_r} | {vs_m} | {r.get('steps', '')} | {cell(r.get('train_seconds'), '{:.0f}')} | "
        f"{cell(r.get('sec_per_step'), '{:.3f}')} | {cell(r.get('final_loss'), '{:.4f}')} |")
  lines += ["", "Over pretraining seeds (mean ± std; differences paired by seed):", "",
            "| variant | seeds | average | vs random init | vs MAE quickstart | beats both |",
            "|---|---:|---:|---:|---:|---:|"]
  for s in summarize(finals, seeds):
    both = ""
    if s["variant"] != MAE and len(s["vs_mae"]) == len(s["vs_random"]):
      both = f"{int(np.sum((s['vs_random'] > 0) & (s['vs_mae'] > 0)))}/{s['seeds']}"
    lines.append(f"| {s['variant']} | {s['seeds']} | {pm(s['average'])} | "
                 f"{pm(s['vs_random'], True)} | "
                 f"{pm(s['vs_mae'], True) if s['variant'] != MAE else ''} | {both} |")
  layered = [r for r in rows if r.get("layer") not in (None, "")]
  if layered:
    lines += ["", "Per block (probe of the output after block L, through the final norm; "
              "average of the three tasks):", "",
              "| variant | seed | model | " + " | ".join(
                  f"block {i}" for i in sorted({r['layer'] for r in layered})) + " |",
              "|---|---:|---|" + "---:|" * len({r["layer"] for r in layered})]
    groups = {}
    for r in layered:
      groups.setdefault((r["variant"], r["seed"], r["model"]), {})[r["layer"]] = r["average"]
    for (v, s, m), by_layer in groups.items():
      lines.append(f"| {v} | {s} | {m} | " + " | ".join(
          f"{100 * by_layer[k]:.1f}" for k in sorted(by_layer)) + " |")
  if diag:
    extra = sorted({k for d in diag for k in d if k.startswith("erank_")})
    lines += ["", "Diagnostics of the final M2D state (256 training crops): relative drift from "
              "the initial values of the online blocks and of the target; relative distance "
              "target-online; mean cosine of a token to the per-position mean token (target, "
              "online); effective rank of the clip embeddings:", "",
              "| variant | seed | drift online | drift target | target vs online | pos. cos "
              "target | pos. cos online | rank | " + " | ".join(
                  "rank " + k[len("erank_"):] for k in extra) + " |",
              "|---|---:|" + "---:|" * (6 + len(extra))]
    for d in diag:
      lines.append(f"| {d['variant']} | {d['seed']} | {d['drift_online']:.3f} | "
                   f"{d['drift_target']:.3f} | {d['target_vs_online']:.3f} | "
                   f"{d['pos_target']:.2f} | {d['pos_online']:.2f} | {d['erank']:.2f} | "
                   + " | ".join(f"{d[k]:.2f}" for k in extra) + " |")
  curves = [r for r in finals if r.get("curve") and r["model"] == "pretrained"]
  if curves:
    marks = sorted({c["step"] for r in curves for c in r["curve"]})
    marks = [m for i, m in enumerate(marks) if i % max(1, len(marks) // 8) == 0 or m == marks[-1]]
    lines += ["", "Training loss at logged steps (M2D: 2 - 2 cos; MAE: MSE) / target std "
              "(the spread of the raw target over the masked tokens):", "",
              "| variant | seed | " + " | ".join(f"step {m}" for m in marks) + " |",
              "|---|---:|" + "---:|" * len(marks)]
    for r in curves:
      at = {c["step"]: c for c in r["curve"]}
      cells = []
      for m in marks:
        c = at.get(m)
        std = c and c.get("aux/target_std")
        cells.append("" if c is None else f"{c['loss']:.3f}" + (f" / {std:.2f}" if std else ""))
      lines.append(f"| {r['variant']} | {r['seed']} | " + " | ".join(cells) + " |")
  table = "\n".join(lines) + "\n"
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(table)
  print(table)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default=os.path.join(ROOT, "experiments", "m2d_small_budget",
                                               "results"))
  p.add_argument("--variants", default="authors", help=f"comma-separated: {', '.join(VARIANTS)}")
  p.add_argument("--seeds", default="0", help="comma-separated pretraining seeds")
  p.add_argument("--steps", type=int, default=0, help="override the pretraining steps (tests)")
  p.add_argument("--probe-clips", type=int, default=0, help="clips per synthetic task "
                 "(default: the quickstart's 1500)")
  p.add_argument("--probe-seeds", type=int, default=0, help="default: the quickstart's 3")
  p.add_argument("--no-mae", action="store_true", help="skip the MAE quickstart baseline")
  p.add_argument("--layers", action="store_true", help="also probe after every block")
  p.add_argument("--diagnose", action="store_true", help="also measure drift, position share "
                 "and embedding rank of every M2D run (see diagnostics())")
  p.add_argument("--list", action="store_true", help="print the variants and exit")
  p.add_argument("--tiny", action="store_true", help="test-suite size: a 1-block model, 3 steps")
  args = p.parse_args(argv)
  if args.list:
    for name, (desc, fields) in VARIANTS.items():
      print(f"{name}: {desc}\n    {fields}")
    return 0
  from dwm_jax import console
  console.setup_logging("info")
  logging.getLogger("dwm_jax.train").setLevel(logging.WARNING)  # one line per run, not per step
  variants = [v.strip() for v in args.variants.split(",") if v.strip()]
  unknown = sorted(set(variants) - set(VARIANTS))
  if unknown or not variants:
    p.error(f"unknown variants {unknown}; valid: {', '.join(VARIANTS)}")
  try:
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  except ValueError:
    p.error(f"--seeds {args.seeds!r}: expected comma-separated integers")
  if not seeds:
    p.error("--seeds: give at least one seed")

  from dwm_jax import validate
  from dwm_jax.data.labeled import synthetic_tasks
  from dwm_jax.evaluate.encoder import load_encoder, random_encoder
  from dwm_jax.evaluate.probe import evaluate_tasks
  from dwm_jax.evaluate.run import average

  base = quickstart(args.tiny)
  for v in variants:
    validate.validate(variant_config(v, seeds[0], args.steps, args.tiny))  # before any work
  probe_clips = args.probe_clips or (30 if args.tiny else int(base.probe.synthetic_clips))
  probe_seeds = args.probe_seeds or (1 if args.tiny else int(base.probe.seeds))
  tasks = synthetic_tasks(probe_clips, seed=int(base.data.synthetic.seed) + 1,
                          seconds=float(base.data.synthetic.seconds))
  os.makedirs(args.out, exist_ok=True)
  cache = os.path.join(args.out, "probe_cache")
  t0 = time.perf_counter()
  rows: list[dict] = []
  diag: list[dict] = []

  def meta() -> dict:
    m = base.model
    return {"setup": (f"configs/quickstart.py: ViT tiny (width {m.width or 192}, depth {m.depth})"
                      f" on {tuple(m.input_shape)} log-mel, batch {base.batch_size}, "
                      f"{base.data.synthetic.num_clips} synthetic clips, DWM from epoch "
                      f"{base.mask.hint.start_epoch}; probe: {probe_clips} clips per task, "
                      f"{probe_seeds} probe seeds; pretraining seeds {seeds}; total "
                      f"{time.perf_counter() - t0:.0f} s"),
            "variants": {v: VARIANTS[v][0] for v in variants},
            "argv": list(argv if argv is not None else sys.argv[1:])}

  def add(variant, seed, model, res, layer=None, **extra):
    r = {"variant": variant, "seed": seed, "model": model, "layer": layer,
         "average": average(res), **{t: res[t]["mean"] for t in TASKS}, **extra}
    rows.append(r)
    write_outputs(args.out, rows, seeds, meta(), diag)
    return r

  def probe(encoder):
    return evaluate_tasks(encoder, tasks, seeds=probe_seeds, cache_dir=cache)

  for seed in seeds:
    rnd = random_encoder(base.model, seed=seed, norm_mean=float(base.data.norm_mean),
                         norm_std=float(base.data.norm_std))
    rnd_res = probe(rnd)
    if not args.no_mae:
      cfg = variant_config(MAE, seed, args.steps, args.tiny)
      rec = pretrain(cfg, os.path.join(args.out, "runs", MAE, f"seed{seed}"))
      mae = load_encoder(os.path.join(args.out, "runs", MAE, f"seed{seed}"))
      add(MAE, seed, "random_init", rnd_res)
      add(MAE, seed, "pretrained", probe(mae), **{k: rec[k] for k in (
          "steps", "train_seconds", "sec_per_step", "final_loss", "curve")})
      if args.layers:
        for layer in range(1, int(base.model.depth) + 1):
          add(MAE, seed, "pretrained", probe(truncated(mae, layer)), layer=layer)
    if args.layers:
      for layer in range(1, int(base.model.depth) + 1):
        add("-", seed, "random_init", probe(truncated(rnd, layer)), layer=layer)
    for v in variants:
      cfg = variant_config(v, seed, args.steps, args.tiny)
      workdir = os.path.join(args.out, "runs", v, f"seed{seed}")
      log.info("== %s, seed %d: pretraining in %s", v, seed, workdir)
      rec = pretrain(cfg, workdir)
      encoder = load_encoder(workdir)
      add(v, seed, "random_init", rnd_res)
      r = add(v, seed, "pretrained", probe(encoder), **{k: rec[k] for k in (
          "steps", "train_seconds", "sec_per_step", "final_loss", "curve")})
      log.info("%s seed %d: average %.1f%% (random init %.1f%%), %.0f s training", v, seed,
               100 * r["average"], 100 * average(rnd_res), rec["train_seconds"])
      if args.layers:
        for layer in range(1, int(cfg.model.depth) + 1):
          add(v, seed, "pretrained", probe(truncated(encoder, layer)), layer=layer)
      if args.diagnose:
        others = {"random_init": rnd, **({"mae": mae} if not args.no_mae else {})}
        diag.append({"variant": v, "seed": seed, **diagnostics(cfg, workdir, others)})
        write_outputs(args.out, rows, seeds, meta(), diag)
  print(f"wrote {args.out}/results.csv, results.md, results.json "
        f"({time.perf_counter() - t0:.0f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
