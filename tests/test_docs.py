"""README.md, docs/*.md and the Markdown files they link name only what exists.

- every relative link resolves, and so does its ``#anchor`` (GitHub's heading slugs);
- every repository path named in code (``tests/...py::test_name``, ``dwm_jax/...``,
  ``experiments/...``) exists, and every ``dwm_jax.module.attribute`` (and every name the Python
  examples import from ``dwm_jax`` or ``configs``) imports;
- every flag of a command (``dwm-jax CMD``, ``python -m dwm_jax...``, ``python experiments/x.py``)
  exists for that command, a flag with choices gets one of them, a ``--config.FIELD`` override
  names a field of the config it applies to (``mask.options.NAME`` typed by the strategy), and
  ``configs/x.py:ARG`` arguments are accepted; a flag named alone must belong to some command.

The parsers are the commands' own, captured in-process from their ``main`` (argparse and absl),
so the test takes seconds and follows every change of a command line.
"""
from __future__ import annotations

import argparse
import functools
import glob
import importlib
import importlib.util
import re
import shlex
import sys
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest
from absl import flags

from dwm_jax import cli, masking
from dwm_jax import config as config_lib
from dwm_jax.evaluate.finetuning import config as finetune_config

ROOT = Path(__file__).resolve().parents[1]
ENTRY_DOCS = ("README.md", "docs/*.md")
FENCE = re.compile(r"^\s*(```|~~~)\s*([\w+-]*)")
SHELL_BLOCKS = ("", "bash", "sh", "shell", "console", "text")
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
COLAB = re.compile(r"^https://colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/blob/main/(.+)$")
INLINE = re.compile(r"(`+)(.+?)\1")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
REPO_PATH = re.compile(r"(?<![\w./$-])((?:dwm_jax|tests|experiments|configs|colab|docs)/"
                       r"[\w./*<>{}-]*(?:::\w+)?)")
DOTTED = re.compile(r"(?<![\w./])(dwm_jax(?:\.\w+)+)")
FROM_IMPORT = re.compile(r"^from ((?:dwm_jax|configs)[\w.]*) import ([\w ,]+)$", re.M)
CONFIG_ARG = re.compile(r"(?<![\w./])configs/(\w+)\.py(?::([\w=,.-]+))?")
SEPARATORS = ("&&", "||", ";", "|")
# Flags of other programs that the docs name in prose: (flag, whose).
FOREIGN_FLAGS = {
    "--requeue": "SLURM's sbatch / scontrol",
    "--clip_grad": "the M2D authors' train_audio.py",
}


class Command(NamedTuple):
  doc: str        # where it is written (file:line)
  kind: str       # dwm-jax | module | script | bare (a flag named alone)
  name: str       # the subcommand, module or script
  tokens: list    # what follows the command name


# --- Markdown ----------------------------------------------------------------------------------

def doc_files() -> list[Path]:
  """The entry documents and, transitively, every Markdown file of the repository they link."""
  todo = [Path(p) for pattern in ENTRY_DOCS for p in sorted(glob.glob(str(ROOT / pattern)))]
  seen: list[Path] = []
  while todo:
    path = todo.pop(0).resolve()
    if path in seen:
      continue
    seen.append(path)
    for _, target in links(path):
      file = (path.parent / target.split("#")[0]).resolve()
      if file.suffix == ".md" and file.is_file() and ROOT in file.parents:
        todo.append(file)
  return seen


@functools.lru_cache(maxsize=None)
def parse(path: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str, str]]]:
  """``(prose lines, code blocks)``: ``[(line, text)]`` outside fences, ``[(line, lang, text)]``."""
  prose, blocks, block, lang, start = [], [], None, "", 0
  for i, line in enumerate(path.read_text().splitlines(), 1):
    fence = FENCE.match(line)
    if block is None and fence:
      block, lang, start = [], fence.group(2).lower(), i
    elif block is not None and fence and not fence.group(2):
      blocks.append((start, lang, "\n".join(block)))
      block = None
    elif block is not None:
      block.append(line)
    else:
      prose.append((i, line))
  assert block is None, f"{path}: unclosed code fence from line {start}"
  return prose, blocks


def links(path: Path) -> Iterator[tuple[int, str]]:
  for i, line in parse(path)[0]:
    for m in LINK.finditer(INLINE.sub(" ", line)):
      yield i, m.group(1)


def inline_code(path: Path) -> Iterator[tuple[int, str]]:
  for i, line in parse(path)[0]:
    for m in INLINE.finditer(line):
      yield i, m.group(2)


