"""Experiment tracking with MLflow: where runs go, and configs and result records as params/metrics.

Callers use MLflow's own idioms (`mlflow.start_run(nested=True)`, `mlflow.log_figure`,
`mlflow.set_tags`); this module adds what they need around them:

- `tracking_uri` / `check_tracking_uri`: which store to use (configured value, then
  `MLFLOW_TRACKING_URI`, then `./mlflow.db`), checked before hours of kernel work start.
- `check_experiment_name`: names MLflow would refuse only once a run starts.
- `flatten_params` / `log_config`: a nested config as MLflow params plus `config.yaml`,
  credentials redacted (`config_hash` ignores them too).
- `log_records`: result records ({"kind", "diag_reg", "t", "accuracy", ...}) as metrics
  whose names carry the record's identifying keys.
- `find_run`: the run an interrupted experiment should resume instead of duplicating
  (the caller matches the config hash and the data hash, `data_hash`).
- `code_version`: package version and git commit (`mlflow.source.git.commit`).
- `log_dataset`, `log_summary`: the data as an MLflow input; the results table artifact.

MLflow 3.x rules this relies on (mlflow.utils.validation): param values are at most
MAX_PARAM_VAL_LENGTH (6000) characters; param and metric names at most 250 characters of
alphanumerics, `_ - . /`, space (and `:` except on Windows), and must be normalised paths
(no empty, "." or ".." segments, no leading "/"), so "=" is not allowed in names.
"""
from __future__ import annotations

import hashlib
import math
import numbers
import os
import re
import socket
import urllib.parse
from typing import Iterable

import mlflow
import yaml
from mlflow.entities import ViewType
from mlflow.environment_variables import (
    MLFLOW_ALLOW_FILE_STORE,
    MLFLOW_TRACKING_URI,
)
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_EXPERIMENT_NAME_LENGTH, MAX_PARAM_VAL_LENGTH

from raygram.config import redact_config
from raygram.errors import ConfigError, TrackingUnavailable

DEFAULT_TRACKING_URI: str  # computed on every access by __getattr__ below: it follows the cwd

CONNECT_TIMEOUT_S = 3.0
# A server's first API call after its start (or under load) can take seconds: the pre-flight
# waits this long for the answer once connected, still with no retries.
ANSWER_TIMEOUT_S = 30.0
# Keys of a result record that identify it (become part of metric names) even when numeric.
IDENTIFYING_KEYS = frozenset({
    "diag_reg", "t", "train_size", "test_size", "width", "networks", "seed", "fold",
    "learning_rate", "classes", "step", "epoch",
})
_DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
_NAME_UNSAFE = re.compile(r"[^\w.\- ]")
_SQLITE_HEADER = b"SQLite format 3\x00"


def _default_uri() -> str:
    """sqlite:///<absolute path of ./mlflow.db> for the current directory."""
    return "sqlite:///" + os.path.abspath("mlflow.db")


def __getattr__(name: str):
    if name == "DEFAULT_TRACKING_URI":
        return _default_uri()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _split_sqlite(uri: str) -> tuple[str, str | None, str]:
    """("sqlite" or "sqlite+driver", database path or None for in-memory, "?query" or "")."""
    scheme, _, rest = uri.partition("://")
    location, sep, query = rest.partition("?")
    if not location.startswith("/") or location in ("/", "/:memory:"):
        return scheme, None, sep + query
    return scheme, location[1:], sep + query


def _scheme(uri: str) -> str:
    """Lower-case scheme without a SQLAlchemy driver ("postgresql+psycopg2" -> "postgresql")."""
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    if len(scheme) == 1:  # a Windows drive letter: a local path
        return ""
    return scheme.split("+", 1)[0]


