"""Storage paths: local files and bucket URLs (``gs://``, ``s3://``, ...) through one set of
functions, so every job takes a workdir, an output or a data file on either.

Local paths use ``os`` and ``open`` as before; URLs go through ``etils.epath`` (what orbax
uses): with ``EPATH_USE_TF=false`` (or without TensorFlow) its ``gs://`` backend is gcsfs, the
``[gcs]`` extra. One function per operation, all taking and returning ``str``:

- names: :func:`is_remote`, :func:`absolute` (never touches a URL), :func:`join`,
  :func:`parent`, :func:`name`;
- queries: :func:`exists`, :func:`isfile`, :func:`isdir`, :func:`listdir`, :func:`glob`,
  :func:`walk_files`;
- reads (streamed, never copied to local disk first): :func:`open`, :func:`read_bytes`,
  :func:`read_text`; :func:`kvstore_spec` names a folder for tensorstore (many reads in flight);
- writes: :func:`write_bytes` / :func:`write_text` are atomic (local: a temporary file renamed
  over the target; a bucket: one object upload, which appears whole or not at all) and create
  parent folders; :func:`makedirs`, :func:`copy_file`, :func:`remove`, :func:`rmtree`;
  :func:`put_file` moves a finished local file into place (a rename, or a streamed upload);
- :func:`move_dir`: a rename locally; on a bucket (no renames there) a copy of every object,
  then the deletion of the source, so an interruption leaves the source whole;
- :func:`check_bucket` / :func:`check_writable`: the bucket exists, is reachable and (for
  writes) accepts an object, else one :class:`StorageError` (exit status 2) before a job starts;
- :func:`set_request_timeout`: a bucket request that moves no data for that long is abandoned
  and retried with backoff by its client (gcsfs, TensorStore), never waited on forever. The
  pretraining loop also bounds each whole wait (:mod:`dwm_jax.train.deadline`), and ends with a
  :class:`StorageTimeout` (exit status 75: restart) when a bucket stops answering.

Emulators: a user who sets only ``STORAGE_EMULATOR_HOST`` (e.g. ``http://127.0.0.1:4443`` of
fake-gcs-server) gets, at import, what every client needs to use it too (see
:func:`configure_emulator`); variables already set are left alone.
"""
from __future__ import annotations

import builtins
import fnmatch
import os
import posixpath
import socket
import sys
import threading
import uuid
from typing import IO, Any, Mapping, MutableMapping
from urllib import parse

from dwm_jax import faults

# The URL schemes etils.epath opens (and orbax / tensorstore write checkpoints to).
REMOTE_SCHEMES = ("gs://", "s3://", "az://", "hf://")
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
GCS_ENDPOINT = "https://storage.googleapis.com"
_PROXY_ENV = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


class StorageError(faults.UsageFault):
  """A bucket that does not exist, cannot be reached, or refuses these credentials."""


class StorageTimeout(faults.RestartFault):
  """A bucket stopped answering: a wait of the run outlasted ``storage.timeout_seconds``.
  Nothing to fix in the job (status 75): restart it once the bucket answers."""


# ---------------------------------------------------------------------------------------------
# The emulator environment.

