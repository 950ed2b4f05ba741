"""Name -> strategy registry and the one public entry point, :func:`sample`.

A strategy is a pure function ``fn(key, patches, *, grid, num_masked, hint, ratio, **options)``
that returns ``bool [B, N]`` with exactly ``num_masked`` True (masked) entries in every row.
``ratio`` is the requested float ratio (``num_masked`` is derived from it), for the strategies whose
reference computes other counts from the float (``inverse_block``); it defaults to ``None`` so a
direct call may omit it. A strategy is registered with the defaults of every option it accepts,
so unknown options fail before tracing.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable

import jax
import jax.numpy as jnp

from dwm_jax import patching

StrategyFn = Callable[..., jnp.ndarray]


@dataclasses.dataclass(frozen=True)
class Strategy:
  name: str
  fn: StrategyFn
  defaults: dict[str, Any]
  doc: str


_REGISTRY: dict[str, Strategy] = {}


def register(name: str, **defaults: Any) -> Callable[[StrategyFn], StrategyFn]:
  """Registers ``fn`` under ``name``; ``defaults`` lists every option it accepts."""

  def deco(fn: StrategyFn) -> StrategyFn:
    if name in _REGISTRY:
      raise ValueError(f"masking strategy {name!r} registered twice")
    _REGISTRY[name] = Strategy(name, fn, dict(defaults), (fn.__doc__ or "").strip())
    return fn

  return deco


def names() -> list[str]:
  """Registered strategy names, sorted."""
  return sorted(_REGISTRY)


def get(name: str) -> Strategy:
  if name not in _REGISTRY:
    raise ValueError(f"unknown masking strategy {name!r}; valid: {', '.join(names())}")
  return _REGISTRY[name]


def resolve_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
  """Defaults of ``name`` updated by ``options``; unknown option names raise a ValueError."""
  strategy = get(name)
  unknown = sorted(set(options) - set(strategy.defaults))
  if unknown:
    valid = ", ".join(sorted(strategy.defaults)) or "(none)"
    raise ValueError(f"unknown option(s) {', '.join(unknown)} for masking strategy {name!r}; "
                     f"valid: {valid}")
  return {**strategy.defaults, **options}


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def option_type(name: str, option: str) -> type:
  """The Python type of a strategy option: its default's, else its annotation's (``int | None``)."""
  strategy = get(name)
  resolve_options(name, {option: None})  # unknown options fail here, naming the valid ones
  default = strategy.defaults[option]
  if default is not None:
    return type(default)
  hint = typing.get_type_hints(strategy.fn).get(option)
  args = [a for a in typing.get_args(hint) if a is not type(None)] if isinstance(
      hint, (types.UnionType, typing._UnionGenericAlias)) else [hint]  # pylint: disable=protected-access
  if len(args) == 1 and args[0] in (bool, int, float, str):
    return args[0]
  raise ValueError(f"option {option!r} of masking strategy {name!r} takes an array; it cannot "
                   "be set from text")


def parse_option(name: str, option: str, text: str) -> Any:
  """``text`` (e.g. from the command line) as the value of ``option`` of strategy ``name``."""
  kind = option_type(name, option)
  value = text.strip()
  if value.lower() == "none":
    return None
  try:
    if kind is bool:
      if value.lower() not in _TRUE + _FALSE:
        raise ValueError(f"expected true or false, got {text!r}")
      return value.lower() in _TRUE
    return kind(value)
  except ValueError as e:
    raise ValueError(f"option {option!r} of masking strategy {name!r} must be {kind.__name__}: "
                     f"{e}") from e


def check_ratio(ratio: float) -> float:
  ratio = float(ratio)
  if not 0.0 < ratio < 1.0:
    raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
  return ratio


def sample(name: str, key: jax.Array, patches: jnp.ndarray, *, grid, ratio: float,
           hint: float | jnp.ndarray = 0.0, **options: Any) -> jnp.ndarray:
  """Samples a mask with strategy ``name``.

  Args:
    name: a registered strategy (see :func:`names`).
    key: a ``jax.random`` key; same key, same mask.
    patches: ``float [B, N, P]`` patch values (frequency-major order, see ``dwm_jax.patching``).
    grid: the ``(Fp, Tp)`` patch grid, ``Fp * Tp == N``. Static.
    ratio: fraction masked, in (0, 1). Static.
    hint: hint ratio (may be traced): 0 = the strategy as is, >= 1 = plain random masking.
    **options: strategy options (static), validated against the registered defaults.

  Returns:
    ``bool [B, N]``, True = masked, exactly ``K = N - int(N * (1 - ratio))`` per row.
  """
  opts = resolve_options(name, options)
  g = patching.as_grid(grid)
  ratio = check_ratio(ratio)
  if patches.ndim != 3:
    raise ValueError(f"patches must be [B, N, P], got shape {patches.shape}")
  if patches.shape[1] != g.num_patches:
    raise ValueError(f"patches has N={patches.shape[1]} but grid {tuple(g)} has "
                     f"{g.num_patches} patches")
  k = patching.num_masked(g.num_patches, ratio)
  if not 0 < k < g.num_patches:
    raise ValueError(f"ratio {ratio} on {g.num_patches} patches masks {k}; need 0 < K < N")
  return get(name).fn(key, patches, grid=g, num_masked=k, hint=hint, ratio=ratio, **opts)