def tracking_uri(configured: str | None) -> str:
    """The tracking URI to use: `configured` if given, else `MLFLOW_TRACKING_URI`, else ./mlflow.db.

    A relative SQLite path is made absolute (against the current directory), so Ray
    workers and later calls in another directory write to the same database.
    """
    if configured is not None and not isinstance(configured, str):
        raise ConfigError(f"tracking URI must be a string, got {configured!r}")
    uri = (configured or "").strip() or (MLFLOW_TRACKING_URI.get() or "").strip()
    if not uri:
        return _default_uri()
    if _scheme(uri) == "sqlite":
        scheme, path, query = _split_sqlite(uri)
        if path is not None:
            return f"{scheme}:///{os.path.abspath(path)}{query}"
    return uri


def _check_sqlite(uri: str) -> None:
    _, path, _ = _split_sqlite(uri)
    if path is None:
        raise ConfigError(f"tracking URI {uri!r} is an in-memory SQLite database, which keeps nothing; "
                         "use sqlite:///path/to/mlflow.db")
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise ConfigError(f"tracking URI {uri!r}: folder {folder} does not exist")
    if os.path.exists(path):
        if not os.path.isfile(path):
            raise ConfigError(f"tracking URI {uri!r}: {path} is not a file")
        if not os.access(path, os.R_OK | os.W_OK):
            raise ConfigError(f"tracking URI {uri!r}: {path} is not readable and writable")
        with open(path, "rb") as f:
            header = f.read(len(_SQLITE_HEADER))
        if header and header != _SQLITE_HEADER:
            raise ConfigError(f"tracking URI {uri!r}: {path} is not a SQLite database")
    elif not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"tracking URI {uri!r}: cannot create {path} (folder not writable)")


# Read-only API call of the pre-flight: the cheapest one every MLflow server (and its basic-auth
# app, for any user with read access to something) answers, and one its Host check covers.
PREFLIGHT_ENDPOINT = "/api/2.0/mlflow/experiments/search"
_CREDENTIAL_VARIABLES = "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN"


def _without_userinfo(uri: str) -> str:
    """`uri` with any user name and password dropped, fit for messages."""
    parsed = urllib.parse.urlparse(uri)
    if "@" not in parsed.netloc:
        return uri
    return urllib.parse.urlunparse(parsed._replace(netloc=parsed.netloc.rpartition("@")[2]))


def _network_reason(error: BaseException) -> str:
    """The innermost operating-system reason of a failed request ("[Errno 111] Connection refused"),
    else the exception's class name; never the URL (which `requests` repeats at length)."""
    seen, stack, reason = set(), [error], None
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.strerror:
            reason = f"[Errno {e.errno}] {e.strerror}" if e.errno else e.strerror
        elif isinstance(e, socket.timeout) or type(e).__name__.endswith("Timeout"):
            reason = reason or "timed out"
        stack.extend(x for x in (e.__cause__, e.__context__, *getattr(e, "args", ())) if isinstance(x, BaseException))
        reason_attr = getattr(e, "reason", None)
        if isinstance(reason_attr, BaseException):
            stack.append(reason_attr)
    if reason is None:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    return reason


