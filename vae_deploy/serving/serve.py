"""Serve the encoder, decoder and sampler on a real Triton server, in-process, via PyTriton.

PyTriton starts the ``tritonserver`` binary its wheel bundles; the encoder and decoder are
Python callables here, backed by the project's ``Runtime``, and Triton does the HTTP/gRPC
protocol, input validation against the model config and dynamic batching. The sampler is
Triton's own Python-backend model (``triton_sampler.py``), loaded into the same server, so a
bad request gets HTTP 400 / gRPC INVALID_ARGUMENT (see ``_load_sampler``). The models and
tensors have the names of the model repository ``vae_deploy.serving.triton`` writes, so one client
works against both. Needs the ``serve`` extra (``nvidia-pytriton``, Linux with glibc >= 2.35).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from vae_deploy.errors import ConfigError, VaeDeployError
from vae_deploy.serving.serve_cleanup import PREFIX, claim, sweep_stale
from vae_deploy.serving.triton import (
    DECODER_MODEL,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_SAMPLES,
    ENCODER_MODEL,
    MODELS,
    SAMPLER_MODEL,
)

# Under light load a 100 us window is long enough for concurrent clients' requests to meet
# (a round trip through PyTriton is several hundred us) and short against that round trip.
DEFAULT_MAX_DELAY_US = 100


class ServeError(VaeDeployError, RuntimeError):
    """The Triton server could not be started (missing extra, port in use, ...)."""


@dataclass(frozen=True)
class ServeOptions:
    """How to run the server. Loopback by default: exposing it is an explicit choice."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = DEFAULT_MAX_BATCH
    max_delay_us: int = DEFAULT_MAX_DELAY_US
    dynamic_batching: bool = True
    max_samples: int = DEFAULT_MAX_SAMPLES
    exit_timeout_s: int = 3  # how long Triton waits for in-flight requests (and open connections) on stop
    log_file: Path | None = None  # Triton's own log; None: a file in a temporary folder (see .log_file)
    log_verbose: int = 0

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_samples < 1 or self.max_delay_us < 0:
            raise ConfigError(f"max_batch and max_samples must be >= 1 and max_delay_us >= 0, got {self.max_batch}, "
                              f"{self.max_samples}, {self.max_delay_us}")
        ports = (self.http_port, self.grpc_port, self.metrics_port)
        if len(set(ports)) != 3 or any(not 0 < p < 65536 for p in ports):
            raise ConfigError(f"http, grpc and metrics ports must be three distinct ports, got {ports}")


@dataclass
class CallStats:
    """Time spent inside one model's Python callable, and inside the Runtime call within it."""

    calls: int = 0  # executions (one per batch Triton formed)
    requests: int = 0
    rows: int = 0
    callable_s: float = 0.0  # the whole callable: PyTriton's batching glue + Runtime
    runtime_s: float = 0.0  # Runtime.encode/decode/sample: input checks + onnxruntime
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, requests: int, rows: int, callable_s: float, runtime_s: float) -> None:
        with self._lock:
            self.calls += 1
            self.requests += requests
            self.rows += rows
            self.callable_s += callable_s
            self.runtime_s += runtime_s

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            d: dict[str, float] = {f.name: getattr(self, f.name) for f in fields(self) if f.init and f.repr}
        d["mean_batch"] = d["rows"] / d["calls"] if d["calls"] else 0.0
        return d

    def reset(self) -> None:
        with self._lock:
            self.calls = self.requests = self.rows = 0
            self.callable_s = self.runtime_s = 0.0


def libpython_dir() -> str | None:
    """The folder holding this interpreter's own shared libpython, if it was built with one.

    Triton's Python-backend stub links ``libpython3.X.so``; without help the dynamic loader
    takes the system's copy, which need not be this interpreter's (a pyenv or conda Python
    next to a distribution's), and a mismatched libpython breaks the stub's imports.
    """
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    name = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
    libdir = sysconfig.get_config_var("LIBDIR")
    if not (name and libdir):
        return None
    for folder in (Path(libdir), Path(libdir) / (sysconfig.get_config_var("MULTIARCH") or "")):
        if (folder / name).exists():
            return str(folder)
    return None