def emulator_environment(environ: Mapping[str, str]) -> dict[str, str]:
  """The variables :func:`configure_emulator` would add to ``environ`` (none without
  ``STORAGE_EMULATOR_HOST``; never one that is set already).

  - ``TENSORSTORE_GCS_HTTP_URL``: tensorstore (orbax's array writes) ignores
    ``STORAGE_EMULATOR_HOST``;
  - ``EPATH_USE_TF=false``: etils' TensorFlow backend ignores emulators, its gcsfs one does not;
  - ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``: gcsfs would ask the storage control API (gRPC,
    which emulators do not serve) for each bucket's layout and wait a minute for the answer;
  - ``NO_GCE_CHECK=true``: google-auth / gcsfs do not look for a metadata server;
  - ``GOOGLE_AUTH_TOKEN_FOR_TESTING``: tensorstore sends this dummy token, neither looking for
    credentials nor sending real ones to the emulator.
  """
  host = environ.get(EMULATOR_ENV, "").strip()
  if not host or host == "default":
    return {}
  url = host if host.startswith(("http://", "https://")) else f"http://{host}"
  wanted = {"TENSORSTORE_GCS_HTTP_URL": url, "EPATH_USE_TF": "false",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "NO_GCE_CHECK": "true",
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator"}
  return {k: v for k, v in wanted.items() if k not in environ}


def configure_emulator(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
  """Sets :func:`emulator_environment` in ``environ`` (default ``os.environ``) and makes
  gcsfs connect anonymously; returns what it set. Runs at import; call it again after setting
  ``STORAGE_EMULATOR_HOST`` in a running process, before the first bucket access."""
  environ = os.environ if environ is None else environ
  added = emulator_environment(environ)
  environ.update(added)
  if environ is not os.environ:
    return added
  gpath = sys.modules.get("etils.epath.gpath")  # it caches its first reading of EPATH_USE_TF
  if "EPATH_USE_TF" in added and hasattr(getattr(gpath, "_is_tf_installed", None), "cache_clear"):
    gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
  if environ.get(EMULATOR_ENV, "").strip() not in ("", "default"):
    try:
      import fsspec  # pylint: disable=import-outside-toplevel
    except ImportError:
      pass
    else:  # the emulator needs no credentials: do not look for any
      fsspec.config.conf.setdefault("gcs", {}).setdefault("token", "anon")
  return added


configure_emulator()


# ---------------------------------------------------------------------------------------------
# Request timeouts.

REQUEST_TIMEOUT_SECONDS = 60.0  # the default of storage.request_timeout_seconds
# TensorStore (orbax's array reads and writes) abandons a transfer slower than this many bytes/s
# over the timeout: one byte would never fire, since a request's own upload counts as progress.
_LOW_SPEED_BYTES = 256


def request_timeout_environment(seconds: float) -> dict[str, str]:
  """TensorStore's variables for a request timeout of ``seconds``. TensorStore reads them when
  it opens its first HTTP connection (the first checkpoint read or write of the process)."""
  s = str(max(1, int(round(seconds))))
  return {"TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS": s,
          "TENSORSTORE_CURL_LOW_SPEED_LIMIT_BYTES": str(_LOW_SPEED_BYTES),
          "TENSORSTORE_CURL_CONNECT_TIMEOUT_SECONDS": s}


def set_request_timeout(seconds: float) -> None:
  """Bucket requests that move no data for ``seconds`` fail and are retried with backoff:
  gcsfs (every ``dwm_jax.paths`` call, orbax's metadata) waits at most ``seconds`` for a
  connection or for the next bytes of an answer, in 6 attempts 1 to 16 s apart; TensorStore
  abandons a transfer below 256 bytes/s for ``seconds``, in up to 32 attempts 1 to 32 s apart.
  Without a call, both use :data:`REQUEST_TIMEOUT_SECONDS` (TensorStore variables the user set
  are kept)."""
  global _request_timeout
  os.environ.update(request_timeout_environment(seconds))
  _request_timeout = float(seconds)
  _apply_request_timeout()


_request_timeout = REQUEST_TIMEOUT_SECONDS
for _name, _value in request_timeout_environment(REQUEST_TIMEOUT_SECONDS).items():
  os.environ.setdefault(_name, _value)


def _apply_request_timeout() -> None:
  """Gives gcsfs the request timeout: fsspec's defaults for new file systems, and the ones
  already open (etils keeps its own). Called by :func:`set_request_timeout` and at the first
  bucket check (so a local-only job does not import the cloud clients for it)."""
  try:
    import aiohttp  # pylint: disable=import-outside-toplevel
    import fsspec  # pylint: disable=import-outside-toplevel
  except ImportError:
    return
  timeout = aiohttp.ClientTimeout(sock_connect=_request_timeout, sock_read=_request_timeout)
  fsspec.config.conf.setdefault("gcs", {})["requests_timeout"] = timeout
  gcsfs = sys.modules.get("gcsfs")
  if gcsfs is not None:
    for fs in list(getattr(gcsfs.GCSFileSystem, "_cache", {}).values()):
      fs.requests_timeout = timeout


# ---------------------------------------------------------------------------------------------
# Names.

def is_remote(path: Any) -> bool:
  """Whether ``path`` is a bucket URL (``gs://``, ``s3://``, ``az://``, ``hf://``)."""
  return os.fspath(path).startswith(REMOTE_SCHEMES)


def _epath(path: Any):
  from etils import epath  # pylint: disable=import-outside-toplevel
  return epath.Path(os.fspath(path))


def absolute(path: Any) -> str:
  """``os.path.abspath`` for a local path; a URL as it is (abspath would mangle ``gs://``)."""
  path = os.fspath(path)
  return path.rstrip("/") if is_remote(path) else os.path.abspath(path)


def join(base: Any, *parts: str) -> str:
  base = os.fspath(base)
  return posixpath.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def parent(path: Any) -> str:
  path = os.fspath(path)
  return posixpath.dirname(path.rstrip("/")) if is_remote(path) else os.path.dirname(path)


def name(path: Any) -> str:
  return posixpath.basename(os.fspath(path).rstrip("/"))


def bucket_of(path: Any) -> str:
  """``gs://bucket`` of ``gs://bucket/a/b`` ('' for a local path)."""
  path = os.fspath(path)
  if not is_remote(path):
    return ""
  scheme, rest = path.split("://", 1)
  return f"{scheme}://{rest.split('/', 1)[0]}"


# ---------------------------------------------------------------------------------------------
# Queries and reads.

def exists(path: Any) -> bool:
  if is_remote(path):
    check_bucket(path)
    return _epath(path).exists()
  return os.path.exists(path)


def isfile(path: Any) -> bool:
  if is_remote(path):
    check_bucket(path)
    return _epath(path).is_file()
  return os.path.isfile(path)


def isdir(path: Any) -> bool:
  """A local folder; on a bucket, a prefix that holds at least one object."""
  if is_remote(path):
    check_bucket(path)
    return _epath(path).is_dir()
  return os.path.isdir(path)


def listdir(path: Any) -> list[str]:
  """Sorted names of the entries of a folder (on a bucket, of the objects and prefixes one
  level below ``path``)."""
  if is_remote(path):
    check_bucket(path)
    return sorted(p.name for p in _epath(path).iterdir())
  return sorted(os.listdir(path))


def glob(pattern: Any) -> list[str]:
  """Sorted paths matching ``pattern`` (``*`` / ``?`` / ``[...]`` in its last component)."""
  pattern = os.fspath(pattern)
  folder, part = parent(pattern), name(pattern)
  if not isdir(folder):
    return []
  return [join(folder, n) for n in listdir(folder) if fnmatch.fnmatchcase(n, part)]


def walk_files(root: Any) -> list[str]:
  """Sorted paths of every file under ``root``, relative to it, with ``/`` separators."""
  root = os.fspath(root)
  out = []
  if is_remote(root):
    check_bucket(root)
    key = root.split("://", 1)[1].rstrip("/")  # fsspec names folders without the scheme
    for folder, _, files in _epath(root).walk():
      folder = os.fspath(folder).split("://", 1)[-1].lstrip("/")
      rel = folder[len(key):].strip("/")
      out += [posixpath.join(rel, f) if rel else f for f in files]
  else:
    for folder, _, files in os.walk(root):
      rel = os.path.relpath(folder, root)
      out += [f if rel == "." else posixpath.join(rel.replace(os.sep, "/"), f) for f in files]
  return sorted(out)


def open(path: Any, mode: str = "rb") -> IO:  # pylint: disable=redefined-builtin
  """A file object (reads and writes are streamed; a bucket object written this way appears
  when the file is closed)."""
  if is_remote(path):
    check_bucket(path)
    return _epath(path).open(mode)
  return builtins.open(path, mode)


def kvstore_spec(folder: Any) -> dict:
  """The tensorstore key-value store of a local folder or a ``gs://`` prefix, for readers that
  keep many reads in flight at once (the input pipeline): ``{"driver": "file", "path": ...}`` or
  ``{"driver": "gcs", "bucket": ..., "path": ...}``, keys relative to ``folder``. The bucket is
  checked first; an emulator is found through ``TENSORSTORE_GCS_HTTP_URL`` (see
  :func:`configure_emulator`). Raises ``ValueError`` for schemes tensorstore does not read."""
  folder = os.fspath(folder)
  if not is_remote(folder):
    return {"driver": "file", "path": os.path.abspath(folder).rstrip(os.sep) + "/"}
  if not folder.startswith("gs://"):
    raise ValueError(f"{folder}: tensorstore reads local folders and gs:// buckets only")
  check_bucket(folder)
  bucket, _, key = folder[len("gs://"):].partition("/")
  return {"driver": "gcs", "bucket": bucket, "path": key.strip("/") + "/" if key.strip("/") else ""}


def read_bytes(path: Any) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def read_text(path: Any) -> str:
  """The file decoded as UTF-8, line endings as they are (what ``csv`` wants)."""
  return read_bytes(path).decode("utf-8")


# ---------------------------------------------------------------------------------------------
# Writes.

def makedirs(path: Any) -> None:
  """A local folder and its parents; nothing on a bucket (prefixes exist through objects)."""
  if is_remote(path):
    check_bucket(path)
    return
  os.makedirs(path, exist_ok=True)


def write_bytes(path: Any, data: bytes) -> str:
  """Writes ``data`` atomically (see the module docstring), creating parent folders."""
  path = os.fspath(path)
  if is_remote(path):
    check_bucket(path)
    _epath(path).write_bytes(data)
    return path
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
  try:
    with builtins.open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def write_text(path: Any, text: str) -> str:
  return write_bytes(path, text.encode("utf-8"))


def copy_file(src: Any, dst: Any) -> None:
  """Copies one file (either side local or remote), replacing ``dst``."""
  if not is_remote(src) and not is_remote(dst):
    import shutil  # pylint: disable=import-outside-toplevel
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    shutil.copyfile(src, dst)
    return
  with open(src, "rb") as f:
    write_bytes(dst, f.read())


def put_file(local: Any, dst: Any) -> None:
  """Moves the finished local file ``local`` to ``dst``, replacing it: locally one rename (on the
  same file system: atomic); to a bucket a streamed upload to a temporary object, then a
  server-side copy to ``dst`` (which appears whole, never in part; a failed upload leaves no
  ``dst``), then the local file is removed."""
  local, dst = os.fspath(local), os.fspath(dst)
  if not is_remote(dst):
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    os.replace(local, dst)
    return
  import shutil  # pylint: disable=import-outside-toplevel
  check_bucket(dst)
  tmp = f"{dst}.tmp-{uuid.uuid4().hex[:12]}"
  try:
    with builtins.open(local, "rb") as src, _epath(tmp).open("wb") as out:
      shutil.copyfileobj(src, out, 8 << 20)
    _epath(tmp).copy(_epath(dst), overwrite=True)
  finally:
    try:
      _epath(tmp).unlink(missing_ok=True)
    except Exception:  # pylint: disable=broad-except  (best effort: the upload's error wins)
      pass
  os.remove(local)


def remove(path: Any) -> None:
  if is_remote(path):
    _epath(path).unlink()
  else:
    os.remove(path)


def rmtree(path: Any) -> None:
  if is_remote(path):
    _epath(path).rmtree(missing_ok=True)
  else:
    import shutil  # pylint: disable=import-outside-toplevel
    shutil.rmtree(path, ignore_errors=True)


def move_dir(src: Any, dst: Any) -> None:
  """Moves the folder ``src`` to ``dst`` (which must not exist).

  Local: one rename. Bucket: every object is copied, then ``src`` is deleted; killed in between,
  ``src`` is still whole (and ``dst`` a partial copy): nothing is ever lost.
  """
  src, dst = os.fspath(src), os.fspath(dst)
  if not is_remote(src) and not is_remote(dst):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    os.rename(src, dst)
    return
  if exists(dst):
    raise FileExistsError(f"{dst} already exists")
  files = walk_files(src)
  for rel in files:
    _epath(join(src, rel)).copy(_epath(join(dst, rel)), overwrite=True)
  copied = set(walk_files(dst))
  missing = [rel for rel in files if rel not in copied]
  if missing:
    raise OSError(f"moving {src} to {dst}: {len(missing)} object(s) did not copy "
                  f"(e.g. {missing[0]}); {src} is left as it was")
  rmtree(src)


# ---------------------------------------------------------------------------------------------
# Checks before a job starts.

_checked_buckets: set[str] = set()
_lock = threading.Lock()


def _endpoints(scheme: str) -> list[str]:
  """The HTTP endpoints the clients of ``scheme`` talk to (gcsfs / google-cloud-storage and
  tensorstore for ``gs``; unknown for the other schemes)."""
  if scheme != "gs":
    return []
  host = os.environ.get(EMULATOR_ENV, "").strip()
  gcsfs_url = (host if host.startswith(("http://", "https://")) else f"http://{host}") \
      if host and host != "default" else GCS_ENDPOINT
  urls = [gcsfs_url, os.environ.get("TENSORSTORE_GCS_HTTP_URL") or GCS_ENDPOINT]
  return list(dict.fromkeys(urls))


def _reach(url: str, timeout: float = 10.0) -> None:
  """Raises :class:`StorageError` when nothing accepts a TCP connection at ``url``'s host:
  the clients would retry for minutes before saying so. Skipped behind a proxy."""
  if any(os.environ.get(v) for v in _PROXY_ENV):
    return
  u = parse.urlparse(url)
  port = u.port or (443 if u.scheme == "https" else 80)
  try:
    socket.create_connection((u.hostname, port), timeout=timeout).close()
  except OSError as e:
    where, todo = ("", "Check the network") if url == GCS_ENDPOINT else (
        f" (set by {EMULATOR_ENV} or TENSORSTORE_GCS_HTTP_URL)", "Start the emulator, or fix "
        "that address")
    raise StorageError(f"cannot reach the storage endpoint {url}{where}: {faults.one_line(e)}. "
                       f"{todo}") from e


def _credentials_hint(bucket: str) -> str:
  if bucket.startswith("gs://"):
    return ("check the credentials (`gcloud auth application-default login`, or "
            "GOOGLE_APPLICATION_CREDENTIALS) and their roles on the bucket")
  return "check the credentials and their permissions on the bucket"


def check_bucket(path: Any) -> None:
  """Raises :class:`StorageError` unless the bucket of ``path`` exists and can be read with
  these credentials. Local paths pass; a bucket that passed once is not asked again."""
  bucket = bucket_of(path)
  if not bucket or bucket in _checked_buckets:
    return
  with _lock:
    if bucket in _checked_buckets:
      return
    if not _checked_buckets:
      _apply_request_timeout()
    for url in _endpoints(bucket.split("://")[0]):
      _reach(url)
    try:
      found = _epath(bucket).exists()
    except ImportError as e:
      raise StorageError(f"cannot open {bucket}: {faults.one_line(e)}; "
                         "install the cloud storage extra: pip install 'dwm-jax[gcs]'") from e
    except PermissionError as e:
      raise StorageError(f"no permission to read {bucket}: {_credentials_hint(bucket)} "
                         f"({faults.one_line(e)})") from e
    except Exception as e:  # pylint: disable=broad-except  (each client has its own errors)
      text = str(e)
      if "Forbidden" in text or "403" in text or "401" in text:
        raise StorageError(f"no permission to read {bucket}: {_credentials_hint(bucket)} "
                           f"({faults.one_line(e)})") from e
      raise StorageError(f"cannot read {bucket} ({faults.one_line(e)})") from e
    if not found:
      raise StorageError(f"bucket {bucket} does not exist (or these credentials cannot see "
                         "it): create it, or fix the path")
    _checked_buckets.add(bucket)


def check_writable(folder: Any) -> None:
  """Raises :class:`StorageError` unless objects can be written to the bucket folder
  ``folder`` (one probe object is written and deleted). Local folders pass: their errors are
  reported where they happen, as before."""
  folder = os.fspath(folder)
  if not is_remote(folder):
    return
  check_bucket(folder)
  probe = join(folder, f".dwm-jax-write-check-{socket.gethostname()}-{os.getpid()}-"
                       f"{uuid.uuid4().hex[:8]}")
  try:
    _epath(probe).write_bytes(b"")
    _epath(probe).unlink(missing_ok=True)
  except Exception as e:  # pylint: disable=broad-except
    raise StorageError(f"cannot write to {folder}: {_credentials_hint(bucket_of(folder))} "
                       f"({faults.one_line(e)})") from e
