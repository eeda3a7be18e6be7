"""Checks a launch makes before any work, each failing in seconds with one line.

Without them a dead tracking server fails minutes later, after Ray has started, under pages
of tracebacks; a Ray address with nothing behind it waits; a resource request no node can
meet waits forever; a garbled Ray state file fails with a raw decode error, or, truncated,
makes Ray resume a different experiment than the one the study recorded.
"""

from __future__ import annotations

import fnmatch
import json
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

TIMEOUT_S = 5.0
TOKEN_AUTH = ("the Ray cluster at {address} uses token authentication: set RAY_AUTH_MODE=token "
              "and make its token available (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
              "~/.ray/auth_token) where you launch, as on every node before `ray start`")


class PreflightError(Exception):
    """A launch that cannot work; the message says what is wrong and what to do."""


def check_tracking(uri: str, timeout: float = TIMEOUT_S) -> None:
    """A tracking server must answer as MLflow; a local store's folder must exist, and a store
    already there must open (one created only in part, by a full disk or a kill, does not)."""
    if uri.startswith(("http://", "https://")):
        _check_server(uri.rstrip("/"), timeout)
    elif uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.parent.is_dir():
            raise PreflightError(f"--tracking-uri {uri}: folder {path.parent} does not exist")
        _check_sqlite_store(uri, path)


def _check_server(base: str, timeout: float) -> None:
    try:
        urllib.request.urlopen(base + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        pass  # something answers; the API call below tells whether it is MLflow
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PreflightError(
            f"--tracking-uri {base}: no tracking server answers ({reason}); start one "
            "(mlflow server --backend-store-uri sqlite:///mlflow.db) or leave the option "
            "out to use sqlite:///mlflow.db here") from None
    api = base + "/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        with urllib.request.urlopen(api, timeout=timeout) as answer:
            body = json.loads(answer.read(1_000_000) or b"{}")
        if not isinstance(body, dict):
            raise ValueError("the answer is not a JSON object")
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return  # an MLflow server with authentication: MLflow's client handles it
        raise PreflightError(f"--tracking-uri {base}: answers HTTP but is not an MLflow "
                             f"tracking server (GET {api}: {exc.code} {exc.reason})") from None
    except (ValueError, urllib.error.URLError, OSError) as exc:
        raise PreflightError(f"--tracking-uri {base}: answers HTTP but is not an MLflow "
                             f"tracking server (GET {api}: {str(exc)[:120]})") from None


def _check_sqlite_store(uri: str, path: Path) -> None:
    from mlflow.tracking import MlflowClient

    existed = path.exists()
    try:
        MlflowClient(uri).search_experiments(max_results=1)  # creates a store not there yet
    except Exception as exc:  # noqa: BLE001 -- any failure to open the store is the finding
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise PreflightError(
            f"--tracking-uri {uri}: the MLflow store {path} cannot be "
            f"{'opened' if existed else 'created'} ({first}); a store created only in part (a "
            f"full disk or a kill while it was set up) never opens: make room, move it aside "
            f"(mv {path} {path}.broken) and launch again; the study's checkpoints are kept and "
            "its results are logged again") from None


def check_address(address: str | None, timeout: float = TIMEOUT_S) -> None:
    """Something must listen at an explicit host:port (`auto` and `local` are Ray's own)."""
    if address in (None, "local", "auto"):
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise PreflightError(f"--address {address}: expected auto, HOST:PORT or "
                             "ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise PreflightError(
            f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); start "
            "one with `ray start --head`, or leave --address out to run on this machine"
        ) from None


def join_error(address: str, exc: BaseException) -> PreflightError:
    """The one line to show when joining a cluster failed."""
    chain, cause = [], exc
    while cause is not None:
        chain.append(f"{type(cause).__name__}: {cause}")
        cause = cause.__cause__ or cause.__context__
    if any("InvalidAuthToken" in text or "AuthenticationError" in text for text in chain):
        return PreflightError(TOKEN_AUTH.format(address=address))
    return PreflightError(f"--address {address}: could not join the Ray cluster "
                          f"({chain[0].splitlines()[0]})")


def check_resources(cpus: float, gpus: float, cluster: dict[str, float]) -> None:
    """Each trial's request must fit on the cluster, or Ray would wait for it forever."""
    have = {"cpus": cluster.get("CPU", 0.0), "gpus": cluster.get("GPU", 0.0)}
    want = {"cpus": cpus, "gpus": gpus}
    short = [f"{want[k]:g} {k[:-1]}{'s' if want[k] != 1 else ''} (the cluster has {have[k]:g})"
             for k in want if want[k] > have[k]]
    if short:
        raise PreflightError(
            "resources: each trial asks for " + " and ".join(short) + "; lower resources in the "
            "study file, start the local runtime with --num-cpus/--num-gpus, or join a cluster "
            "that has them (--address)")


# Ray's experiment folder: the files Tuner.restore reads, and how each one must parse.
RAY_STATE = (("tuner.pkl", "pickle"), ("experiment_state-*.json", "json"),
             ("basic-variant-state-*.json", "pickle"), ("searcher-state-*.pkl", "pickle"))


def unreadable_ray_state(ray_dir: Path) -> str | None:
    """The first of Ray's state files (the newest of each kind) that does not parse, or None."""
    import ray.cloudpickle

    for pattern, kind in RAY_STATE:
        matching = sorted(p for p in ray_dir.iterdir() if fnmatch.fnmatch(p.name, pattern))
        if not matching:
            continue
        newest = matching[-1]
        try:
            data = newest.read_bytes()
            state: Any = json.loads(data) if kind == "json" else ray.cloudpickle.loads(data)
            if kind == "json" and not {"runner_data", "trial_data"} <= set(state):
                raise ValueError("runner_data or trial_data missing")
            if pattern == "tuner.pkl" and not (isinstance(state, dict) and "_run_config" in state):
                raise ValueError(f"holds a {type(state).__name__}, not Ray Tune's tuner state")
        except Exception as exc:  # noqa: BLE001 -- any failure to parse is the finding
            return f"{newest} is unreadable ({type(exc).__name__}: {str(exc)[:120]})"
    return None
