"""Attack results kept on disk, so that a long job (`dnd profiles`, `dnd evaluate`) interrupted part-way resumes
where it stopped instead of attacking again.

One safetensors file per entry under a directory. Its key (strings: the seed, the network's weights, the images
offered, the attack's radii...) is stored with it, and a later run reuses the file only when it asks with an equal
key: a retrained bundle, or another recipe written into the same directory, attacks again rather than reuse images
that were adversarial for another network or another setting. Files are written to a temp name, then renamed, so a
run killed mid-write leaves no half file behind.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from .attacks import AttackSet, file_stem, load_attack_set, save_attack_set
from .bundle import publish


def tensor_sha256(x: Tensor) -> str:
    """Fingerprint of a tensor's values (dtype and shape included): which images an entry was computed on."""
    h = hashlib.sha256(f"{x.dtype} {tuple(x.shape)}".encode())
    h.update(x.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


class AttackCache:
    """Entries under `directory`, each keyed by `key` (common to every entry: e.g. seed and model weights) plus its
    own key. `save=False` reuses entries already there but writes none (a worker process under torchrun, or a run
    asked to keep nothing); with no directory every call runs."""

    def __init__(self, directory: str | os.PathLike | None, key: dict[str, str], save: bool = True) -> None:
        self.dir = Path(directory) if directory is not None else None
        self.key = {k: str(v) for k, v in key.items()}
        self.save = save and self.dir is not None

    def _path(self, name: str) -> Path | None:
        """DIR/NAME.safetensors, NAME made one file name: "transfer@models/vgg19-dense" names a bundle path."""
        return self.dir / f"{file_stem(name)}.safetensors" if self.dir is not None else None

    def tensors(self, name: str, run: Callable[[], dict[str, Tensor]], **key: str) -> dict[str, Tensor]:
        """The tensors `run()` returns, from DIR/name.safetensors when its key equals this one."""
        full = self.key | {k: str(v) for k, v in key.items()}
        path = self._path(name)
        if path is not None and path.is_file():
            with safe_open(str(path), framework="pt") as f:
                if f.metadata() == full:
                    return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
        out = run()
        if self.save and path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
            save_file({k: v.contiguous() for k, v in out.items()}, str(tmp), metadata=full)
            publish(tmp, path)
        return out

    def attack_set(self, name: str, offered: int, run: Callable[[], AttackSet], **key: str) -> AttackSet:
        """A whole attack set (clean and adversarial images, labels, success), keyed by the common key, the number
        of images offered and `key` (e.g. the network a transferred attack was crafted on); the key lives in the
        set's meta."""
        want = self.key | {"offered": str(offered)} | {k: str(v) for k, v in key.items()}
        path = self._path(name)
        if path is not None and path.is_file():
            s = load_attack_set(path)
            if {k: str(s.meta.get(k)) for k in want} == want:
                return s
        s = run()
        s.meta |= {k: v for k, v in want.items() if k not in s.meta}  # run_attack records seed and offered
        if self.save and path is not None:
            save_attack_set(s, path)
        return s