def _check_http(uri: str) -> None:
    """One real, read-only API call to an MLflow server, as the MLflow client would make it.

    GET <uri>/api/2.0/mlflow/experiments/search?max_results=1, once (no retries; CONNECT_TIMEOUT_S
    to connect, ANSWER_TIMEOUT_S for the answer), through MLflow's own request code with MLflow's own credentials
    (MLFLOW_TRACKING_USERNAME/PASSWORD as basic auth, else MLFLOW_TRACKING_TOKEN as a bearer
    token, or MLflow's credentials file and auth plugins) and TLS settings
    (MLFLOW_TRACKING_SERVER_CERT_PATH, MLFLOW_TRACKING_CLIENT_CERT_PATH,
    MLFLOW_TRACKING_INSECURE_TLS). GET /health is not enough: a server answers it for any Host
    header and without credentials, and then refuses every API call (403, 401).

    Args:
      uri: an http(s) tracking URI, without credentials.

    Raises:
      ConfigError: no host, an invalid URL or credentials in the URI; the server refuses the
        Host header (its --allowed-hosts), the credentials or their absence (401) or access
        (403); the URI does not lead to an MLflow API (404, or an answer that is not MLflow's JSON).
      TrackingUnavailable: unreachable, no answer within the timeout, or any other HTTP error.
    """
    from mlflow.exceptions import InvalidUrlException, MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    parsed = urllib.parse.urlparse(uri)
    if "@" in parsed.netloc:
        raise ConfigError(f"tracking URI {_without_userinfo(uri)!r} must not carry credentials (user@ or "
                          f"user:password@): set {_CREDENTIAL_VARIABLES} in the environment")
    if not parsed.hostname:
        raise ConfigError(f"tracking URI {uri!r} names no host")
    call = f"GET {PREFLIGHT_ENDPOINT}"
    base = urllib.parse.urlunparse(parsed._replace(path=parsed.path.rstrip("/"), params="", query="", fragment=""))
    creds = get_default_host_creds(base)
    sent = "the credentials" if ((creds.username and creds.password) or creds.token or creds.auth
                                 or creds.aws_sigv4) else "no credentials"
    try:
        response = http_request(creds, PREFLIGHT_ENDPOINT, "GET", max_retries=0, backoff_factor=0,
                                backoff_jitter=0, timeout=(CONNECT_TIMEOUT_S, ANSWER_TIMEOUT_S),
                                raise_on_status=False,
                                params={"max_results": 1})
    except InvalidUrlException:
        raise ConfigError(f"tracking URI {uri!r} is not a valid URL") from None
    except MlflowException as e:
        raise TrackingUnavailable(f"tracking server {uri} is unreachable: {_network_reason(e)} "
                                  f"({call}, time-outs {CONNECT_TIMEOUT_S:g} s to connect and {ANSWER_TIMEOUT_S:g} s "
                                  "to answer, no retries)") from None
    status, text = response.status_code, response.text[:2000]
    if status == 200:
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise ConfigError(f"tracking URI {uri!r}: {call} did not answer with MLflow's JSON, "
                              "so this is not an MLflow tracking server")
        return
    if status == 401:
        raise ConfigError(f"tracking server {uri} refused {sent} (401 Unauthorized to {call}): "
                          f"set {_CREDENTIAL_VARIABLES}")
    if status == 403 and ("rebinding" in text.lower() or "invalid host" in text.lower()):
        host = parsed.netloc
        raise ConfigError(f"tracking server {uri} refuses the Host header {host!r} (403 to {call}): use a host "
                          "name in the server's --allowed-hosts, or add this one there")
    if status == 403:
        raise ConfigError(f"tracking server {uri} refused access with {sent} (403 Forbidden to {call}): "
                          f"the user of {_CREDENTIAL_VARIABLES} lacks permission")
    if status == 404:
        raise ConfigError(f"tracking URI {uri!r}: {call} answered 404, so this is not an MLflow tracking "
                          "server (or the URI lacks its path prefix)")
    raise TrackingUnavailable(f"tracking server {uri} answered {status} {response.reason} to {call}")


