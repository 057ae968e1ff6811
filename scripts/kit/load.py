"""The load generators (wrk, h2load, oha): one run against a server, and its figures."""

import json
import re
import statistics
import subprocess
import tempfile

def parse_duration_us(s):
    m = re.match(r"([\d.]+)(us|ms|s|m)", s)
    if not m:
        return None
    v, unit = float(m.group(1)), m.group(2)
    return v * {"us": 1, "ms": 1e3, "s": 1e6, "m": 60e6}[unit]


def generate(args, cmd, server, path, headers, gen_pin, extra=()):
    """Runs a load generator's `cmd` against server's `path` with `headers` and `extra` arguments
    (pinned to gen_pin's cores); its standard output."""
    cmd = cmd + list(extra)
    for k, v in headers.items():
        cmd = cmd + ["-H", f"{k}: {v}"]
    cmd = cmd + [f"http://{server.addr}{path}"]
    if gen_pin:
        cmd = ["taskset", "-c", gen_pin] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 60).stdout


def run_wrk(args, server, path, headers, gen_pin):
    cmd = ["wrk", "-t", str(args.threads), "-c", str(args.connections), "-d", f"{args.duration}s", "--latency"]
    out = generate(args, cmd, server, path, headers, gen_pin)
    res = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    total = re.search(r"(\d+) requests in", out)
    res["requests"] = int(total.group(1)) if total else 0
    for pct, key in [("50%", "p50_us"), ("99%", "p99_us")]:
        m = re.search(rf"^\s+{re.escape(pct)}\s+(\S+)", out, re.M)
        res[key] = parse_duration_us(m.group(1)) if m else None
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non2xx"] = int(non2xx.group(1)) if non2xx else 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["errors"] = sum(int(x) for x in sock.groups()) if sock else 0
    return res


def run_h2load(args, server, path, headers, gen_pin, extra=()):
    """h2load for args.duration; `extra`: more of its arguments (`-d FILE` to POST a body)."""
    with tempfile.NamedTemporaryFile(suffix=".log") as lf:
        cmd = ["h2load", "-D", str(args.duration), "-c", str(args.connections), "-m", str(args.streams),
               "-t", str(args.threads), "--log-file", lf.name]
        out = generate(args, cmd, server, path, headers, gen_pin, extra)
        lat, statuses = [], {}
        with open(lf.name) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3:
                    statuses[parts[1]] = statuses.get(parts[1], 0) + 1
                    lat.append(int(parts[2]))
    res = {"rps": float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))}
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    res["requests"] = int(done.group(1)) if done else len(lat)
    res["errors"] = (int(done.group(3)) + int(done.group(4))) if done else 0
    lat.sort()
    res["p50_us"] = lat[len(lat) // 2] if lat else None
    res["p99_us"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None
    res["statuses"] = statuses
    res["non2xx"] = sum(n for s, n in statuses.items() if not s.startswith("2"))
    return res


def run_oha(args, server, path, headers, gen_pin):
    cmd = ["oha", "-z", f"{args.duration}s", "-c", str(args.connections), "--no-tui", "--output-format", "json"]
    out = json.loads(generate(args, cmd, server, path, headers, gen_pin))
    summary = out["summary"]
    pct = out.get("latencyPercentiles", {})
    codes = out.get("statusCodeDistribution", {})
    return {
        "rps": summary["requestsPerSec"],
        "requests": sum(codes.values()),
        "p50_us": pct.get("p50", 0) * 1e6,
        "p99_us": pct.get("p99", 0) * 1e6,
        "non2xx": sum(n for s, n in codes.items() if not s.startswith("2")),
        "errors": sum(out.get("errorDistribution", {}).values()),
    }


def run_oha_rate(args, server, path, headers, gen_pin, rate):
    """oha at a fixed rate (-q), latency corrected; the same result fields as loadtest.run_wrk."""
    cmd = ["oha", "-z", f"{args.duration}s", "-c", str(args.connections), "-q", str(rate),
           "--latency-correction", "--no-tui", "--output-format", "json"]
    out = json.loads(generate(args, cmd, server, path, headers, gen_pin))
    pct = out.get("latencyPercentiles", {})
    codes = out.get("statusCodeDistribution", {})
    return {
        "rps": out["summary"]["requestsPerSec"],
        "requests": sum(codes.values()),
        "p50_us": pct.get("p50", 0) * 1e6,
        "p99_us": pct.get("p99", 0) * 1e6,
        # Errors count too, but for the requests oha itself cancels at the end of the run.
        "non2xx": sum(n for s, n in codes.items() if not s.startswith("2")) + sum(
            n for e, n in out.get("errorDistribution", {}).items() if e != "aborted due to deadline"),
    }


TOOLS = {"wrk": run_wrk, "h2load": run_h2load, "oha": run_oha}


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt_us(us):
    if us is None:
        return "–"
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def svg_chart(summary, scenarios, servers, path):
    """Two grouped bar charts (requests/s and p99), drawn by hand: no dependencies."""
    colors = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1"]
    bar_w, gap, group_gap, chart_h, top, left = 18, 2, 28, 220, 40, 70
    group_w = len(servers) * (bar_w + gap) + group_gap
    width = left + len(scenarios) * group_w + 160
    height = 2 * (chart_h + top + 60)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">',
             f'<rect width="{width}" height="{height}" fill="white"/>']
    for panel, (metric, title, scale) in enumerate([("rps", "requests/s (median)", 1),
                                                    ("p99_us", "p99 latency (ms, median)", 1e-3)]):
        y0 = panel * (chart_h + top + 60) + top
        vals = [summary.get(sc, {}).get(sv, {}).get(metric) for sc in scenarios for sv in servers]
        vmax = max([v * scale for v in vals if v] or [1])
        parts.append(f'<text x="{left}" y="{y0 - 15}" font-size="13" font-weight="bold">{title}</text>')
        parts.append(f'<line x1="{left}" y1="{y0 + chart_h}" x2="{width - 150}" y2="{y0 + chart_h}" stroke="#333"/>')
        for t in range(5):
            v = vmax * t / 4
            y = y0 + chart_h - chart_h * t / 4
            parts.append(f'<text x="{left - 5}" y="{y + 4}" text-anchor="end">{v:,.0f}</text>'
                         if vmax > 10 else f'<text x="{left - 5}" y="{y + 4}" text-anchor="end">{v:.2f}</text>')
            parts.append(f'<line x1="{left}" y1="{y}" x2="{width - 150}" y2="{y}" stroke="#eee"/>')
        for gi, sc in enumerate(scenarios):
            gx = left + 10 + gi * group_w
            for si, sv in enumerate(servers):
                v = summary.get(sc, {}).get(sv, {}).get(metric)
                if not v:
                    continue
                h = chart_h * (v * scale) / vmax
                x = gx + si * (bar_w + gap)
                parts.append(f'<rect x="{x}" y="{y0 + chart_h - h:.1f}" width="{bar_w}" height="{h:.1f}" '
                             f'fill="{colors[si % len(colors)]}"><title>{sv} {sc}: {v * scale:,.2f}</title></rect>')
            parts.append(f'<text x="{gx + (group_w - group_gap) / 2}" y="{y0 + chart_h + 15}" '
                         f'text-anchor="middle">{sc}</text>')
        for si, sv in enumerate(servers):
            ly = y0 + 10 + si * 16
            parts.append(f'<rect x="{width - 140}" y="{ly}" width="12" height="12" fill="{colors[si % len(colors)]}"/>')
            parts.append(f'<text x="{width - 122}" y="{ly + 10}">{sv}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts))