@contextlib.contextmanager
def _stub_library_path() -> Iterator[None]:
    """Put this interpreter's libpython first on LD_LIBRARY_PATH while Triton starts.

    PyTriton builds the server's environment from ``os.environ`` when it launches it, and the
    server passes it on to the stub processes; the change is undone once they run.
    """
    libdir = libpython_dir()
    old = os.environ.get("LD_LIBRARY_PATH")
    if libdir:
        os.environ["LD_LIBRARY_PATH"] = libdir + (os.pathsep + old if old else "")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = old


def _pytriton() -> Any:
    try:
        import pytriton.triton  # noqa: F401
        from pytriton import decorators, model_config, triton
    except ImportError as e:
        raise ServeError(
            f"serving needs PyTriton ({e}); install the serve extra: pip install 'vae-deploy[serve]' "
            "(Linux x86_64/aarch64 with glibc >= 2.35)"
        ) from None
    return triton, model_config, decorators


class VaeTritonServer:
    """``vae_encoder``, ``vae_decoder`` and ``vae_sampler`` on an in-process Triton server.

    Triton checks every request's shape and dtype against the model config before it is
    batched. A callable can only fail a whole batch, so give it a Runtime made with
    ``check_finite=False``: a request holding NaN then gets NaN rows back instead of failing
    the other clients' requests that Triton batched with it.

    Use as a context manager (``with VaeTritonServer(rt, opts) as srv:``) or ``start()`` /
    ``stop()``; ``serve_forever()`` blocks until Ctrl-C or SIGTERM, then stops cleanly.
    """

    def __init__(self, runtime: Any, options: ServeOptions | None = None) -> None:
        self.runtime = runtime
        self.options = options or ServeOptions()
        # The Python callables' own timings; the sampler runs in Triton's Python backend (see
        # _load_sampler): its numbers are in inference_statistics(SAMPLER_MODEL).
        self.stats = {name: CallStats() for name in (ENCODER_MODEL, DECODER_MODEL)}
        self._triton: Any = None
        self._tmp: Path | None = None
        self.log_file: Path | None = self.options.log_file

    # --- endpoints ---------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"{self.options.host}:{self.options.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.options.host}:{self.options.grpc_port}"

    def inference_statistics(self, model: str) -> dict[str, Any]:
        """Triton's own per-model statistics (queue, compute times, batch counts).

        PyTriton guards the statistics, repository and shared-memory endpoints with a token it
        generates; this passes it. Other clients get HTTP 403 there without the token.
        """
        import tritonclient.http as th

        if self._triton is None:
            raise ServeError("the server is not running")
        headers = {"triton-access-token": self._triton.get_access_token()}
        with th.InferenceServerClient(self.http_url) as c:
            return c.get_inference_statistics(model, headers=headers)["model_stats"][0]

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> VaeTritonServer:
        triton, _, _ = _pytriton()
        o = self.options
        _check_ports_free(o.host, {"http": o.http_port, "grpc": o.grpc_port, "metrics": o.metrics_port})
        # One temporary folder holds PyTriton's workspace (model store, sockets) and, unless the
        # options name one, Triton's log (long: kept out of the terminal); stop() removes it.
        sweep_stale()  # folders of servers ended by kill -9 (their owner pid is dead)
        self._tmp = Path(tempfile.mkdtemp(prefix=PREFIX))
        claim(self._tmp)
        self._model_copies_before = _model_copies()
        if self.log_file is None:
            self.log_file = self._tmp / "tritonserver.log"
        config = triton.TritonConfig(
            http_address=o.host, http_port=o.http_port, grpc_address=o.host, grpc_port=o.grpc_port,
            metrics_address=o.host, metrics_port=o.metrics_port, exit_timeout_secs=o.exit_timeout_s,
            log_file=self.log_file, log_verbose=o.log_verbose,
            allow_gpu_metrics=getattr(self.runtime, "provider", "cpu") in ("cuda", "tensorrt"),
        )
        if not o.log_verbose:
            logging.getLogger("pytriton").setLevel(logging.WARNING)
        self._triton = triton.Triton(config=config, workspace=str(self._tmp / "workspace"))
        try:
            self._bind()
            with _stub_library_path():
                self._triton.run()
                self._load_sampler()
        except Exception as e:
            tail = self._log_tail()  # before stop() removes the temporary folder holding the log
            self.stop()
            raise ServeError(f"Triton did not start on {o.host} (http {o.http_port}, grpc {o.grpc_port}, metrics "
                             f"{o.metrics_port}): {type(e).__name__}: {e}{tail}") from e
        return self

    def stop(self) -> None:
        """Stop the server (waits at most ``exit_timeout_s`` for in-flight requests) and remove
        its temporary folder. A second Ctrl-C or SIGTERM meanwhile cannot cut the clean-up short."""
        with _signals_held():
            try:
                if self._triton is not None:
                    triton, self._triton = self._triton, None
                    triton.stop()
            finally:
                if self._tmp is not None:
                    _reap_backend_stubs(self._tmp)
                    for folder in _model_copies() - self._model_copies_before:
                        shutil.rmtree(folder, ignore_errors=True)
                    shutil.rmtree(self._tmp, ignore_errors=True)
                    self._tmp = None

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_file.read_text(errors="replace").splitlines()[-lines:] if self.log_file else []
        except OSError:
            return ""
        return f"\nlast lines of {self.log_file}:\n  " + "\n  ".join(text) if text else ""

    def is_alive(self) -> bool:
        return self._triton is not None and self._triton.is_alive()

    def serve_forever(self, poll_s: float = 0.5) -> None:
        """Block until Ctrl-C, SIGTERM or the server dies; always stop cleanly."""
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            while self.is_alive():
                time.sleep(poll_s)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def __enter__(self) -> VaeTritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- models ------------------------------------------------------------------------
    def _bind(self) -> None:
        _, mc, deco = _pytriton()
        o, rt = self.options, self.runtime
        batcher = mc.DynamicBatcher(max_queue_delay_microseconds=o.max_delay_us) if o.dynamic_batching else None
        batched = mc.ModelConfig(max_batch_size=o.max_batch, batcher=batcher)

        def tensor(name: str, shape: tuple[int, ...], dtype: Any = np.float32, optional: bool = False) -> Any:
            return mc.Tensor(name=name, dtype=dtype, shape=shape, optional=optional)

        def encode(x: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
            t = time.perf_counter()
            mu, logvar = rt.encode(x)
            return {"mu": mu, "logvar": logvar}, time.perf_counter() - t

        def decode(z: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
            t = time.perf_counter()
            x_hat = rt.decode(z)
            return {"x_hat": x_hat}, time.perf_counter() - t

        self._triton.bind(
            model_name=ENCODER_MODEL, infer_func=self._batched(deco, ENCODER_MODEL, encode),
            inputs=[tensor("x", rt.input_shape)],
            outputs=[tensor("mu", rt.latent_shape), tensor("logvar", rt.latent_shape)],
            config=batched, strict=True,
        )
        self._triton.bind(
            model_name=DECODER_MODEL, infer_func=self._batched(deco, DECODER_MODEL, decode),
            inputs=[tensor("z", rt.latent_shape)], outputs=[tensor("x_hat", rt.input_shape)],
            config=batched, strict=True,
        )

    def _batched(self, deco: Any, name: str, fn: Callable[[np.ndarray], tuple[dict, float]]) -> Callable:
        """A callable over a list of requests: PyTriton's @batch joins them into one array."""
        runtime_s = threading.local()

        @deco.batch
        def joined(**inputs: np.ndarray) -> dict[str, np.ndarray]:
            (a,) = inputs.values()
            out, runtime_s.value = fn(a)
            return out

        stats = self.stats[name]

        def infer(requests: list) -> list:
            t = time.perf_counter()
            out = joined(requests)
            rows = sum(len(next(iter(r.values()))) for r in requests)
            stats.add(len(requests), rows, time.perf_counter() - t, runtime_s.value)
            return out

        return infer

    def _load_sampler(self) -> None:
        """The sampler as Triton's own Python-backend model (``triton_sampler.py``, the very file
        the model repository holds), loaded into PyTriton's server beside the bound models.

        Why not a PyTriton callable: PyTriton (0.7) gives a callable no way to choose the status
        code. Whatever a callable raises, its proxy model re-raises as ``TritonModelException``
        with ``traceback.format_exc()``: HTTP 500 / gRPC INTERNAL, a traceback and the server's
        temporary paths in the body. Triton's Python backend can answer a ``TritonError`` with
        code ``INVALID_ARG``: HTTP 400 / gRPC INVALID_ARGUMENT, one line. The sampler decodes
        through BLS calls to the bound decoder, whose batcher gathers concurrent samplers' chunks.
        """
        import tritonclient.http as th

        from vae_deploy.serving.triton import _SAMPLER_SOURCE, GraphInfo, has_sampler, sampler_config

        rt, o = self.runtime, self.options
        info = GraphInfo(file=Path(), input_name="z", output_names=("x_hat",), input_shape=tuple(rt.input_shape),
                         latent_shape=tuple(rt.latent_shape), external_data=())
        if not has_sampler(info):  # a latent with dynamic axes has no size to draw
            return
        folder = self._tmp / "workspace" / "model-store" / SAMPLER_MODEL
        (folder / "1").mkdir(parents=True)
        (folder / "config.pbtxt").write_text(sampler_config(info, max_batch=o.max_batch, instances=1,
                                                            max_samples=o.max_samples))
        shutil.copyfile(_SAMPLER_SOURCE, folder / "1" / "model.py")
        headers = {"triton-access-token": self._triton.get_access_token()}
        with th.InferenceServerClient(self.http_url) as c:
            c.load_model(SAMPLER_MODEL, headers=headers)


def _check_ports_free(host: str, ports: dict[str, int]) -> None:
    """Fail at once on a port in use: a tritonserver that cannot bind one exits, but PyTriton
    only notices after its readiness wait times out, a minute or more later."""
    busy = []
    for what, port in ports.items():
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no obstacle
            try:
                s.bind((host, port))
            except OSError as e:
                busy.append(f"{what} port {port} ({e.strerror})")
    if busy:
        raise ServeError(f"cannot listen on {host}: {', '.join(busy)}; choose other ports (--http-port, --grpc-port, "
                         "--metrics-port)")


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# Triton's python backend copies each model it loads into /tmp/folderXXXXXX (a fixed template:
# TMPDIR is not consulted) and leaves the copy behind when the server is stopped rather than
# unloading its models, which is how PyTriton ends it.
BACKEND_COPY_GLOB = "/tmp/folder*/config.pbtxt"


def _model_copies() -> set[Path]:
    """The python backend's model copies of this project's models now present in /tmp."""
    import glob

    found = set()
    for config in glob.glob(BACKEND_COPY_GLOB):
        try:
            head = Path(config).read_text(errors="replace")[:200]
        except OSError:
            continue
        if any(f'name: "{m}"' in head for m in MODELS):
            found.add(Path(config).parent)
    return found


def _reap_backend_stubs(workspace: Path) -> None:
    """End Triton python-backend stubs that outlive their server, and remove their model copies.

    A server stopped while requests are in flight can leave a stub (and its worker) running
    from our workspace, orphaned, with the model copy it was given (a ``folder*`` directory in
    the system temporary folder). They are found by the executable's path, which lies inside
    ``workspace``; nothing else on the machine matches it. Linux only (``/proc``)."""
    proc_root = Path("/proc")
    if not proc_root.is_dir():  # pragma: no cover - not Linux
        return
    marker = str(workspace).encode()
    table: dict[int, tuple[int, list[bytes]]] = {}
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        table[int(entry.name)] = (ppid, argv)
    stubs = {pid for pid, (_, argv) in table.items() if argv and marker in argv[0]}
    workers = {pid for pid, (ppid, _) in table.items() if ppid in stubs}
    for pid in stubs | workers:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    for pid in stubs:
        argv = table[pid][1]
        model_copy = Path(argv[1].decode(errors="replace")) if len(argv) > 1 and argv[1] else None
        if model_copy is not None and model_copy.name.startswith("folder") and model_copy.is_dir():
            shutil.rmtree(model_copy, ignore_errors=True)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM inside the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def serve(export_dir: str | Path, options: ServeOptions | None = None, *, provider: str = "cpu",
          engine: str = "onnxruntime", on_ready: Callable[[VaeTritonServer], None] | None = None,
          **load_options: Any) -> None:
    """Load the export folder and serve it until Ctrl-C or SIGTERM (the CLI's ``serve``);
    ``load_options`` go to ``Runtime.load`` (e.g. auto's ``max_error``/``fp32_only``)."""
    from vae_deploy.runtime.core import Runtime

    options = options or ServeOptions()
    runtime = Runtime.load(export_dir, engine=engine, provider=provider, max_batch=options.max_batch,
                           check_finite=False, **load_options)
    server = VaeTritonServer(runtime, options)
    # SIGTERM while Triton starts must also end in stop(): no temporary folders left behind.
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt) if (
        threading.current_thread() is threading.main_thread()) else None
    try:
        server.start()
        if on_ready is not None:
            on_ready(server)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