def _check_database(uri: str, scheme: str) -> None:
    """A TCP connection to the database server (SQLAlchemy URIs: dialect+driver://user@host:port/db)."""
    parsed = urllib.parse.urlparse(uri)
    if not parsed.hostname:
        return  # a local socket given in the query: nothing to probe without the driver
    try:
        port = parsed.port or _DATABASE_PORTS[scheme]
    except ValueError:
        raise ConfigError(f"tracking URI {uri!r} has an invalid port") from None
    try:
        socket.create_connection((parsed.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise TrackingUnavailable(f"{scheme} server {parsed.hostname}:{port} of the tracking URI is "
                              f"unreachable: {e} (timeout {CONNECT_TIMEOUT_S:g} s)") from None


def _check_file_store(uri: str) -> None:
    if not MLFLOW_ALLOW_FILE_STORE.get():
        raise ConfigError(f"tracking URI {uri!r} is a file store, which MLflow 3 refuses unless "
                         "MLFLOW_ALLOW_FILE_STORE=true; use sqlite:///path/to/mlflow.db")
    path = urllib.parse.urlparse(uri).path if _scheme(uri) == "file" else uri
    root = os.path.abspath(urllib.parse.unquote(path) or "mlruns")
    parent = os.path.dirname(root)
    if not os.path.isdir(parent):
        raise ConfigError(f"tracking URI {uri!r}: folder {parent} does not exist")


def check_tracking_uri(uri: str) -> None:
    """Raise a one-line ConfigError (unsupported, misconfigured) or TrackingUnavailable (unreachable).

    Supported: sqlite:///path (its folder must exist), http(s)://server (one read-only API
    call, made as the MLflow client makes it with MLflow's credential and TLS environment
    variables, must connect within CONNECT_TIMEOUT_S and succeed within ANSWER_TIMEOUT_S, see
    `_check_http`), postgresql/mysql/mssql
    (TCP connect), and file stores only with MLFLOW_ALLOW_FILE_STORE=true. Creates nothing.

    Args:
      uri: the tracking URI (`tracking_uri`'s result). Credentials never belong in it: an
        http(s) URI with user@ or user:password@ is refused (MLflow's environment variables
        carry them, and the URI is logged).

    Raises:
      ConfigError: unsupported, misconfigured, or refused by the server (Host check, 401, 403).
      TrackingUnavailable: the server or database cannot be reached.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError(f"tracking URI must be a non-empty string, got {uri!r}")
    uri = uri.strip()
    scheme = _scheme(uri)
    if scheme == "sqlite":
        _check_sqlite(uri)
    elif scheme in ("http", "https"):
        _check_http(uri)
    elif scheme in _DATABASE_PORTS:
        _check_database(uri, scheme)
    elif scheme in ("", "file"):
        _check_file_store(uri)
    else:
        raise ConfigError(f"tracking.uri: unsupported scheme {scheme!r} in {uri!r}: use sqlite:///path, "
                         "http(s)://host:port or postgresql/mysql/mssql://...")


def _segment(text) -> str:
    """One part of a param/metric name: characters MLflow refuses (and "/") -> "_"; never "", "." or ".."."""
    text = _NAME_UNSAFE.sub("_", str(text))
    return "_" if text.strip(".") == "" else text


def _safe_name(segments: list, separator: str = "/") -> str:
    """Name MLflow accepts from sanitised segments; past 250 characters, cut with a hash suffix."""
    name = separator.join(_segment(s) for s in segments)
    if len(name) > MAX_ENTITY_KEY_LENGTH:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = name[:MAX_ENTITY_KEY_LENGTH - 9] + "-" + digest
    return name


def flatten_params(config: dict, prefix: str = "") -> dict[str, str]:
    """Nested dicts/lists as flat MLflow params: {"a": {"b": [{"c": 1}]}} -> {"a.b.0.c": "1"}.

    Values are `str`-ed and cut to MLflow's param length limit (MAX_PARAM_VAL_LENGTH);
    empty dicts/lists become "{}"/"[]" so that every key of the config is recorded.
    """
    if not isinstance(config, dict):
        raise ValueError(f"config must be a mapping, got {type(config).__name__}")
    flat: dict[str, str] = {}

    def visit(value, path: list) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                visit(v, path + [k])
        elif isinstance(value, (list, tuple)) and value:
            for i, v in enumerate(value):
                visit(v, path + [i])
        else:
            name = _safe_name(path, ".")
            if isinstance(value, dict):
                flat[name] = "{}"
            elif isinstance(value, (list, tuple)):
                flat[name] = "[]"
            else:
                flat[name] = str(value)[:MAX_PARAM_VAL_LENGTH]

    for k, v in config.items():
        visit(v, ([prefix] if prefix else []) + [k])
    return flat


def _yaml_safe(value):
    """YAML-safe form: tuples -> lists, numpy scalars/arrays -> Python numbers/lists, paths -> str."""
    if isinstance(value, dict):
        return {k if isinstance(k, (str, int, float, bool)) else str(k): _yaml_safe(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_yaml_safe(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise ValueError(f"config value {value!r} ({type(value).__name__}) cannot be written to YAML")


def _require_run(what: str) -> None:
    if mlflow.active_run() is None:
        raise RuntimeError(f"{what} needs an active run: call it inside `with mlflow.start_run():`")


def log_config(config: dict) -> None:
    """Log `config` to the active run: flattened params, and the whole config as "config.yaml".

    Credentials in its `storage_options` (and a password in its store URL) are redacted
    first (`raygram.config.redact_config`): they never reach MLflow.
    """
    _require_run("log_config")
    config = redact_config(config)
    params = flatten_params(config)
    text = yaml.safe_dump(_yaml_safe(config), sort_keys=False)
    mlflow.log_params(params)
    mlflow.log_text(text, "config.yaml")


def _render(value) -> str:
    """Value of an identifying key in a metric name: 0.001, 100, inf, ntk."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)
        if not math.isfinite(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return str(value)


def _is_metric(key: str, value, identifying: frozenset) -> bool:
    return (key not in identifying and isinstance(value, numbers.Real)
            and not isinstance(value, bool))


def log_records(records: list[dict], step_key: str | None = None,
                identifying_keys: Iterable[str] | None = None) -> None:
    """Log result records to the active run: each numeric metric of a record under a name of its ids.

    A record's identifying keys are its non-numeric ones (named by value: "ntk") and those
    in `identifying_keys` (default IDENTIFYING_KEYS; named "key_value", since MLflow names
    forbid "="); its other numeric values are metrics. {"kind": "ntk", "diag_reg": 1e-3,
    "t": inf, "accuracy": 0.9} gives metric "accuracy/ntk/diag_reg_0.001/t_inf" = 0.9.
    With `step_key`, that key's integer value is the MLflow step (and not part of the name).
    Raises ValueError before logging anything if two records would give the same name and step.
    """
    _require_run("log_records")
    identifying = frozenset(IDENTIFYING_KEYS if identifying_keys is None else identifying_keys)
    by_step: dict[int, dict[str, float]] = {}
    for position, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"record {position} is not a mapping: {record!r}")
        step = 0
        if step_key is not None:
            value = record.get(step_key)
            if (isinstance(value, bool) or not isinstance(value, numbers.Real)
                    or not math.isfinite(value) or value != int(value)):
                raise ValueError(f"record {position}: step key {step_key!r} must hold an integer, "
                                 f"got {value!r}")
            step = int(value)
        ids = []
        for key, value in record.items():
            if key == step_key or _is_metric(key, value, identifying):
                continue
            ids.append(value if isinstance(value, str) else f"{key}_{_render(value)}")
        metrics = by_step.setdefault(step, {})
        for key, value in record.items():
            if key == step_key or not _is_metric(key, value, identifying):
                continue
            name = _safe_name([key] + ids)
            if name in metrics:
                raise ValueError(f"records give metric {name!r} twice at step {step}: add an "
                                 "identifying key that tells them apart")
            metrics[name] = float(value)
    for step, metrics in by_step.items():
        if metrics:
            mlflow.log_metrics(metrics, step=step)


def find_run(experiment_name: str, tags: dict[str, str], unfinished_only: bool = False) -> str | None:
    """Id of the newest top-level, not deleted run of the experiment that has all `tags`.

    For resuming an interrupted experiment in its run instead of starting a duplicate. Any
    status counts, or with `unfinished_only` every status but FINISHED (RUNNING: a killed
    driver; FAILED, KILLED). None if the experiment does not exist or no run matches.
    """
    client = MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    wanted = {str(k): str(v) for k, v in tags.items()}
    # Tags that the filter grammar can quote narrow the search; every tag is checked below.
    filters = [f"tags.`{k}` = '{v}'" for k, v in wanted.items()
               if "`" not in k and "'" not in v and "\\" not in v]
    if unfinished_only:
        filters.append("attributes.status != 'FINISHED'")
    page_token = None
    while True:
        page = client.search_runs([experiment.experiment_id], " and ".join(filters),
                                  run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                  order_by=["attributes.start_time DESC"], page_token=page_token)
        for run in page:
            run_tags = run.data.tags
            if ("mlflow.parentRunId" not in run_tags
                    and not (unfinished_only and run.info.status == "FINISHED")
                    and all(run_tags.get(k) == v for k, v in wanted.items())):
                return run.info.run_id
        page_token = page.token
        if not page_token:
            return None


CONFIG_HASH_TAG = "raygram.config_hash"
DATA_HASH_TAG = "raygram.data_hash"
GIT_COMMIT_TAG = "mlflow.source.git.commit"  # MLflow's standard tag: its UI links the run to the commit
GIT_COMMIT_ENV = "RAYGRAM_GIT_COMMIT"  # set by deploy/Dockerfile: an image has no .git


def code_version() -> dict[str, str]:
    """Tags naming the code: raygram's package version and the git commit.

    The commit is RAYGRAM_GIT_COMMIT when set (and not "unknown", the Dockerfile's
    default), else `git rev-parse HEAD` of the checkout raygram is imported from; it goes
    under MLflow's standard `mlflow.source.git.commit` and under `raygram.git_commit`. No
    commit tag when neither gives one.
    """
    import importlib.metadata
    import subprocess
    from pathlib import Path

    tags = {"raygram.version": importlib.metadata.version("raygram")}
    commit = os.environ.get(GIT_COMMIT_ENV, "").strip()
    if not commit or commit == "unknown":
        commit = ""
        try:
            found = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                   text=True, timeout=10)
            if found.returncode == 0:
                commit = found.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    if commit:
        tags[GIT_COMMIT_TAG] = tags["raygram.git_commit"] = commit
    return tags


def sqlite_file(uri: str) -> str | None:
    """The database file of a SQLite tracking URI (as `tracking_uri` resolves it), else None.

    Args:
      uri: a tracking URI, e.g. "sqlite:////abs/mlflow.db" or "http://host:5000".

    Returns:
      The file's absolute path; None for other schemes and in-memory SQLite.
    """
    if _scheme(uri) != "sqlite":
        return None
    _, path, _ = _split_sqlite(uri)
    return None if path is None else os.path.abspath(path)


def data_hash(fingerprints) -> str:
    """SHA-256 (16 hex digits) of what an experiment's data is, for resuming only a run of the same data.

    Args:
      fingerprints: JSON-able description of the data, e.g. {seed: {"sha256" of the source,
        "x_train"/"x_test" store fingerprints}}; keys are sorted.
    """
    import json

    return hashlib.sha256(json.dumps(fingerprints, sort_keys=True, default=str).encode()).hexdigest()[:16]


def log_dataset(x, targets, *, name: str, digest: str, source: str | None, context: str,
                tags: dict[str, str] | None = None) -> None:
    """Record a data set as an input of the active run (`mlflow.log_input`), not its values.

    MLflow keeps its name, digest, source, schema and shape (and a small profile), and
    shows them in the run's "Datasets" section.

    Args:
      x: inputs, shape (N, ...).
      targets: labels or targets (N, ...), or None.
      name: the data set's name (e.g. "digits").
      digest: a content digest (e.g. the first 16 hex digits of the source's SHA-256).
      source: where it came from (a path or URL), or None for a built-in source
        (MLflow then names the code that ran).
      context: its role: "training", "validation+test", ...
      tags: more input tags (e.g. {"seed": "0"}).
    """
    import warnings

    import mlflow.data
    import numpy as np

    _require_run("log_dataset")
    with warnings.catch_warnings():  # a local path matches two equivalent local-artifact source classes
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        dataset = mlflow.data.from_numpy(np.asarray(x), targets=None if targets is None else np.asarray(targets),
                                         source=source, name=name, digest=digest)
    mlflow.log_input(dataset, context=context, tags=tags)


def log_summary(records: list[dict], task: str) -> None:
    """Log the results table (`raygram.experiment.selection.summary_table`) to the active run as
    results.md and results.html, and which split chose the ridge and time as the tag
    `raygram.selected_by` ("validation" or "test — optimistic").

    Args:
      records: scored records as returned by `raygram.run_experiment`.
      task: "classification" or "regression".
    """
    from raygram.experiment.selection import SELECTED_BY, selection_split, summary_table

    _require_run("log_summary")
    mlflow.log_text(summary_table(records, task, "markdown"), "results.md")
    mlflow.log_text(summary_table(records, task, "html"), "results.html")
    mlflow.set_tag("raygram.selected_by", SELECTED_BY[selection_split(records, task)])


def config_hash(config: dict) -> str:
    """SHA-256 (16 hex digits) of what determines an experiment's results: the config's
    mapping without its tracking and ray sections, and without credentials (rotating a key
    keeps the hash, so an interrupted run still resumes)."""
    import json

    relevant = {k: v for k, v in redact_config(config).items() if k not in ("tracking", "ray")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_experiment_name(name: str) -> None:
    """Refuse an experiment name MLflow would refuse only when the run starts.

    Args:
      name: `tracking.experiment` (by default the config's name).

    Raises:
      ConfigError: an empty name or one longer than MLflow's MAX_EXPERIMENT_NAME_LENGTH.
    """
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_EXPERIMENT_NAME_LENGTH:
        raise ConfigError(f"tracking.experiment: must be a non-empty name of at most {MAX_EXPERIMENT_NAME_LENGTH} "
                          f"characters (MLflow's limit; by default the config's name), got "
                          + (f"{len(name)} characters" if isinstance(name, str) and name.strip() else repr(name)))


def _artifact_folder(name: str) -> str:
    """One safe folder name for an experiment's artifacts: the name itself when it is one plain
    path segment, else its safe characters cut short plus a hash (no "/", "..", or over-long names)."""
    if re.fullmatch(r"[\w.\- ]{1,200}", name) and name.strip(".") and name == name.strip():
        return name
    return _segment(name)[:200].strip() + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]


def set_experiment(name: str, uri: str):
    """`mlflow.set_experiment` on `uri`, creating the experiment with its artifacts next to a
    SQLite tracking file (MLflow would put them in ./mlruns of whatever the working directory is),
    in `mlartifacts/<name>` (a safe form of the name, see `_artifact_folder`)."""
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///") and mlflow.get_experiment_by_name(name) is None:
        folder = os.path.dirname(uri[len("sqlite:///"):])
        mlflow.create_experiment(name, artifact_location=os.path.join(folder, "mlartifacts", _artifact_folder(name)))
    return mlflow.set_experiment(name)


def finished_child_runs(client: MlflowClient, experiment_id: str, parent_id: str) -> dict:
    """Finished nested runs of a parent run: {(kernel, kind, train_size, seed): Run}.

    Args:
      client: a client of the tracking store.
      experiment_id: the parent's experiment.
      parent_id: the parent run.
    """
    runs = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'", max_results=50000)
    keys = ("raygram.kernel", "raygram.kind", "raygram.train_size", "raygram.seed")
    return {(r.data.tags[keys[0]], r.data.tags[keys[1]], int(r.data.tags[keys[2]]), int(r.data.tags[keys[3]])): r
            for r in runs if r.info.status == "FINISHED" and all(k in r.data.tags for k in keys)}


def solver_metrics(info: dict) -> dict[str, float]:
    """MLflow metrics of a `Prediction.info`: working set (MiB) and CG iterations / Lanczos steps per kind."""
    metrics = {"solver/working_set_mib": info["working_set_bytes"] / 2**20}
    for kind in ("nngp", "ntk"):
        for name, runs in info.get(kind, {}).items():
            if name in ("cg", "lanczos"):
                key = "iterations" if name == "cg" else "steps"
                metrics[f"solver/{kind}/{name}_{key}"] = float(sum(r[key] for r in runs))
    return metrics
