"""Smoke test of the benchmark suite: it runs, it prints its table, its kernel checks pass.

The benchmarks themselves are not collected by the default ``python -m pytest``
(testpaths is ``tests``); this only checks, at tiny sizes, that
``benchmarks/compare.py`` and ``benchmarks/test_kernels.py`` still work.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("A b128", "A b32", "A b512", "B b32", "C predict")


def _run(args, env=None, timeout=600):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def _check_table(out):
    assert "CPU:" in out and "threads: 2" in out, out
    assert "| workload | unit | cython | numba | reference | PyTorch | scikit-learn | GEMM bound |" in out, out
    for row in ROWS:
        assert f"| {row} |" in out, f"row {row!r} missing:\n{out}"


def test_compare_smoke():
    proc = _run(["benchmarks/compare.py", "--quick", "--smoke"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    _check_table(proc.stdout)
    assert "| memory A b128" in proc.stdout or "memory:" in proc.stdout
    cost = [ln for ln in proc.stdout.splitlines() if "EarlyStopping + CosineDecay" in ln]
    assert cost and all("x plain" in ln for ln in cost), proc.stdout[-3000:]


def test_compare_without_torch_and_sklearn(tmp_path):
    # Shadow both packages with modules that fail to import, as if not installed.
    (tmp_path / "torch.py").write_text("raise ImportError('torch hidden by the smoke test')\n")
    (tmp_path / "sklearn.py").write_text("raise ImportError('sklearn hidden by the smoke test')\n")
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    proc = _run(["benchmarks/compare.py", "--smoke", "--no-memory"], env={"PYTHONPATH": path})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    _check_table(proc.stdout)
    assert "torch not installed" in proc.stdout and "sklearn not installed" in proc.stdout
    a128 = next(line for line in proc.stdout.splitlines() if line.startswith("| A b128 |"))
    assert a128.count("n/a") >= 2, a128


def test_kernel_benchmarks_pass():
    pytest.importorskip("pytest_benchmark")
    proc = _run(["-m", "pytest", "benchmarks/test_kernels.py", "--benchmark-disable", "-q",
                 "-p", "no:cacheprovider"])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "passed" in proc.stdout


def test_profile_loop_smoke():
    pytest.importorskip("fastmlp._native.loop")
    proc = _run(["benchmarks/profile_loop.py", "--workload", "B b32", "--rows", "3000", "--epochs", "1"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = proc.stdout
    for phase in ("gather", "forward products", "forward", "loss", "backward products", "param grads", "update"):
        assert f"| {phase} | " in out, out
    assert "GEMM bound (NumPy, same shapes and threads, same run):" in out, out
    assert "matrix products inside the loop:" in out, out


def test_loop_threads_ab_smoke():
    _loop = pytest.importorskip("fastmlp._native.loop")
    from fastmlp._native import gemm as _gemm
    from fastmlp.backends import cython_backend  # noqa: F401 - chooses the BLAS the kernels call

    proc = _run(["benchmarks/loop_threads_ab.py", "--workload", "A b32", "--rows", "2000", "--repeats", "1"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip()
            for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line}
    assert set(rows) >= {"split loop", "split loop, BLAS products", "one-thread loop", "GEMM bound"}, proc.stdout
    assert rows["one-thread loop"] == "1", proc.stdout
    if _loop._HAVE_LOOP_THREADS and _gemm.blas_name() != "scipy":
        assert rows["split loop"] == ("2, packed" if _gemm._HAVE_PACKED_GEMM else "2"), proc.stdout
        assert rows["split loop, BLAS products"] == "2", proc.stdout


def test_diagnostics_cost_smoke():
    pytest.importorskip("fastmlp._native.loop")
    proc = _run(["benchmarks/diagnostics_cost.py", "--rows", "1024", "--repeats", "1"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("cython")]
    assert len(line) == 1 and "every 16th:" in line[0], proc.stdout


def test_thread_policy_smoke():
    pytest.importorskip("fastmlp._native.loop")
    proc = _run(["benchmarks/thread_policy.py", "--rows", "512", "--repeats", "1", "--nets", "2"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("| 64-64-10 |")
             or line.startswith("| 16-512-2 |")]
    assert len(lines) == 2, proc.stdout


def test_packgemm_kernel_harness(tmp_path):
    # benchmarks/packgemm_kernel.c builds with the compiler that built the extension and times
    # the kernel of this build's instruction set, with every product correct
    import sysconfig

    _kernels = pytest.importorskip("fastmlp._native.gemm")

    cc = (sysconfig.get_config_var("CC") or "cc").split()
    exe = tmp_path / "pk"
    build = subprocess.run([*cc, "-O2", "-march=native", "-I", str(ROOT / "fastmlp" / "_native"),
                            str(ROOT / "benchmarks" / "packgemm_kernel.c"), "-o", str(exe), "-lm"],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    if not _kernels._HAVE_PACKED_GEMM:  # pragma: no cover - a CPU without AVX2 and FMA
        assert proc.returncode == 1 and "no packed-operand kernels" in proc.stdout
        return
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"tiles: {_kernels._PACKED_GEMM_ISA}" in proc.stdout, proc.stdout
    rows = [line for line in proc.stdout.splitlines() if "GFLOP/s  max error" in line]
    assert len(rows) == 7, proc.stdout
    for line in rows:
        assert float(line.split("GFLOP/s")[0].split()[-1]) > 0, line
        assert float(line.rsplit("max error", 1)[1]) < 1e-3, line


def test_compare_suite_smoke(tmp_path):
    # the broader suite (benchmarks/suite.py) at tiny sizes: every row, the peak, the planner's cost
    proc = _run(["benchmarks/compare.py", "--smoke", "--suite-only"], env={"FASTMLP_CACHE_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = proc.stdout
    assert "| workload | rows | fastmlp s | PyTorch s | GEMM bound s | limit s |" in out, out
    for row in ("wide b256 (float32)", "deep BN+Dropout b256 (float32)", "A f64 b128 (float64)",
                "predict A 60k (float32)"):
        line = next((ln for ln in out.splitlines() if ln.startswith(f"| {row} |")), None)
        assert line is not None, f"row {row!r} missing:\n{out}"
        assert "n/a | n/a" not in line, line
    assert "FMA peak" in out and "planner cost (A b128" in out, out
