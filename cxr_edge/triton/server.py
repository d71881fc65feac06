"""Start the ``tritonserver`` that ships in the ``nvidia-pytriton`` wheel, on loopback (tests, bench).

The server runs from its own Python environment (a venv, made by ``tools/make_triton_env.sh``):
the wheel installed with ``--no-deps`` (its own Python package is never used), ``numpy<2``, and
the ONNX Runtime version of the project's environment. numpy < 2 because with numpy 2 in the
stub's environment every output tensor of a Python model arrives empty (``output tensor shape
does not match size of output``; seen with the 0.7.0 wheel, whose stub predates numpy 2; numpy
1.26 works). The project's own
environment keeps its numpy 2.

The wheel holds ``pytriton/tritonserver/`` (the server, the Python backend, one stub per Python
version) and ``nvidia_pytriton.libs/`` (the libraries they link); only the Python backend is
bundled. What the stub needs, and this module provides:

- a backend folder with the Python backend and the stub of the environment's Python version,
  made in a work folder;
- ``LD_LIBRARY_PATH`` with the base interpreter's ``libpython`` folder (else the model stays
  unavailable with ``'_thread.RLock' object has no attribute '_recursion_count'``) and the
  wheel's library folder;
- ``PATH`` starting with the environment's ``bin``: the stub's interpreter starts isolated
  (``PYTHONPATH`` is ignored) and takes its ``sys.executable`` from ``PATH``, so it finds the
  venv's ``pyvenv.cfg`` and uses the venv's site-packages;
- its working folder is the one holding the ``cxr_edge`` package this process imported (the
  stub puts the working folder first on ``sys.path``), so the models run this very code.

HTTP and gRPC listen on 127.0.0.1 only; metrics are off.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import cxr_edge
from cxr_edge.errors import CxrEdgeError

HOST = "127.0.0.1"
#: Python-backend shared memory per model instance: start and growth step. Responses of the
#: image model are 2 x C x 512 x 512 float32 (29 MB for 14 classes); the 1 MB default grows
#: in many small steps.
SHM_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class TritonEnvironment:
    """A Python environment (venv) holding the wheel's server.

    ``prefix``: the venv; ``root``: its ``pytriton/tritonserver``; ``libs``: the wheel's
    libraries; ``python_version``: "X.Y"; ``libpython_dir``: the base interpreter's lib folder.
    """

    prefix: Path
    root: Path
    libs: Path
    python_version: str
    libpython_dir: Path

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def stub(self) -> Path:
        return self.root / "python_backend_stubs" / self.python_version / "triton_python_backend_stub"


def _pyvenv_home(prefix: Path) -> Path | None:
    try:
        lines = (prefix / "pyvenv.cfg").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "home":
            return Path(value.strip())
    return None


def find_triton_environment(prefix: str | Path) -> TritonEnvironment | None:
    """The server environment at ``prefix`` (a venv with ``nvidia-pytriton``), or None when it
    is missing or incomplete. Nothing is imported from it."""
    prefix = Path(prefix)
    home = _pyvenv_home(prefix)
    if home is None:
        return None
    for site in sorted(prefix.glob("lib/python3.*/site-packages")):
        root = site / "pytriton" / "tritonserver"
        if (root / "bin" / "tritonserver").is_file():
            return TritonEnvironment(
                prefix=prefix,
                root=root,
                libs=site / "nvidia_pytriton.libs",
                python_version=site.parent.name.removeprefix("python"),
                libpython_dir=home.parent / "lib",
            )
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class LocalTritonServer:
    """One ``tritonserver`` process serving ``repository`` on 127.0.0.1.

    env: the server environment (``find_triton_environment``). Ports are picked free at
    construction and kept across ``stop``/``start``, so a restarted server answers at the same
    URLs. ``log_path`` receives the server's output (default: a file in the work folder). Use as
    a context manager, or call ``start`` and ``stop``.
    """

    def __init__(
        self,
        repository: str | Path,
        env: TritonEnvironment,
        workdir: str | Path | None = None,
        log_path: str | Path | None = None,
    ) -> None:
        self.env = env
        self.repository = Path(repository)
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="cxr-triton-")) if workdir is None else Path(workdir)
        self.log_path = Path(log_path) if log_path is not None else self.workdir / "tritonserver.log"
        self.http_port = free_port()
        self.grpc_port = free_port()
        # Other servers on this machine (other users, other tests) must not share our shm regions.
        self._shm_prefix = f"cxr_edge_{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{HOST}:{self.grpc_port}"

    def _backends(self) -> Path:
        """The backend folder: the wheel's Python backend with this interpreter's stub."""
        folder = self.workdir / "backends"
        python = folder / "python"
        if (python / "triton_python_backend_stub").is_file():
            return folder
        stub = self.env.stub
        if not stub.is_file():
            raise CxrEdgeError(
                stub, f"the wheel has no Python backend stub for Python {self.env.python_version}"
            )
        python.mkdir(parents=True, exist_ok=True)
        for item in (self.env.root / "backends" / "python").iterdir():
            if item.is_file():
                shutil.copy2(item, python / item.name)
        shutil.copy2(stub, python / "triton_python_backend_stub")
        return folder

    def _environ(self) -> dict[str, str]:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(self.env.libpython_dir), str(self.env.libs), env.get("LD_LIBRARY_PATH", "")) if p
        )
        env["PATH"] = os.pathsep.join(p for p in (str(self.env.prefix / "bin"), env.get("PATH", "")) if p)
        env.pop("PYTHONHOME", None)
        env.pop("VIRTUAL_ENV", None)
        return env

    def command(self) -> list[str]:
        return [
            str(self.env.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={self._backends()}",
            f"--http-address={HOST}",
            f"--http-port={self.http_port}",
            f"--grpc-address={HOST}",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false",
            "--allow-sagemaker=false",
            "--allow-vertex-ai=false",
            "--exit-timeout-secs=5",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            f"--backend-config=python,shm-default-byte-size={SHM_BYTES}",
            f"--backend-config=python,shm-growth-byte-size={SHM_BYTES}",
        ]

    def start(self, timeout_s: float = 120.0) -> LocalTritonServer:
        """Start the server and wait until it and all its models are ready.

        Raises CxrEdgeError with the server's last log line when it exits or is not ready in time.
        """
        if self.process is not None and self.process.poll() is None:
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._environ(),
                cwd=Path(cxr_edge.__file__).resolve().parent.parent,
                start_new_session=True,  # its stubs are in its process group: stop() ends them all
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise CxrEdgeError(self.log_path, f"tritonserver exited with {code}: {self.last_log_line()}")
            if self.ready():
                return self
            time.sleep(0.2)
        self.stop()
        raise CxrEdgeError(
            self.log_path, f"tritonserver not ready after {timeout_s:.0f} s: {self.last_log_line()}"
        )

    def ready(self) -> bool:
        """The server answers ``/v2/health/ready`` with 200 (every model loaded)."""
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def last_log_line(self) -> str:
        """The most telling line of the server's log, for one-line messages: a model that failed
        to load, else the last error line, else the last line."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        lines = [" ".join(ln.strip(" |").split()) for ln in text.splitlines() if ln.strip(" |+-")]
        unavailable = [ln for ln in lines if "UNAVAILABLE:" in ln]
        errors = [ln for ln in lines if ln.startswith("E") or "error:" in ln.lower()]
        return (unavailable or errors or lines or ["(empty log)"])[-1]

    def kill(self) -> None:
        """End the server at once (SIGKILL to its whole process group, stubs included)."""
        self._signal_and_wait(signal.SIGKILL, 10.0)

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the server: SIGTERM, then SIGKILL after ``timeout_s``; stubs included."""
        if self.process is None:
            return
        if not self._signal_and_wait(signal.SIGTERM, timeout_s):
            self._signal_and_wait(signal.SIGKILL, 10.0)

    def _signal_and_wait(self, sig: signal.Signals, timeout_s: float) -> bool:
        process = self.process
        if process is None:
            return True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        # The stubs may outlive the server by a moment: end what is left of the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        self.process = None
        self._remove_shared_memory()
        return True

    def shared_memory_regions(self) -> list[Path]:
        """This server's Python-backend shared-memory regions (``/dev/shm/<prefix>*``, 64 MB
        each). The prefix is this object's own, so no other server's regions match."""
        return sorted(Path("/dev/shm").glob(f"{self._shm_prefix}*"))

    def _remove_shared_memory(self) -> None:
        """Unlink the regions of a server that has ended: a killed one leaves them behind."""
        for region in self.shared_memory_regions():
            with contextlib.suppress(OSError):
                region.unlink()

    def close(self) -> None:
        """Stop the server and remove a work folder this object made."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalTritonServer:  # noqa: PYI034
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
