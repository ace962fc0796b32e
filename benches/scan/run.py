#!/usr/bin/env python3
"""`keygate scan` beside detect-secrets, in one run (issue 33; docs/scan.md
"Benchmark"):

    python3 benches/scan/run.py [--keep] [--material DIR] [--keygate BIN]
                                [--runs N] [--no-detect-secrets] [--ds-share F]
                                [--results FILE]

1. builds target/release/keygate (`cargo build --release --bin keygate`;
   `--keygate BIN` uses that binary instead);
2. installs detect-secrets (pinned) from PyPI into a venv under the
   bench's temp dir, unless `detect-secrets` is on PATH;
3. writes the material with generate.py (SCAN_BENCH_SCALE=0.01 for a quick
   try; `--material DIR` reuses one kept with `--keep`) and reads it once
   so every tool starts from a warm page cache;
4. times `keygate scan --json --no-ignore TREE` (`--runs` times, the median
   kept), `detect-secrets scan --all-files` in TREE (once; `--ds-share 0.05`
   gives it 5 % of the tree's folders, and keygate those again), and, when the
   binary has it, `keygate scan --git --json REPO` (detect-secrets has no
   history mode): wall time, bytes per second, CPU time and maximum RSS
   (/usr/bin/time -v);
5. scores each against the manifest: recall (a seeded key counts as found
   when a finding is at its path and line — for the history, its commit,
   path and line) and false positives (findings at no seeded place);
6. prints one table and writes the figures as JSON (`--results`, default
   scan-bench-results.json in the current directory), then removes its temp
   dir unless `--keep`.

keygate runs with no config and no vault (every finding reads `unknown`):
naming a finding against a vault is one MAC per finding, not measured here.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
DETECT_SECRETS = "detect-secrets==1.5.0"


def log(message):
    print(f"[scan-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def keygate_binary(args):
    if args.keygate:
        return Path(args.keygate).resolve()
    log("cargo build --release --bin keygate")
    subprocess.run(["cargo", "build", "--release", "--bin", "keygate"], cwd=REPO_ROOT, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO_ROOT / "target"))
    return (target / "release" / "keygate").resolve()


def detect_secrets_binary(work):
    found = shutil.which("detect-secrets")
    if found:
        return Path(found)
    venv = work / "venv"
    log(f"installing {DETECT_SECRETS} into {venv}")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                    DETECT_SECRETS], check=True)
    return venv / "bin" / "detect-secrets"


def timed(name, argv, cwd, out_path, env=None, ok=(0,)):
    """Runs `argv` under /usr/bin/time -v, stdout to `out_path`: wall
    seconds, CPU seconds (user + system, children included), max RSS."""
    time_file = out_path.with_suffix(".time")
    wrapper = ["/usr/bin/time", "-v", "-o", str(time_file)] if Path("/usr/bin/time").exists() else []
    shown = [str(a) for a in argv[:6]] + ([f"… ({len(argv) - 6} more paths)"] if len(argv) > 6 else [])
    log(f"{name}: {' '.join(shown)}")
    start = time.monotonic()
    with open(out_path, "wb") as out, open(out_path.with_suffix(".err"), "wb") as err:
        code = subprocess.run(wrapper + [str(a) for a in argv], cwd=cwd, stdout=out, stderr=err, env=env).returncode
    wall = time.monotonic() - start
    if code not in ok:
        sys.exit(f"{name} exited {code}: see {out_path.with_suffix('.err')}")
    run = {"wall_s": round(wall, 3), "exit": code}
    if wrapper:
        text = time_file.read_text()
        field = lambda label: float(re.search(re.escape(label) + r": ([\d.]+)", text).group(1))
        run["cpu_s"] = round(field("User time (seconds)") + field("System time (seconds)"), 2)
        run["max_rss_mib"] = round(field("Maximum resident set size (kbytes)") / 1024, 1)
    log(f"{name}: {run}")
    return run


def median_run(runs):
    """The run of median wall time, with every wall time beside it."""
    ordered = sorted(runs, key=lambda r: r["wall_s"])
    keep = dict(ordered[(len(ordered) - 1) // 2])
    keep["walls_s"] = [r["wall_s"] for r in runs]
    return keep


def warm(material):
    """Reads every file and every object once, so no tool pays for the disk."""
    for path in (material / "tree").rglob("*"):
        if path.is_file():
            path.read_bytes()
    subprocess.run(["git", "-C", str(material / "history"), "cat-file", "--batch-all-objects", "--batch"],
                   stdout=subprocess.DEVNULL, check=True)


def keygate_findings(output, root_prefix):
    """keygate's JSON findings as (place, label): place (path, line) in the
    tree, or (commit, path, line) in the history."""
    rows = []
    for f in json.loads(output.read_text() or "[]"):
        label = f"{f['provider']} {f['what']}"
        if "path" in f and "line" in f:
            path, line = f["path"], int(f["line"])
        else:
            path, line, _ = f["location"].rsplit(":", 2)
            line = int(line)
        if f.get("commit"):
            rows.append(((f["commit"], path, line), label, f))
            continue
        if path.startswith(root_prefix):
            path = path[len(root_prefix):]
        rows.append(((path, line), label, f))
    return rows


def detect_secrets_findings(output):
    rows = []
    for path, found in json.loads(output.read_text())["results"].items():
        for f in found:
            rows.append(((path.removeprefix("./"), int(f["line_number"])), f["type"], f))
    return rows


def score(rows, seeded, bait_at=None, labels=True):
    """Recall and false positives of one tool's findings against the
    seeded places."""
    hit, by_shape, wrong_label, false = set(), {}, [], []
    for place, label, finding in rows:
        record = seeded.get(place)
        if record is None:
            false.append((place, label))
            continue
        hit.add(place)
        column = finding.get("column", record["column"]) if labels else record["column"]
        if labels and (label != f"{record['provider']} {record['what']}" or column != record["column"]):
            wrong_label.append({"place": list(place), "found": label, "column": column,
                                "seeded": record["shape"], "seeded_column": record["column"]})
    by_context = {}
    for place, record in seeded.items():
        for tally, name in ((by_shape, record["shape"]), (by_context, record["context"])):
            counts = tally.setdefault(name, [0, 0])
            counts[1] += 1
            counts[0] += place in hit
    missed = [{"place": list(p), "shape": r["shape"], "context": r["context"], "fate": r.get("fate")}
              for p, r in seeded.items() if p not in hit]
    false_by = {}
    for place, label in false:
        where = (bait_at or {}).get(place[-2:], "corpus text")
        false_by.setdefault(f"{label} @ {where}", []).append(list(place))
    return {
        "seeded": len(seeded),
        "found": len(hit),
        "recall": round(len(hit) / len(seeded), 4) if seeded else None,
        "findings": len(rows),
        "false_positives": len(false),
        "false_positive_lines": len({p for p, _ in false}),
        "false_positives_by_label_and_bait": {k: {"count": len(v), "first": v[:5]} for k, v in
                                             sorted(false_by.items(), key=lambda kv: -len(kv[1]))},
        "missed": missed,
        "wrong_label": wrong_label,
        "recall_by_shape": {k: f"{v[0]}/{v[1]}" for k, v in sorted(by_shape.items())},
        "recall_by_context": {k: f"{v[0]}/{v[1]}" for k, v in sorted(by_context.items())},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (material, outputs, venv)")
    parser.add_argument("--material", help="a material dir made before (tree/, history/, manifest.json)")
    parser.add_argument("--keygate", help="this keygate binary instead of building one")
    parser.add_argument("--runs", type=int, default=int(os.environ.get("SCAN_BENCH_RUNS", "3")),
                        help="keygate runs per mode (the median is kept)")
    parser.add_argument("--no-detect-secrets", action="store_true")
    parser.add_argument("--ds-share", type=float, default=float(os.environ.get("SCAN_BENCH_DS_SHARE", "1")),
                        help="the share of the tree detect-secrets reads (and keygate again): 0.05 = 5 %%")
    parser.add_argument("--results", default="scan-bench-results.json")
    args = parser.parse_args()

    keygate = keygate_binary(args)
    work = Path(tempfile.mkdtemp(prefix="keygate-scan-bench-", dir=os.environ.get("SCAN_BENCH_TMP")))
    log(f"work dir {work}{' (kept)' if args.keep else ''}")
    try:
        results = bench(args, keygate, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    Path(args.results).write_text(json.dumps(results, indent=1))
    print_table(results)
    log(f"results in {args.results}")


def bench(args, keygate, work):
    results = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "host_cpus": os.cpu_count(),
               "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    results["keygate_version"] = subprocess.run([keygate, "--version"], capture_output=True,
                                                text=True).stdout.strip()
    ds = None
    if not args.no_detect_secrets:
        ds = detect_secrets_binary(work)
        results["detect_secrets_version"] = subprocess.run([ds, "--version"], capture_output=True,
                                                           text=True).stdout.strip()
    if args.material:
        material = Path(args.material).resolve()
    else:
        material = work / "material"
        log(f"generating into {material} (SCAN_BENCH_SCALE={os.environ.get('SCAN_BENCH_SCALE', '1')})")
        start = time.monotonic()
        subprocess.run([sys.executable, str(HERE / "generate.py"), str(material)], check=True)
        results["generate_s"] = round(time.monotonic() - start, 1)
    manifest = json.loads((material / "manifest.json").read_text())
    tree, history = manifest["tree"], manifest["history"]
    results["material"] = {
        "scale": manifest["scale"], "seed": manifest["seed"], "corpus_files": manifest["corpus_files"],
        "tree_files": tree["files"], "tree_bytes": tree["bytes"], "tree_keys": len(tree["keys"]),
        "tree_bait_lines": sum(tree["bait"].values()), "history_commits": history["commits"],
        "history_blobs": history["blobs"], "history_blob_bytes": history["blob_bytes"],
        "history_keys": len(history["keys"]),
    }
    log("warming the page cache")
    warm(material)
    out = work / "out"
    out.mkdir()
    # No config, no vault, no master key: nothing outside the material.
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")}
    seeded = {(k["path"], k["line"]): k for k in tree["keys"]}
    bait_at = {(p, l): kind for p, l, kind in tree["bait_at"]}
    tools = {}

    runs = [timed("keygate scan", [keygate, "scan", "--json", "--no-ignore", "tree"], material,
                  out / f"keygate-tree-{i}.json", env, ok=(0, 1)) for i in range(args.runs)]
    run = median_run(runs)
    run.update(score(keygate_findings(out / "keygate-tree-0.json", "tree/"), seeded, bait_at))
    run["mb_per_s"] = round(tree["bytes"] / run["wall_s"] / 1e6, 1)
    run["mb_per_cpu_s"] = round(tree["bytes"] / max(run.get("cpu_s", 0), 0.01) / 1e6, 1)
    tools["keygate scan (tree)"] = run

    if ds:
        # detect-secrets reads ~0.1-0.3 MB/s here: --ds-share gives it the
        # folders TOP/dNNN with NNN below share × 1000, and keygate the same
        # folders again, so the two rows read the same bytes.
        share = args.ds_share
        dirs = sorted(str(d.relative_to(material / "tree")) for d in (material / "tree").glob("*/d*")
                      if int(d.name[1:]) < round(share * 1000))
        in_share = lambda path: int(path.split("/")[1][1:]) < round(share * 1000)
        share_bytes = sum(f.stat().st_size for d in dirs for f in (material / "tree" / d).rglob("*")
                          if f.is_file())
        share_seeded = {p: k for p, k in seeded.items() if in_share(p[0])}
        suffix = "" if share == 1 else f" ({100 * share:g} % of the tree)"
        results["ds_share"] = {"share": share, "folders": len(dirs), "bytes": share_bytes,
                               "seeded": len(share_seeded)}
        if share != 1:
            runs = [timed("keygate scan (share)", [keygate, "scan", "--json", "--no-ignore"]
                          + [f"tree/{d}" for d in dirs], material, out / f"keygate-share-{i}.json", env,
                          ok=(0, 1)) for i in range(args.runs)]
            run = median_run(runs)
            run.update(score(keygate_findings(out / "keygate-share-0.json", "tree/"), share_seeded, bait_at))
            run["mb_per_s"] = round(share_bytes / run["wall_s"] / 1e6, 1)
            run["mb_per_cpu_s"] = round(share_bytes / max(run.get("cpu_s", 0), 0.01) / 1e6, 1)
            tools[f"keygate scan{suffix}"] = run
        run = timed("detect-secrets scan", [ds, "scan", "--all-files"] + dirs, material / "tree",
                    out / "detect-secrets-tree.json")
        run.update(score(detect_secrets_findings(out / "detect-secrets-tree.json"), share_seeded, bait_at,
                         labels=False))
        run["mb_per_s"] = round(share_bytes / run["wall_s"] / 1e6, 2)
        run["mb_per_cpu_s"] = round(share_bytes / max(run.get("cpu_s", 0), 0.01) / 1e6, 2)
        tools[f"detect-secrets scan --all-files{suffix}"] = run

    helptext = subprocess.run([keygate, "scan", "--help"], capture_output=True, text=True).stdout
    if "--git" in helptext:
        seeded_git = {(k["commit"], k["path"], k["line"]): k for k in history["keys"]}
        runs = [timed("keygate scan --git", [keygate, "scan", "--git", "--json", "history"], material,
                      out / f"keygate-git-{i}.json", env, ok=(0, 1)) for i in range(args.runs)]
        run = median_run(runs)
        rows = keygate_findings(out / "keygate-git-0.json", "")
        run.update(score(rows, seeded_git))
        run["findings_without_commit"] = sum(1 for p, _, _ in rows if len(p) == 2)
        run["mb_per_s"] = round(history["blob_bytes"] / run["wall_s"] / 1e6, 1)
        run["mb_per_cpu_s"] = round(history["blob_bytes"] / max(run.get("cpu_s", 0), 0.01) / 1e6, 1)
        tools["keygate scan --git (history)"] = run
    else:
        results["history"] = "this keygate has no `scan --git`: history not measured"
    results["tools"] = tools
    # Other work on the machine shares its cores: say how busy it was.
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return results


def print_table(results):
    m = results["material"]
    print(f"\nmaterial: {m['tree_files']:,} files, {m['tree_bytes'] / 2**30:.2f} GiB, "
          f"{m['tree_keys']:,} seeded keys, {m['tree_bait_lines']:,} bait lines; history: "
          f"{m['history_commits']:,} commits, {m['history_blobs']:,} blobs "
          f"({m['history_blob_bytes'] / 2**20:.0f} MiB), {m['history_keys']} seeded keys")
    print(f"{results['keygate_version']}; {results.get('detect_secrets_version', 'detect-secrets not run')}; "
          f"{results['host_cpus']} CPUs, load average {results['load_average_at_start'][0]} at the start, "
          f"{results['load_average_at_end'][0]} at the end; {results['date']}\n")
    print("| tool | wall | MB/s | CPU | MB per CPU-s | max RSS | recall | false positives (lines) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results["tools"].items():
        print(f"| {name} | {r['wall_s']:.1f} s | {r['mb_per_s']} | {r.get('cpu_s', '?')} s | "
              f"{r.get('mb_per_cpu_s', '?')} | "
              f"{r.get('max_rss_mib', '?')} MiB | {r['found']}/{r['seeded']} ({100 * r['recall']:.1f} %) | "
              f"{r['false_positives']} ({r['false_positive_lines']}) |")
    if "history" in results:
        print(f"\n{results['history']}")
    for name, r in results["tools"].items():
        print(f"\n{name}: recall by shape {r['recall_by_shape']}")
        print(f"  by context {r['recall_by_context']}")
        for label, v in list(r["false_positives_by_label_and_bait"].items())[:12]:
            print(f"  false positive: {label}: {v['count']}")
        for miss in r["missed"][:10]:
            print(f"  missed: {miss}")
        for wrong in r["wrong_label"][:10]:
            print(f"  wrong label: {wrong}")


if __name__ == "__main__":
    main()
