"""Run every benchmark script in ``benchmarks/``; collect their numbers in ``benchmarks/results/latest.json``.

Each ``benchmarks/bench_*.py`` is a standalone script; this runner starts each as a subprocess with the same
Python, in the repository root, and

* passes ``--quick`` when ``--quick`` is given here and the script's ``--help`` lists it (scripts without a
  quick mode run at their default size);
* passes ``--out FILE`` (or ``--json FILE``, whichever the script's ``--help`` lists) so the script writes its
  numbers to ``benchmarks/results/<script>.json``;
* echoes the script's output (its table) as it runs.

``latest.json`` holds, per script: the command, exit code, wall seconds, the script's JSON (``null`` when it
writes none) and the last lines of its output; plus the date, the load average before and after, the Python
and the CPU count.  A failing script is reported and the others still run; the exit code is 1 if any failed.

    .venv/bin/python benchmarks/run_all.py [--quick] [--only bench_sweep --only bench_scale] [--timeout 1800]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
#: Run order (cheap first); any other ``bench_*.py`` found is run after these, alphabetically.
ORDER = (
    "bench_manifest", "bench_scale", "bench_scoring", "bench_forward", "bench_sweep", "bench_sharpness",
    "bench_train",
)  # fmt: skip
TAIL_LINES = 60


def discover(only: list[str] | None = None) -> list[Path]:
    """Benchmark scripts present in ``benchmarks/``, in :data:`ORDER` then alphabetically."""
    found = {p.stem: p for p in HERE.glob("bench_*.py")}
    names = [n for n in ORDER if n in found] + sorted(n for n in found if n not in ORDER)
    if only:
        wanted = [o.removesuffix(".py") for o in only]
        missing = [w for w in wanted if w not in found]
        if missing:
            raise SystemExit(f"no such benchmark: {', '.join(missing)} (found: {', '.join(names)})")
        names = [n for n in names if n in wanted]
    return [found[n] for n in names]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("COLUMNS", "130")
    return env


def options_of(script: Path, python: str) -> set[str]:
    """Long options the script's ``--help`` lists (empty when ``--help`` fails)."""
    try:
        out = subprocess.run(
            [python, str(script), "--help"], capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=120
        )
    except subprocess.TimeoutExpired:
        return set()
    return set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", out.stdout)) if out.returncode == 0 else set()


def command_for(script: Path, python: str, quick: bool, json_path: Path) -> list[str]:
    opts = options_of(script, python)
    cmd = [python, str(script)]
    if quick and "--quick" in opts:
        cmd.append("--quick")
    for flag in ("--out", "--json"):
        if flag in opts:
            cmd += [flag, str(json_path)]
            break
    return cmd


def run_one(script: Path, python: str, quick: bool, timeout: float) -> dict[str, Any]:
    """Run one script, echoing its output; return its record for ``latest.json``."""
    json_path = RESULTS / f"{script.stem}.json"
    json_path.unlink(missing_ok=True)
    cmd = command_for(script, python, quick, json_path)
    shown = " ".join(Path(c).name if i < 2 else c for i, c in enumerate(cmd))
    print(f"\n=== {script.stem}: {shown}", flush=True)
    lines: list[str] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    assert proc.stdout is not None
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        proc.kill()

    watchdog = threading.Timer(timeout, kill)
    watchdog.start()
    try:
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line.rstrip("\n"))
        code = proc.wait()
    finally:
        watchdog.cancel()
    timed_out = killed.is_set()
    secs = time.perf_counter() - t0
    result = None
    if json_path.is_file():
        try:
            result = json.loads(json_path.read_text())
        except json.JSONDecodeError as exc:
            lines.append(f"[run_all] could not read {json_path}: {exc}")
    status = "timed out" if timed_out else ("ok" if code == 0 else f"failed (exit {code})")
    print(f"=== {script.stem}: {status} in {secs:.1f} s", flush=True)
    return {
        "command": cmd[1:],
        "returncode": code,
        "status": status,
        "seconds": round(secs, 2),
        "result": result,
        "output_tail": lines[-TAIL_LINES:],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="pass --quick to the scripts that support it")
    ap.add_argument("--only", action="append", default=None, help="run only this script (repeatable)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per script before it is killed")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the scripts")
    args = ap.parse_args()

    RESULTS.mkdir(parents=True, exist_ok=True)
    scripts = discover(args.only)
    report: dict[str, Any] = {
        "created": dt.datetime.now().isoformat(timespec="seconds"),
        "quick": args.quick,
        "loadavg_before": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "benchmarks": {},
    }
    for script in scripts:
        report["benchmarks"][script.stem] = run_one(script, args.python, args.quick, args.timeout)
    report["loadavg_after"] = list(os.getloadavg())
    out = RESULTS / "latest.json"
    out.write_text(json.dumps(report, indent=2) + "\n")

    print("\nsummary")
    width = max((len(s.stem) for s in scripts), default=10)
    for name, rec in report["benchmarks"].items():
        has = "json" if rec["result"] is not None else "no json"
        print(f"  {name:<{width}}  {rec['status']:<18} {rec['seconds']:>8.1f} s  {has}")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0 if all(r["returncode"] == 0 for r in report["benchmarks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
