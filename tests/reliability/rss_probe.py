"""Run a ``mobiledense`` CLI command in-process and record resident memory per image read.

Usage: ``python rss_probe.py OUT.json -- eval det --checkpoint ...``. Every image the command
reads (``read_image_rgb``, the one entry point of both the datasets and ``predict``) appends
``VmRSS`` in MiB to a list; the JSON holds that list, the exit status and the peak RSS
(``VmHWM``). Used by ``test_memory.py`` and for the documented 5000-image measurement.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rss_mib(field: str = "VmRSS") -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, MiB. VmHWM belongs to the address space
    ``exec`` made, unlike ``ru_maxrss``, which a child inherits from the parent it was forked from."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def main() -> int:
    out, sep, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    assert sep == "--", "usage: rss_probe.py OUT.json -- COMMAND ..."
    import mobiledense.datasets as ds
    import mobiledense.datasets.coco as coco
    from mobiledense.tools.cli import main as cli_main

    samples: list[float] = []
    original = ds.read_image_rgb

    def reading(path):  # noqa: ANN001, ANN202
        samples.append(rss_mib())
        return original(path)

    coco.read_image_rgb = ds.read_image_rgb = reading  # datasets and predict_* look it up at call time
    rc = cli_main(argv)
    peak = rss_mib("VmHWM")
    Path(out).write_text(json.dumps({"rc": rc, "rss_mib": samples, "peak_rss_mib": peak, "end_rss_mib": rss_mib()}))
    return rc


if __name__ == "__main__":
    sys.exit(main())
