"""Safe reading and atomic writing of checkpoints, tensors and small files."""

from visionfm.io.atomic import (
    atomic_path,
    save_json_atomic,
    save_safetensors_atomic,
    save_text_atomic,
    save_torch_atomic,
)
from visionfm.io.restricted_pickle import UnsafePickleError, load_restricted_pickle
from visionfm.io.safe_load import file_sha256, load_checkpoint_file

__all__ = [
    "atomic_path",
    "save_json_atomic",
    "save_safetensors_atomic",
    "save_text_atomic",
    "save_torch_atomic",
    "load_checkpoint_file",
    "file_sha256",
    "load_restricted_pickle",
    "UnsafePickleError",
]
