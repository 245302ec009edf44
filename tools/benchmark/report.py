"""The ``mobiledense bench`` table as text and as Markdown, from the rows' dicts."""

from __future__ import annotations

from typing import Any

__all__ = ["format_markdown", "format_table", "table_rows"]


def _fmt_ms(t: dict[str, Any] | None) -> str:
    return "-" if t is None else f"{1e3 * t['median']:.1f} [{1e3 * t['p90']:.1f}]"


def _speedup(row: dict[str, Any]) -> str:
    return "-" if row["speedup"] is None else f"x{row['speedup']:.2f}"


def _check(row: dict[str, Any]) -> str:
    return "ok" if row["check"].get("passed") else "FAILED"


def _eager(row: dict[str, Any]) -> str:
    eager = row["info"].get("ours_eager")
    return "-" if eager is None else f"x{eager['median'] / row['ours']['median']:.2f}"


def _size(row: dict[str, Any]) -> tuple[str, str]:
    info = row["info"]
    params = f"{info['params'] / 1e6:.2f}" if "params" in info else "-"
    return params, (f"{info['madds'] / 1e9:.2f}" if "madds" in info else "-")


_HEADER = ("section", "name", "device", "N", "params M", "MAdds G", "ours ms [p90]", "reference ms [p90]",
           "speed-up", "ours img/s", "ref img/s", "vs our eager", "check")


def table_rows(sections: dict[str, dict[str, Any]]) -> list[tuple[str, ...]]:
    out = []
    for name, sec in sections.items():
        for r in sec.get("rows", []):
            ref = r["reference"]
            out.append((name, r["name"], r["device"], str(r["batch"]), *_size(r), _fmt_ms(r["ours"]),
                        _fmt_ms(ref), _speedup(r), f"{r['ours']['images_per_s']:.1f}",
                        "-" if ref is None else f"{ref['images_per_s']:.1f}", _eager(r), _check(r)))
        if "skipped" in sec:
            out.append((name, f"skipped: {sec['skipped']}") + ("",) * (len(_HEADER) - 2))
    return out


def format_table(sections: dict[str, dict[str, Any]]) -> str:
    rows = [_HEADER] + table_rows(sections)
    widths = [max(len(r[i]) for r in rows) for i in range(len(_HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def format_markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    load = " -> ".join(f"{v[0]:.1f}" for v in (m.get("load_average"), m.get("load_average_end")) if v)
    head = (f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, {m['threads']} thread(s), "
            f"1-min load average {load or 'n/a'} (start -> end); torch {m['torch']}, "
            f"torchvision {m['torchvision']}, onnxruntime {m['onnxruntime']}"
            + (f", CUDA: {m['cuda']}" if m.get("cuda") else "") + ".\n\n")
    rows = [_HEADER] + table_rows(doc["sections"])
    md = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    md += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows[1:]]
    return head + "\n".join(md) + "\n"
