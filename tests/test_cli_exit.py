"""The console script's exit after a merge (cli.run → exit_now): output flushed, atexit handlers run, exit code
kept, and a live non-daemon thread still waited for. Each case is a fresh interpreter, as the command is."""

import os
import subprocess
import sys
import textwrap

import yaml
from safetensors.torch import load_file


def run_script(tmp_path, tiny_models, body: str, cfg: dict | None = None):
    cfg = cfg or {
        "merge_method": "task_arithmetic",
        "base_model": str(tiny_models["base"]),
        "models": [{"model": str(tiny_models["ft_a"]), "parameters": {"weight": 1.0}}],
        "parameters": {"lambda": 0.0},
    }
    config = tmp_path / "merge.yaml"
    config.write_text(yaml.safe_dump(cfg))
    prelude = textwrap.dedent(
        """
        import atexit, sys, threading, time
        atexit.register(lambda: open("atexit.txt", "w").write("ran"))
        from babelmerge.cli import run
        """
    )
    argv = ["merge", str(config), str(tmp_path / "out"), "--no-progress"]
    code = prelude + textwrap.dedent(body) + "\nrun()\n"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout block-buffered, as usual
    cmd = [sys.executable, "-c", code, *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)


def test_merge_exits_with_flushed_output_and_atexit_handlers(tiny_models, tmp_path):
    proc = run_script(tmp_path, tiny_models, 'print("unflushed line before the merge", end="")')
    assert proc.returncode == 0, proc.stderr
    # stdout is a pipe (block-buffered): these lines survive only if the exit flushes it
    assert proc.stdout.startswith("unflushed line before the merge")
    assert f"merged model written to {tmp_path / 'out'}" in proc.stdout
    assert (tmp_path / "atexit.txt").read_text() == "ran"
    # λ = 0: the written model is the base
    base = load_file(tiny_models["base"] / "model.safetensors")
    out = load_file(tmp_path / "out" / "model.safetensors")
    assert base.keys() == out.keys() and all((base[k] == out[k]).all() for k in base)


def test_failed_merge_keeps_its_exit_code(tiny_models, tmp_path):
    cfg = {"merge_method": "ties", "base_model": str(tmp_path / "missing"), "models": []}
    proc = run_script(tmp_path, tiny_models, "", cfg)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("babelmerge: error: ")
    assert (tmp_path / "atexit.txt").read_text() == "ran"
    assert not (tmp_path / "out").exists()


def test_a_live_non_daemon_thread_is_waited_for(tiny_models, tmp_path):
    body = """
        import pathlib
        def late():  # still running when the merge is done
            while not pathlib.Path("out").exists():
                time.sleep(0.01)
            time.sleep(0.5)
            print("thread finished", flush=True)
        threading.Thread(target=late).start()
        """
    proc = run_script(tmp_path, tiny_models, body)
    assert proc.returncode == 0, proc.stderr
    assert "thread finished" in proc.stdout and "merged model written to" in proc.stdout
