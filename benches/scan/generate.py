#!/usr/bin/env python3
"""The benchmark's material (issue 33): a large tree of real-looking source
and config text, and a long git history, with keys of every kind keygate
knows seeded at known places among bait that only looks like keys.

    python3 benches/scan/generate.py OUT_DIR

writes OUT_DIR/tree/ (default: at least 1 GiB in at least 100,000 files),
OUT_DIR/history/ (a git repository of at least 10,000 commits, made with
`git fast-import`) and OUT_DIR/manifest.json (every seeded key: path and
line, and for the history the commit). SCAN_BENCH_SCALE=0.01 makes
everything a hundredth as large; SCAN_BENCH_SEED (default 33) picks the
output; SCAN_BENCH_CORPUS (default ~/.cargo/registry/src) is the text it
mixes. Same seed and corpus, same output.

The keys are made here at run time from a seeded generator: no key-shaped
literal is written in this file, and none of them was ever issued.
"""

import base64
import json
import math
import os
import random
import re
import string
import subprocess
import sys
import zlib
from pathlib import Path

ALNUM = string.ascii_letters + string.digits
TOKEN = ALNUM + "-_"
HEX = "0123456789abcdef"
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# "OpenAI" in base64, which OpenAI puts in the middle of its keys.
MARKER = "T3Blb" + "kFJ"