def slug(heading: str) -> str:
  """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
  text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
  return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


@functools.lru_cache(maxsize=None)
def anchors(path: Path) -> set[str]:
  out, counts = set(), {}
  for _, line in parse(path)[0]:
    m = HEADING.match(line)
    if m:
      s = slug(m.group(2))
      out.add(s if s not in counts else f"{s}-{counts[s]}")
      counts[s] = counts.get(s, 0) + 1
  return out


def where(path: Path, line: int) -> str:
  return f"{path.relative_to(ROOT)}:{line}"


# --- commands ----------------------------------------------------------------------------------

def shell_texts(path: Path) -> Iterator[tuple[int, str]]:
  """Every shell line (continuations joined, comments and prompts dropped) and inline code."""
  for start, lang, text in parse(path)[1]:
    if lang not in SHELL_BLOCKS:
      continue
    pending, first = "", start
    for i, line in enumerate(text.splitlines(), start + 1):
      line = re.sub(r"(^|\s)#.*$", "", line) if lang != "text" else line
      if not pending:
        first = i
      pending += " " + line.rstrip()
      if pending.endswith("\\"):
        pending = pending[:-1]
        continue
      yield first, re.sub(r"^\s*\S+\$\s+", "", pending.strip())
      pending = ""
  yield from inline_code(path)


def commands(path: Path) -> Iterator[Command]:
  for line, text in shell_texts(path):
    found = list(split_commands(where(path, line), text))
    yield from found
    if not found and re.match(r"^--[\w.-]+", text):  # a flag named alone: `--frames`
      yield Command(where(path, line), "bare", "", text.split())


def split_commands(doc: str, text: str) -> Iterator[Command]:
  """The commands of one shell line: split at ``&&``, ``;``, ``|``; quoted ones too (``gcloud
  ... --command "cd dwm-jax && dwm-jax pretrain ..."``)."""
  try:
    tokens = shlex.split(text)
  except ValueError:  # prose in a text block (an apostrophe), not a command line
    tokens = text.split()
  for token in tokens:
    if " " in token:
      yield from split_commands(doc, token)
  segment: list = []
  for token in tokens + [";"]:
    if token not in SEPARATORS:
      segment.append(token)
      continue
    for i in range(len(segment)):
      start = command_start(segment[i:])
      if start:
        kind, name, skip = start
        yield Command(doc, kind, name, segment[i + skip:])
        break
    segment = []


def command_start(tokens: list) -> tuple[str, str, int] | None:
  """``(kind, name, tokens taken)`` when ``tokens`` start a command of this project or Python's."""
  nxt = tokens[1:3] + ["", ""]
  if tokens[0] == "dwm-jax" and re.fullmatch(r"[a-z][a-z-]*", nxt[0]):
    return "dwm-jax", nxt[0], 2
  if tokens[0] not in ("python", "python3"):
    return None
  if nxt[0] == "-m" and nxt[1] == "dwm_jax.cli" and len(tokens) > 3:
    return "dwm-jax", tokens[3], 4
  if nxt[0] == "-m" and nxt[1]:
    return "module", nxt[1], 3
  if nxt[0].endswith(".py"):
    return "script", nxt[0], 2
  return None


def flag_tokens(tokens: list) -> Iterator[tuple[str, str | None]]:
  """``(--name, value)`` of every flag; the value is the ``=`` part or the next plain token."""
  for i, token in enumerate(tokens):
    token = token.strip("[](),'`")
    if not token.startswith("--") or token == "--":
      continue
    name, eq, value = token.partition("=")
    nxt = tokens[i + 1].strip("[](),'`") if i + 1 < len(tokens) else None
    yield name, value if eq else (nxt if nxt and not nxt.startswith("-") else None)


class _Captured(Exception):
  def __init__(self, parser):
    super().__init__()
    self.parser = parser


def capture(main) -> dict:
  """``{--flag: choices or None}`` of the argparse parser or absl FlagValues that ``main([])``
  builds, captured when it parses (so nothing runs)."""
  def grab(self, *_, **__):
    raise _Captured(self)
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(argparse.ArgumentParser, "parse_args", grab)
    mp.setattr(argparse.ArgumentParser, "parse_known_args", grab)
    mp.setattr(flags.FlagValues, "__call__", grab)
    try:
      main([])
    except _Captured as c:
      parser = c.parser
    else:
      raise AssertionError(f"{main.__module__}.{main.__name__} parsed no command line")
  options = {}
  if isinstance(parser, flags.FlagValues):
    for name, flag in parser._flags().items():  # pylint: disable=protected-access
      options[f"--{name}"] = getattr(flag.parser, "enum_values", None)
      if flag.boolean:
        options[f"--no{name}"] = None
    return options
  for action in parser._actions:  # pylint: disable=protected-access
    options.update({o: action.choices for o in action.option_strings})
  return options


