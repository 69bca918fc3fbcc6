"""Run the fertk CLI in this process and record what it cost: `probe.py OUT.json -- synth ...`.

The command is the real `fertk` command line (`fertk.cli.main`); at exit (normal, error, or the
driver's SIGTERM on a stage timeout) OUT.json gets the process's wall and CPU seconds, peak host
RSS and, on CUDA, torch's peak allocated / reserved GPU memory and the device's free memory.
"""

from __future__ import annotations

import atexit
import json
import os
import resource
import signal
import sys
import time
from typing import Any

STARTED = time.perf_counter()


def _usage() -> dict[str, Any]:
    usage: dict[str, Any] = {
        "wall_s": round(time.perf_counter() - STARTED, 3),
        "cpu_s": round(time.process_time(), 3),
        "host_rss_peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                free, total = torch.cuda.mem_get_info()
                usage["gpu"] = {
                    "torch_peak_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                    "torch_peak_reserved_mib": round(torch.cuda.max_memory_reserved() / 2**20, 1),
                    "device_used_mib_at_exit": round((total - free) / 2**20, 1),
                    "device_total_mib": round(total / 2**20, 1),
                }
        except Exception as exc:  # noqa: BLE001 - memory facts are best effort at exit
            usage["gpu"] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
    return usage


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[2] != "--":
        sys.stderr.write("usage: probe.py OUT.json -- <fertk arguments>\n")
        raise SystemExit(2)
    out, args = sys.argv[1], sys.argv[3:]

    def write() -> None:
        tmp = f"{out}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"argv": args, **_usage()}, fh)
        os.replace(tmp, out)

    atexit.register(write)
    # A stage timeout sends SIGTERM: leave through SystemExit so the usage is still written.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    from fertk.cli import main as fertk_main

    sys.argv = ["fertk", *args]
    fertk_main()


if __name__ == "__main__":
    main()