# Corpus files that already hold something key-shaped are left out, so
# every key in the output is one this script put there.
KEYISH = re.compile(
    r"(?<![A-Za-z0-9_-])(sk-|xai-|gsk_|AIza|kg_)[A-Za-z0-9_-]{16,}|" + MARKER
)
# Line breaks other than \n that some readers split on (str.splitlines):
# taken out of the corpus so every tool counts the same lines.
ODD_BREAKS = str.maketrans({c: " " for c in "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})
TEXT_SUFFIXES = {
    ".rs", ".toml", ".md", ".json", ".yml", ".yaml", ".h", ".c", ".txt",
    ".py", ".js", ".sh", ".html", ".css", ".proto", ".S", ".cfg", ".ini",
}


def rand(rng, alphabet, n):
    return "".join(rng.choices(alphabet, k=n))


def kg_checksum(random_part):
    """keygate's client-key checksum: CRC-32 of the 36 random characters,
    six base62 digits, most significant first (src/vault/client_key.rs)."""
    value = zlib.crc32(random_part.encode())
    out = []
    for _ in range(6):
        out.append(BASE62[value % 62])
        value //= 62
    return "".join(reversed(out))


def openai_body(rng):
    a, b = rng.choice([(58, 58), (58, 74), (74, 58), (74, 74)])
    return rand(rng, TOKEN, a) + MARKER + rand(rng, TOKEN, b)


def kg_key(rng):
    random_part = rand(rng, BASE62, 36)
    return "kg_" + random_part + kg_checksum(random_part)


# Every shape keygate must find: name -> (provider, what, maker). The
# provider and `what` are what `keygate scan --json` says of it.
SHAPES = {
    "openai-project": ("OpenAI", "project key", lambda r: "sk-proj-" + openai_body(r)),
    "openai-service-account": ("OpenAI", "service account key", lambda r: "sk-svcacct-" + openai_body(r)),
    "openai-admin": ("OpenAI", "admin key", lambda r: "sk-admin-" + openai_body(r)),
    "openai-legacy": ("OpenAI", "legacy key", lambda r: "sk-" + rand(r, ALNUM, 20) + MARKER + rand(r, ALNUM, 20)),
    "anthropic-api": ("Anthropic", "API key", lambda r: "sk-ant-api03-" + rand(r, TOKEN, 93) + "AA"),
    "anthropic-admin": ("Anthropic", "Admin API key", lambda r: "sk-ant-admin01-" + rand(r, TOKEN, 93) + "AA"),
    "xai": ("xAI", "API key", lambda r: "xai-" + rand(r, ALNUM, 80)),
    "openrouter": ("OpenRouter", "API key", lambda r: "sk-or-v1-" + rand(r, HEX, 64)),
    "groq": ("Groq", "API key", lambda r: "gsk_" + rand(r, ALNUM, 52)),
    "google": ("Google Gemini", "API key", lambda r: "AIza" + rand(r, TOKEN, 35)),
    "deepseek": ("DeepSeek", "API key", lambda r: "sk-" + rand(r, HEX, 32)),
    "keygate-client": ("keygate", "client key", kg_key),
}

ENV_NAMES = {
    "OpenAI": "OPENAI_API_KEY", "Anthropic": "ANTHROPIC_API_KEY", "xAI": "XAI_API_KEY",
    "OpenRouter": "OPENROUTER_API_KEY", "Groq": "GROQ_API_KEY", "Google Gemini": "GEMINI_API_KEY",
    "DeepSeek": "DEEPSEEK_API_KEY", "keygate": "KEYGATE_CLIENT_KEY",
}

# How a key sits on its line. {k} the key, {v} an environment variable name.
CONTEXTS = {
    "env": "{v}={k}",
    "shell-export": "export {v}='{k}'",
    "python": 'client = Client(api_key="{k}", timeout=30)',
    "yaml": "    api_key: {k}",
    "yaml-quoted": '  token: "{k}"',
    "json": '  "apiKey": "{k}",',
    "toml": 'api_key = "{k}"',
    "curl": 'curl -s https://api.example.com/v1/models -H "Authorization: Bearer {k}"',
    "prose": "Note: the key {k} was pasted here by mistake; rotate it.",
    "rust": '    let key = "{k}";',
    "javascript": "const apiKey = '{k}';",
    "comment": "# old key: {k}",
    "url": "https://api.example.com/v1/models?key={k}&alt=json",
}


def b64(rng, n):
    return base64.b64encode(rng.randbytes(n)).decode()


def b64url(data):
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def jwt_like(rng):
    head = b64url(b'{"alg":"HS256","typ":"JWT"}')
    body = b64url(b'{"sub":"%d","iat":%d}' % (rng.randrange(10**6), 1700000000 + rng.randrange(10**7)))
    return f"{head}.{body}.{b64url(rng.randbytes(32))}"


def bad_kg(rng):
    kg = kg_key(rng)
    return kg[:-1] + ("A" if kg[-1] != "A" else "B")


# Lines that look like keys and are not: type -> maker.
BAIT = {
    "uuid": lambda r: 'request_id = "%s"' % "-".join(rand(r, HEX, n) for n in (8, 4, 4, 4, 12)),
    "sha1": lambda r: f"commit {rand(r, HEX, 40)}",
    "sha256": lambda r: f'sha256 = "{rand(r, HEX, 64)}"',
    "base64-blob": lambda r: f'data = "{b64(r, r.randrange(48, 400))}"',
    "jwt-like": lambda r: f"Authorization: Bearer {jwt_like(r)}",
    "sk-prose": lambda r: "pip install scikit-learn (not sk-learn); the sk- prefix marks a secret key, sk-proj- a project key",
    "placeholder": lambda r: r.choice(["OPENAI_API_KEY=sk-...", "api_key: sk-" + "x" * 32, 'key = "YOUR_API_KEY"', "ANTHROPIC_API_KEY=sk-ant-api03-...", "GEMINI_API_KEY=AIza..."]),
    "kg-bad-checksum": lambda r: f"KEYGATE_CLIENT_KEY={bad_kg(r)}",
    "kg-wrong-length": lambda r: f"client = {kg_key(r)[:-2]}",
    "hex-in-word": lambda r: f"task-{rand(r, HEX, 32)} disk-{rand(r, HEX, 32)}",
    "sk-hex-wrong-length": lambda r: f"id = sk-{rand(r, HEX, r.choice([31, 33, 40]))}",
    "sk-hex-upper": lambda r: f"id = sk-{rand(r, HEX.upper(), 32)}",
    "openai-no-marker": lambda r: f"token = sk-proj-{rand(r, TOKEN, 140)}",
    "openai-legacy-short": lambda r: f"sk-{rand(r, ALNUM, 20)}{MARKER}{rand(r, ALNUM, 19)}",
    "anthropic-bad-end": lambda r: f"sk-ant-api03-{rand(r, TOKEN, 93)}AB",
    "xai-wrong-length": lambda r: f"xai-{rand(r, ALNUM, r.choice([79, 81]))}",
    "openrouter-upper": lambda r: f"sk-or-v1-{rand(r, HEX.upper(), 64)}",
    "groq-short": lambda r: f"gsk_{rand(r, ALNUM, 51)}",
    "google-short": lambda r: f"AIza{rand(r, TOKEN, 34)}",
    "key-in-longer-token": lambda r: f"x{SHAPES['xai'][2](r)} my{SHAPES['groq'][2](r)}",
}


BAIT_KINDS = sorted(BAIT)
# How many dNNN folders each top folder of the tree is split into.
SHARES = 1000


def load_corpus(root):
    """Text files under `root`, each as a list of lines ending in \\n,
    in a fixed order."""
    files = []
    for path in sorted(root.rglob("*")):
        if path.suffix not in TEXT_SUFFIXES or not path.is_file():
            continue
        try:
            if path.stat().st_size > 512 * 1024:
                continue
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if "\0" in text or KEYISH.search(text):
            continue
        lines = [l + "\n" for l in text.translate(ODD_BREAKS).split("\n")]
        if len(lines) >= 5:
            name = re.sub(r"[^A-Za-z0-9._-]", "_", path.name)
            files.append((name, lines))
    if not files:
        sys.exit(f"generate.py: no text files under {root} (set SCAN_BENCH_CORPUS)")
    return files


class Writer:
    """Makes file contents: corpus text, bait, seeded keys."""

    def __init__(self, rng, corpus):
        self.rng = rng
        self.corpus = corpus
        self.bait_counts = {}

    def text_lines(self, size):
        """Whole lines of corpus text, about `size` bytes."""
        rng, out, got = self.rng, [], 0
        while got < size:
            _, lines = rng.choice(self.corpus)
            i = rng.randrange(len(lines))
            while i < len(lines) and got < size:
                out.append(lines[i])
                got += len(lines[i])
                i += 1
        return out

    def compose(self, size, keys=(), bait_rate=0.6):
        """A file's text, the 1-based line of each key in `keys` (each
        `(key, line_text)`), and the bait spread in: `[(line, type)]`."""
        rng = self.rng
        lines = self.text_lines(size)
        inserts = []
        if rng.random() < bait_rate:
            for _ in range(rng.randint(1, 4)):
                kind = rng.choice(BAIT_KINDS)
                self.bait_counts[kind] = self.bait_counts.get(kind, 0) + 1
                inserts.append((rng.randint(0, len(lines)), BAIT[kind](rng) + "\n", kind))
        for n, (key, line) in enumerate(keys):
            inserts.append((rng.randint(0, len(lines)), line + "\n", n))
        inserts.sort(key=lambda t: t[0])
        out, at, where, bait = [], 0, [0] * len(keys), []
        for pos, line, what in inserts:
            out.extend(lines[at:pos])
            at = pos
            if isinstance(what, int):
                where[what] = len(out) + 1
            else:
                bait.append((len(out) + 1, what))
            out.append(line)
        out.extend(lines[at:])
        return "".join(out), where, bait


def seeded_line(rng, shape):
    """A new key of `shape` on a line of some context: (key, line, record)."""
    provider, what, make = SHAPES[shape]
    key = make(rng)
    context = rng.choice(sorted(CONTEXTS))
    line = CONTEXTS[context].format(k=key, v=ENV_NAMES[provider])
    column = line.index(key) + 1
    return key, line, {"shape": shape, "provider": provider, "what": what,
                       "context": context, "column": column, "key": key}


def make_tree(out, rng, writer, scale):
    """The tree: corpus files mixed with bait, keys in some of them."""
    min_files = max(200, math.ceil(105_000 * scale))
    min_bytes = max(2 << 20, math.ceil(1.08 * (1 << 30) * scale))
    mean = min_bytes / min_files
    sigma = 1.0
    mu = math.log(mean) - sigma * sigma / 2
    n_keys = max(3 * len(SHAPES), round(1200 * scale))
    # Which files get a key: spread evenly, a few with two.
    key_at = {}
    for n in range(n_keys):
        shape = sorted(SHAPES)[n % len(SHAPES)]
        key_at.setdefault(rng.randrange(min_files), []).append(shape)
    tops = sorted({name.split(".")[0].split("_")[0] or "src" for name, _ in writer.corpus})
    tops = rng.sample(tops, min(40, len(tops)))
    manifest, bait_at, files, total = [], [], 0, 0
    while files < min_files or total < min_bytes:
        i = files
        size = int(min(512 * 1024, max(200, rng.lognormvariate(mu, sigma))))
        shapes = key_at.get(i, [])
        if shapes and rng.random() < 0.2:
            # A small config file of its own: .env, YAML.
            name = f"svc{i}/" + rng.choice([".env", "config.yaml", "settings.json", "docker-compose.yml", ".env.production"])
            size = rng.randint(100, 800)
        else:
            name, _ = rng.choice(writer.corpus)
            stem, dot, ext = name.rpartition(".")
            name = f"{stem or ext}_{i}{dot}{ext if stem else ''}"
        # TOP/dNNN/…: run.py's --ds-share takes the dNNN below a bound.
        rel = f"{rng.choice(tops)}/d{i % SHARES:03d}/{name}"
        made = [seeded_line(rng, s) for s in shapes]
        text, lines, bait = writer.compose(size, [(k, l) for k, l, _ in made])
        bait_at.extend([rel, line, kind] for line, kind in bait)
        if rng.random() < 0.02:
            text = text.replace("\n", "\r\n")
        data = text.encode()
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        for (_, _, record), line in zip(made, lines):
            manifest.append({"path": rel, "line": line, **record})
        files += 1
        total += len(data)
    return {"files": files, "bytes": total, "keys": manifest, "bait_at": bait_at}


class FastImport:
    """A `git fast-import` stream, written as it is made."""

    def __init__(self, repo):
        subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
        self.repo = repo
        self.marks = repo / ".git" / "bench-marks"
        self.proc = subprocess.Popen(
            ["git", "fast-import", "--quiet", f"--export-marks={self.marks}"],
            cwd=repo, stdin=subprocess.PIPE)
        self.mark = 0

    def w(self, data):
        self.proc.stdin.write(data if isinstance(data, bytes) else data.encode())

    def blob_data(self, data):
        self.w(f"data {len(data)}\n")
        self.w(data)
        self.w(b"\n")

    def commit(self, ref, when, message, changes, parent=None):
        """`changes`: (path, bytes) to write, (path, None) to delete."""
        self.mark += 1
        self.w(f"commit {ref}\nmark :{self.mark}\n")
        self.w(f"author Bench Dev <dev@example.com> {when} +0000\n")
        self.w(f"committer Bench Dev <dev@example.com> {when} +0000\n")
        self.blob_data(message.encode())
        if parent:
            self.w(f"from :{parent}\n")
        for path, data in changes:
            if data is None:
                self.w(f"D {path}\n")
            else:
                self.w(f"M 100644 inline {path}\n")
                self.blob_data(data)
        self.w(b"\n")
        return self.mark

    def tag(self, name, mark, when):
        self.w(f"tag {name}\nfrom :{mark}\ntagger Bench Dev <dev@example.com> {when} +0000\n")
        self.blob_data(b"a release\n")

    def finish(self):
        self.proc.stdin.close()
        if self.proc.wait() != 0:
            sys.exit("generate.py: git fast-import failed")
        shas = {}
        for line in self.marks.read_text().splitlines():
            mark, sha = line.split()
            shas[int(mark[1:])] = sha
        self.marks.unlink()
        return shas


def make_history(repo, rng, writer, scale):
    """A linear `main` of many small commits, plus side branches and a tag
    on a commit no branch holds. Keys: some stay to the end, some are
    taken out later (history only), some live only on a side branch or
    under the tag. A file holding a key is not touched again until the key
    is taken out, so each key is in exactly one blob."""
    n_commits = max(200, math.ceil(10_000 * scale))
    n_files = max(100, math.ceil(2_000 * scale))
    n_keys = max(2 * len(SHAPES), round(240 * scale))
    shapes = sorted(SHAPES)
    fi = FastImport(repo)
    when = 1_700_000_000
    paths = []
    changes = []
    for i in range(n_files):
        name, _ = rng.choice(writer.corpus)
        path = f"pkg{i % 23}/mod{i % 97}/{i}_{name}"
        text, _, _ = writer.compose(rng.randint(500, 8000))
        changes.append((path, text.encode()))
        paths.append(path)
    last = fi.commit("refs/heads/main", when, "initial import\n", changes)
    key_commits = set(rng.sample(range(1, n_commits), n_keys))
    frozen = {}  # path -> index into keys, while a key is in it
    keys, removals = [], {}
    side = 0
    for c in range(1, n_commits):
        when += 600
        changes = []
        msg = f"change {c}\n"
        if c in key_commits:
            shape = shapes[len(keys) % len(shapes)]
            key, line_text, record = seeded_line(rng, shape)
            fate = rng.choices(["kept", "removed", "branch", "tag"], [4, 4, 1, 1])[0]
            path = f"conf/{len(keys)}/{rng.choice(['.env', 'settings.py', 'config.yaml', 'notes.md', 'main.rs'])}"
            text, (line,), _ = writer.compose(rng.randint(300, 4000), [(key, line_text)])
            record.update({"path": path, "line": line, "fate": fate})
            keys.append(record)
            if fate in ("branch", "tag"):
                side += 1
                # A tagged commit's own branch is deleted at the end: the tag
                # is the only ref left to it.
                ref = f"refs/heads/wip/try-{side}" if fate == "branch" else f"refs/bench/detached-{side}"
                mark = fi.commit(ref, when, f"try something {side}\n", [(path, text.encode())], parent=last)
                record["mark"] = mark
                if fate == "tag":
                    fi.tag(f"v0.{side}", mark, when)
                continue
            changes.append((path, text.encode()))
            record["commit_index"] = c
            if fate == "removed":
                removals.setdefault(rng.randint(c + 1, n_commits + 30), []).append((path, text))
            frozen[path] = len(keys) - 1
            msg = f"add config {len(keys)}\n"
        for path, text in removals.pop(c, []):
            # Taken out: the line goes, the rest of the file stays.
            lines = text.split("\n")
            key = keys[frozen.pop(path)]["key"]
            changes.append((path, "\n".join(l for l in lines if key not in l).encode()))
            msg = "remove a key that should not be here\n"
        for _ in range(rng.randint(1, 3)):
            r = rng.random()
            if r < 0.08:
                name, _ = rng.choice(writer.corpus)
                path = f"pkg{rng.randrange(23)}/new/{c}_{name}"
                paths.append(path)
            else:
                path = rng.choice(paths)
            if path in frozen or any(p == path for p, _ in changes):
                continue
            if r > 0.97 and len(paths) > 10:
                paths.remove(path)
                changes.append((path, None))
            else:
                text, _, _ = writer.compose(rng.randint(500, 8000))
                changes.append((path, text.encode()))
        last = fi.commit("refs/heads/main", when, msg, changes, parent=last)
        for k in keys:
            if k.get("commit_index") == c:
                k["mark"] = last
    # Removals due after the last commit: the key stays.
    for due in removals.values():
        for path, _ in due:
            keys[frozen[path]]["fate"] = "kept"
    shas = fi.finish()
    refs = subprocess.run(["git", "-C", str(repo), "for-each-ref", "--format=%(refname)", "refs/bench/"],
                          check=True, capture_output=True, text=True).stdout.split()
    for ref in refs:
        subprocess.run(["git", "-C", str(repo), "update-ref", "-d", ref], check=True)
    subprocess.run(["git", "-C", str(repo), "reset", "-q", "--hard", "main"], check=True)
    for k in keys:
        k["commit"] = shas[k.pop("mark")]
        k.pop("commit_index", None)
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True, text=True).stdout
    objects = git("cat-file", "--batch-all-objects", "--batch-check=%(objecttype) %(objectsize)").split("\n")
    blobs = [int(o.split()[1]) for o in objects if o.startswith("blob ")]
    return {"commits": int(git("rev-list", "--all", "--count")), "blobs": len(blobs),
            "blob_bytes": sum(blobs), "keys": keys}


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    scale = float(os.environ.get("SCAN_BENCH_SCALE", "1"))
    seed = int(os.environ.get("SCAN_BENCH_SEED", "33"))
    corpus_root = Path(os.environ.get("SCAN_BENCH_CORPUS", Path.home() / ".cargo/registry/src"))
    corpus = load_corpus(corpus_root)
    rng = random.Random(seed)
    writer = Writer(rng, corpus)
    (out / "tree").mkdir(parents=True, exist_ok=False)
    tree = make_tree(out / "tree", rng, writer, scale)
    tree["bait"] = dict(sorted(writer.bait_counts.items()))
    writer.bait_counts = {}
    history = make_history(out / "history", rng, writer, scale)
    history["bait"] = dict(sorted(writer.bait_counts.items()))
    manifest = {"scale": scale, "seed": seed, "corpus": str(corpus_root),
                "corpus_files": len(corpus), "tree": tree, "history": history}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"tree: {tree['files']} files, {tree['bytes']} bytes, {len(tree['keys'])} keys; "
          f"history: {history['commits']} commits, {len(history['keys'])} keys")


if __name__ == "__main__":
    main()