@functools.lru_cache(maxsize=None)
def parser_of(kind: str, name: str) -> dict | None:
  """The flags of a command (see :func:`capture`); None for programs that are not this
  project's."""
  if kind == "dwm-jax":
    assert name in cli.COMMANDS, f"no command dwm-jax {name} (commands: {', '.join(cli.COMMANDS)})"
    module, _, function = cli.COMMANDS[name][0].partition(":")
    return capture(getattr(importlib.import_module(module), function or "main"))
  if kind == "module":
    if not name.startswith("dwm_jax"):
      return None
    return capture(importlib.import_module(name).main)
  path = ROOT / name
  assert path.is_file(), f"no script {name}"
  sys.path.insert(0, str(path.parent))  # scripts import their neighbours (input_pipeline's bucket)
  try:
    spec = importlib.util.spec_from_file_location(f"docs_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  finally:
    sys.path.remove(str(path.parent))
  return capture(module.main)


def config_of(command: Command):
  """The config a command's ``--config.FIELD`` overrides apply to, or None."""
  if command.kind != "dwm-jax" or command.name not in ("pretrain", "finetune"):
    return None
  given = dict(flag_tokens(command.tokens)).get("--config")
  m = CONFIG_ARG.search(given or "")
  if m:
    return load_config(m.group(1), m.group(2))
  return config_lib.base_config() if command.name == "pretrain" else finetune_config.base_config()


def placeholder(text: str) -> bool:
  """Whether ``text`` spells a syntax, not a value: ``--config.FIELD``, ``mask=NAME``."""
  return re.search(r"(?:^|[.=,:])[A-Z][A-Z_]*(?:$|[.=,])", text) is not None


def load_config(name: str, arg: str | None):
  return importlib.import_module(f"configs.{name}").get_config(arg)


def has_field(config, field: str) -> bool:
  node = config
  for key in field.split("."):
    if not hasattr(node, "keys") or key not in node.keys():
      return False
    node = node[key]
  return True


def check_config_flag(config, field: str, value: str | None, strategies: list) -> str | None:
  """Why ``--config.FIELD=value`` is wrong for ``config`` (None: it is right). A strategy option
  must be one of a strategy in ``strategies`` (the command's own, or any for a flag named alone)
  and its value must parse as that option's type."""
  if not field.startswith("mask.options."):
    return None if has_field(config, field) else f"no config field {field}"
  if not has_field(config, "mask"):
    return f"no config field {field}"
  option, errors = field[len("mask.options."):], []
  for name in strategies or [config.mask.name]:
    try:
      if value is None:
        masking.resolve_options(name, {option: None})
      else:
        masking.parse_option(name, option, value)
      return None
    except ValueError as e:
      errors.append(str(e))
  return errors[0]


def known_flags() -> set[str]:
  """Every flag of every dwm-jax command and script the docs run."""
  out = set()
  for name in cli.COMMANDS:
    out |= set(parser_of("dwm-jax", name))
  for path in doc_files():
    for command in commands(path):
      if command.kind in ("module", "script"):
        parser = parser_of(command.kind, command.name)
        out |= set(parser or ())
  return out


# --- tests -------------------------------------------------------------------------------------

def test_the_front_page_and_the_index_link_every_guide():
  linked = {(path.parent / target.split("#")[0]).resolve()
            for path in (ROOT / "README.md", ROOT / "docs" / "README.md")
            for _, target in links(path)}
  guides = {p.resolve() for p in (ROOT / "docs").glob("*.md")}
  assert guides <= linked, f"guides linked from neither README: {sorted(guides - linked)}"
  assert (ROOT / "docs" / "README.md").resolve() in linked


def test_every_relative_link_and_anchor_resolves():
  bad = []
  for path in doc_files():
    for line, target in links(path):
      colab = COLAB.match(target)
      if colab:
        target = "/" + colab.group(1)  # the notebook a badge opens, in this repository
      elif re.match(r"^[a-z][a-z0-9+.-]*:", target):
        continue  # http(s), mailto: not checked offline
      file, _, anchor = target.partition("#")
      resolved = (ROOT / file.lstrip("/")) if file.startswith("/") else (
          path.parent / file if file else path)
      if not resolved.exists():
        bad.append(f"{where(path, line)}: {target}: no such file")
      elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.resolve()):
        bad.append(f"{where(path, line)}: {target}: no heading #{anchor} in {file or path.name}")
  assert not bad, "dead links:\n" + "\n".join(bad)


