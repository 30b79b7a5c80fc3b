"""scripts/measure.py, the benchmark scripts' one helper, on real child processes: wall time, the peak RSS of the
command and of a descendant it waited for (not floored by this process's), exit status and signals, a timeout,
output larger than a pipe holds, /proc's figures.  Loaded by its file path (scripts/ is not put on sys.path)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "measure.py"
spec = importlib.util.spec_from_file_location("measure", SCRIPT)
measure = importlib.util.module_from_spec(spec)
spec.loader.exec_module(measure)

ALLOCATE = "b = bytearray({mib} << 20); b[::4096] = b'x' * len(b[::4096]); print('done')"  # pages touched: resident


def test_a_child_that_allocates_100_mib_peaks_above_it():
    done = measure.run_measured([sys.executable, "-c", ALLOCATE.format(mib=100)])
    assert done.returncode == 0 and done.stdout.strip() == "done" and done.stderr == ""
    assert done.seconds > 0
    assert 100 <= done.peak_rss_mib < 1000


def test_the_peak_is_the_largest_process_of_the_tree_not_the_child_alone():
    """What scripts/bench_ranks.py reads: a launcher's ranks are its children; their peak is the one reported."""
    grandchild = [sys.executable, "-c", ALLOCATE.format(mib=150)]
    code = f"import subprocess; subprocess.run({grandchild!r}, check=True)"
    done = measure.run_measured([sys.executable, "-c", code])
    assert done.returncode == 0 and done.stdout.strip() == "done"
    assert done.peak_rss_mib >= 150


def test_the_peak_is_the_commands_own_not_this_processs():
    """The kernel carries a process's high-water mark into the program it executes: a command started straight from
    a large process would report that process's peak as its own."""
    ballast = bytearray(400 << 20)
    ballast[::4096] = b"x" * len(ballast[::4096])
    done = measure.run_measured([sys.executable, "-c", "print('small')"])
    assert done.returncode == 0 and done.peak_rss_mib < 100
    del ballast


def test_the_exit_status_and_a_signal_come_back_as_the_commands():
    assert measure.run_measured([sys.executable, "-c", "import sys; sys.exit(3)"]).returncode == 3
    killed = measure.run_measured([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"])
    assert killed.returncode == -15


def test_a_child_past_its_timeout_is_killed_and_reaped_here():
    done = measure.run_measured([sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.5)
    assert done.returncode == -9 and 0.5 <= done.seconds < 30


def test_output_larger_than_a_pipe_holds_does_not_stall_the_child(tmp_path):
    code = "import sys; sys.stdout.write('o' * 2_000_000); sys.stderr.write('e' * 2_000_000)"
    done = measure.run_measured([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "X": "1"}, timeout=60)
    assert done.returncode == 0 and len(done.stdout) == len(done.stderr) == 2_000_000
    joined = measure.run_measured([sys.executable, "-c", code], stderr=subprocess.STDOUT, timeout=60)
    assert len(joined.stdout) == 4_000_000 and joined.stderr is None
    log = tmp_path / "log"
    with log.open("w") as out:
        to_file = measure.run_measured([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT)
    assert to_file.stdout is None and log.stat().st_size == 4_000_000


def test_sample_sees_the_running_child_in_proc():
    seen = []
    code = ALLOCATE.format(mib=100) + "; import time; time.sleep(1)"
    files = ("status", "smaps_rollup")
    sample = lambda pid: seen.append(measure.proc_status_mib(pid, ("VmHWM", "RssAnon", "Pss"), files))
    done = measure.run_measured([sys.executable, "-c", code], sample=sample, interval=0.05)
    assert done.returncode == 0 and len(seen) > 5
    assert max(s.get("VmHWM", 0) for s in seen) >= 100 and max(s.get("RssAnon", 0) for s in seen) >= 90


def test_proc_status_mib_reads_kb_as_mib_and_nothing_of_a_process_gone():
    mine = measure.proc_status_mib(os.getpid(), ("VmRSS", "VmHWM", "NotAField"))
    assert set(mine) == {"VmRSS", "VmHWM"} and 0 < mine["VmRSS"] <= mine["VmHWM"]
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    assert measure.proc_status_mib(ended.pid, ("VmRSS",)) == {}
