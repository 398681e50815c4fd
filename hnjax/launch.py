"""Start N processes of a script on this machine as one JAX job, the way ``torchrun`` does for PyTorch.

    python -m hnjax.launch --num-processes 2 --devices-per-process 4 -- experiments/simcse_focal.py ARGS...

Each process runs ``python SCRIPT ARGS...`` (or ``python -m MODULE ARGS...`` with ``-- -m MODULE ARGS...``) with
``JAX_COORDINATOR_ADDRESS=localhost:PORT`` (a free port unless ``--port`` is given), ``HNJAX_NUM_PROCESSES``,
``HNJAX_PROCESS_ID`` and, on CPU, ``--xla_force_host_platform_device_count=D`` in ``XLA_FLAGS``; scripts built on
``hnjax.distributed.add_distributed_arguments`` read these as their flag defaults and join the job. On GPUs
(``--platform gpu``) process ``i`` sees devices ``i·D … i·D + D − 1`` (``JAX_LOCAL_DEVICE_IDS``).

Every line a process prints is prefixed with ``[p<i>]``. When a process exits with an error, the launcher stops the
others and exits with that process's code (128 + signal number for a process killed by a signal), naming it; when all
succeed it exits 0. Ctrl-C stops every process.

This is for one machine. On a TPU pod slice or a SLURM cluster, run the script itself on every host (or task): JAX
detects the cluster (see docs/train.md, "Several processes").
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

# The variables hnjax.distributed.add_distributed_arguments reads (not imported from there: the launcher itself
# never imports jax, so it starts fast and leaves every accelerator to its processes).
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "HNJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "HNJAX_PROCESS_ID"
ENV_HEARTBEAT = "HNJAX_HEARTBEAT_TIMEOUT"
_DEVICE_FLAG = re.compile(r"--xla_force_host_platform_device_count=\S+")
_LINE_END = re.compile(rb"[\r\n]")


def free_port() -> int:
    """A TCP port that was free a moment ago (bound to port 0 and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def child_env(base: dict[str, str], *, process_id: int, num_processes: int, devices: int, port: int, platform: str,
              heartbeat_timeout: int | None = None) -> dict[str, str]:  # fmt: skip
    """The environment of process ``process_id``: coordinator, process count and id, devices, unbuffered output."""
    env = dict(base)
    env[ENV_COORDINATOR] = f"localhost:{port}"
    env[ENV_NUM_PROCESSES] = str(num_processes)
    env[ENV_PROCESS_ID] = str(process_id)
    env["PYTHONUNBUFFERED"] = "1"
    if heartbeat_timeout is not None:
        env[ENV_HEARTBEAT] = str(heartbeat_timeout)
    if platform == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
        flags = _DEVICE_FLAG.sub("", env.get("XLA_FLAGS", "")).strip()
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    else:
        env["JAX_LOCAL_DEVICE_IDS"] = ",".join(str(process_id * devices + d) for d in range(devices))
    return env


class _Prefixer(threading.Thread):
    """Copies a child's output to ours line by line, each line (and each ``\\r`` update) prefixed with its name."""

    def __init__(self, stream, prefix: str, lock: threading.Lock, out):
        super().__init__(daemon=True)
        self.stream, self.prefix, self.lock, self.out = stream, prefix.encode(), lock, out

    def run(self) -> None:
        pending = b""
        for chunk in iter(lambda: self.stream.read1(65536), b""):
            pending += chunk
            pieces = _LINE_END.split(pending)
            ends = _LINE_END.findall(pending)
            for piece, end in zip(pieces, ends):
                if piece or end == b"\n":  # a bare "\r" (progress-bar redraw) needs no prefix of its own
                    self._write(piece + end)
            pending = pieces[-1]
        if pending:
            self._write(pending + b"\n")

    def _write(self, data: bytes) -> None:
        with self.lock:
            self.out.write(self.prefix + data)
            self.out.flush()


def _stop(procs: list[subprocess.Popen], grace: float = 5.0) -> None:
    """SIGTERM every running process, then SIGKILL what is left after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [p for p in procs if p.poll() is None]
        for p in alive:
            try:
                p.send_signal(sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while any(p.poll() is None for p in alive) and time.monotonic() < deadline:
            time.sleep(0.05)


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def launch(command: list[str], *, num_processes: int, devices_per_process: int, port: int | None = None,
           platform: str = "cpu", heartbeat_timeout: int | None = None, out=None) -> int:  # fmt: skip
    """Run ``python command...`` as ``num_processes`` processes of one JAX job; returns the exit code (0: all ok).

    Args:
      command: the script and its arguments (``["-m", "module", ...]`` for a module).
      num_processes: processes to start (>= 1).
      devices_per_process: CPU devices per process (``--platform cpu``), or GPUs per process (``gpu``).
      port: coordinator port (default: a free one).
      platform: ``"cpu"`` or ``"gpu"``.
      heartbeat_timeout: seconds without heartbeats before a process counts as lost (default: the script's).
      out: binary stream for the prefixed output (default: our stdout).
    """
    if num_processes < 1 or devices_per_process < 1:
        raise ValueError(f"num_processes and devices_per_process must be >= 1, got {num_processes}, "
                         f"{devices_per_process}")  # fmt: skip
    if not command:
        raise ValueError("no script to run: pass it after --, e.g. -- experiments/simcse_focal.py ARGS")
    out = out or sys.stdout.buffer
    port = port or free_port()
    lock = threading.Lock()
    procs, threads = [], []
    for i in range(num_processes):
        env = child_env(os.environ, process_id=i, num_processes=num_processes, devices=devices_per_process,
                        port=port, platform=platform, heartbeat_timeout=heartbeat_timeout)  # fmt: skip
        # Same process group as the launcher: whoever kills the group (a scheduler, a test's timeout) kills all.
        p = subprocess.Popen([sys.executable, *command], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(p)
        threads.append(_Prefixer(p.stdout, f"[p{i}] ", lock, out))
        threads[-1].start()
    failed = None

    def terminated(signum, frame):  # a scheduler stopping the launcher stops the job
        _stop(procs)
        sys.exit(128 + signum)

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminated) if main_thread else None
    try:
        while failed is None and any(p.poll() is None for p in procs):
            for i, p in enumerate(procs):
                if p.poll() not in (None, 0):
                    failed = i
                    break
            time.sleep(0.05)
        if failed is None:
            failed = next((i for i, p in enumerate(procs) if p.returncode != 0), None)
    except KeyboardInterrupt:
        _stop(procs)
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    if failed is not None:
        code = procs[failed].returncode
        how = f"signal {-code}" if code < 0 else f"code {code}"
        with lock:
            out.write(f"[launch] process {failed} of {num_processes} exited with {how}; stopping the others\n".encode())
            out.flush()
        _stop(procs)
    for t in threads:
        t.join(timeout=5)
    return 0 if failed is None else _exit_code(procs[failed].returncode)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" in argv:
        split = argv.index("--")
        own, command = argv[:split], argv[split + 1 :]
    else:
        own, command = argv, []
    p = argparse.ArgumentParser(prog="python -m hnjax.launch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--num-processes", type=int, required=True, help="processes to start")
    p.add_argument("--devices-per-process", type=int, default=1, help="devices per process (default 1)")
    p.add_argument("--port", type=int, default=None, help="coordinator port on localhost (default: a free one)")
    p.add_argument("--platform", choices=("cpu", "gpu"), default="cpu", help="device platform (default cpu)")
    p.add_argument(
        "--heartbeat-timeout",
        type=int,
        default=None,
        help="seconds without heartbeats before a process counts as lost (default: the script's, 100)",
    )
    args = p.parse_args(own)
    if not command:
        p.error("no script given: python -m hnjax.launch --num-processes N -- SCRIPT ARGS...")
    if args.num_processes < 1 or args.devices_per_process < 1:
        p.error("--num-processes and --devices-per-process must be >= 1")
    return launch(command, num_processes=args.num_processes, devices_per_process=args.devices_per_process,
                  port=args.port, platform=args.platform, heartbeat_timeout=args.heartbeat_timeout)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
