"""A restricted unpickler for the embedding pickles: it rebuilds only what those files hold.

`pickle.load` calls any global a file names, so a crafted `<split>_embeddings.pkl` would run
code in every training process (with the storage credentials in its environment). This
loader admits containers and scalars (dict/list/tuple/str/bytes/int/float/bool/None, which
need no global) and NumPy arrays and scalars of numeric and string dtypes, under the names
NumPy 1.x and 2.x and Python 2's protocol-2 pickles use; any other global is refused.
"""

from __future__ import annotations

import codecs
import io
import pickle
from typing import Any, BinaryIO

import numpy as np

# Array dtype kinds a data file may hold: bool, integers, floats, complex, bytes and str.
_SAFE_KINDS = frozenset("biufcSU")


class UnsafePickleError(ValueError):
    """The pickle names a global (a class or function) outside the admitted set."""


def _dtype(spec: Any, *args: Any) -> np.dtype:
    # `numpy.dtype` is called with a type code such as "f4"; refuse object and void (record)
    # dtypes, whose elements could hold arbitrary objects.
    if not isinstance(spec, str):
        raise UnsafePickleError(f"numpy.dtype({type(spec).__name__}) is not admitted")
    dtype = np.dtype(spec, *args[:2]) if args else np.dtype(spec)
    if dtype.kind not in _SAFE_KINDS:
        raise UnsafePickleError(f"numpy.dtype({spec!r}) is not admitted (not numeric or string)")
    return dtype


def _encode(text: str, encoding: str = "utf-8") -> bytes:
    # Protocol-2 pickles written by Python 3 store bytes as `_codecs.encode(str, "latin1")`.
    if codecs.lookup(encoding).name != "iso8859-1":
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r} is not admitted")
    return text.encode("latin1")


def _bytes(*args: Any) -> bytes:
    # Protocols 0-2 write b"" as `bytes()`; refuse `bytes(n)`, which would allocate n bytes.
    if args:
        raise UnsafePickleError("bytes() with arguments is not admitted")
    return b""


def _reconstruct(cls: Any, *args: Any) -> np.ndarray:
    if cls is not np.ndarray:
        raise UnsafePickleError(f"array reconstruction of {cls!r} is not admitted")
    return np.core.multiarray._reconstruct(cls, *args)


def _scalar(dtype: Any, *args: Any) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.kind not in _SAFE_KINDS:
        raise UnsafePickleError("a NumPy scalar of a non-numeric dtype is not admitted")
    return np.core.multiarray.scalar(dtype, *args)


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if not isinstance(dtype, np.dtype) or dtype.kind not in _SAFE_KINDS:
        raise UnsafePickleError("an array of a non-numeric dtype is not admitted")
    return np.core.numeric._frombuffer(buf, dtype, shape, order)


_ADMITTED: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _encode,
    ("__builtin__", "bytes"): _bytes,
    ("builtins", "bytes"): _bytes,
}
for _core in ("numpy.core", "numpy._core"):  # NumPy 1.x and 2.x module names
    _ADMITTED[(f"{_core}.multiarray", "_reconstruct")] = _reconstruct
    _ADMITTED[(f"{_core}.multiarray", "scalar")] = _scalar
    _ADMITTED[(f"{_core}.numeric", "_frombuffer")] = _frombuffer
_ADMITTED[("numpy", "ndarray")] = np.ndarray
_ADMITTED[("numpy", "dtype")] = _dtype


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ADMITTED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refused global {module}.{name}") from None


def _check_arrays(obj: Any, depth: int = 0) -> None:
    """Refuse arrays whose dtype was changed after construction (via __setstate__)."""
    if depth > 100:
        raise UnsafePickleError("nested more than 100 levels deep")
    if isinstance(obj, np.ndarray | np.generic):
        if obj.dtype.kind not in _SAFE_KINDS or obj.dtype.hasobject:
            raise UnsafePickleError(f"an array of dtype {obj.dtype} is not admitted")
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _check_arrays(key, depth + 1)
            _check_arrays(value, depth + 1)
    elif isinstance(obj, list | tuple):
        for value in obj:
            _check_arrays(value, depth + 1)


def load(f: BinaryIO) -> Any:
    """Unpickle `f` (Python 2 str as latin-1, like the original LEO loader), admitting only
    containers, scalars and numeric/string NumPy arrays; UnsafePickleError otherwise."""
    obj = _Unpickler(f, encoding="latin1").load()
    _check_arrays(obj)
    return obj


def loads(data: bytes) -> Any:
    return load(io.BytesIO(data))