def test_every_repository_path_and_module_named_exists():
  bad = []
  for path in doc_files():
    for line, text in shell_texts(path):
      for m in REPO_PATH.finditer(text):
        name, _, test = m.group(1).rstrip(".,:").partition("::")
        if re.search(r"[<>{}]", name) or not name.rstrip("/"):
          continue
        hits = glob.glob(str(ROOT / name))
        if not hits:
          bad.append(f"{where(path, line)}: {name}: no such file or folder")
        elif test and not re.search(rf"^def {test}\(", Path(hits[0]).read_text(), re.M):
          bad.append(f"{where(path, line)}: {name}::{test}: no such test")
      for m in DOTTED.finditer(text):
        if not importable(m.group(1)):
          bad.append(f"{where(path, line)}: {m.group(1)}: does not import")
    for line, lang, text in parse(path)[1]:
      for m in (FROM_IMPORT.finditer(text) if lang == "python" else ()):
        for name in re.split(r"\s*,\s*", m.group(2).strip()):
          if not importable(f"{m.group(1)}.{name.split(' as ')[0]}"):
            bad.append(f"{where(path, line)}: from {m.group(1)} import {name}: does not import")
  assert not bad, "stale names:\n" + "\n".join(sorted(set(bad)))


@functools.lru_cache(maxsize=None)
def importable(dotted: str) -> bool:
  parts = dotted.split(".")
  for cut in range(len(parts), 0, -1):
    module = ".".join(parts[:cut])
    try:
      found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
      found = False
    if found:
      obj = importlib.import_module(module)
      for attr in parts[cut:]:
        if not hasattr(obj, attr):
          return False
        obj = getattr(obj, attr)
      return True
  return False


def test_every_config_argument_is_accepted():
  bad = []
  for path in doc_files():
    for line, text in shell_texts(path):
      for m in CONFIG_ARG.finditer(text):
        if placeholder(m.group(2) or ""):
          continue  # the syntax itself: configs/m2d.py:KEY=VALUE
        if not (ROOT / "configs" / f"{m.group(1)}.py").is_file():
          bad.append(f"{where(path, line)}: configs/{m.group(1)}.py: no such config")
          continue
        try:
          load_config(m.group(1), m.group(2))
        except ValueError as e:
          bad.append(f"{where(path, line)}: {m.group(0)}: {e}")
  assert not bad, "\n".join(bad)


def test_every_flag_exists_for_its_command():
  bad, known = [], known_flags()
  for path in doc_files():
    for command in commands(path):
      parser = parser_of(command.kind, command.name) if command.kind != "bare" else None
      if command.kind != "bare" and parser is None:
        continue  # another program (pytest, pip, hearvalidator): not ours to check
      config = config_of(command)
      tokens = dict(flag_tokens(command.tokens))
      mask_name = tokens.get("--config.mask.name")
      strategies = [mask_name] if mask_name else ([] if config is not None else masking.names())
      for name, value in flag_tokens(command.tokens):
        if name.startswith("--config."):
          configs = [config] if config is not None else [config_lib.base_config(),
                                                         finetune_config.base_config()]
          problems = [check_config_flag(c, name[len("--config."):], value, strategies)
                      for c in configs]
          if all(problems) and not placeholder(name):
            bad.append(f"{command.doc}: {name}: {problems[0]}")
          continue
        if command.kind == "bare":
          if name not in known and name not in FOREIGN_FLAGS:
            bad.append(f"{command.doc}: {name}: no command has this flag")
          continue
        if name not in parser:
          bad.append(f"{command.doc}: {command.kind} {command.name} has no flag {name}")
          continue
        choices = parser[name]
        if choices and value is not None and value.isidentifier() and value not in choices:
          bad.append(f"{command.doc}: {name} {value}: not one of {', '.join(map(str, choices))}")
  assert not bad, "stale flags:\n" + "\n".join(bad)


def test_every_field_of_both_configs_is_in_the_config_reference():
  text = (ROOT / "docs" / "config.md").read_text()
  pretrain, finetune = text.split("\n## Fine-tuning\n")
  for name, config, section in (("dwm_jax/config.py", config_lib.base_config(), pretrain),
                                ("fine-tuning", finetune_config.base_config(), finetune)):
    documented = set(re.findall(r"^\| `([\w.]+)` \|", section, re.M))
    missing = [f for f in config_lib.flatten(config) if f not in documented]
    assert not missing, f"fields of {name} base_config() missing from docs/config.md: {missing}"
