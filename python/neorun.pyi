"""neorun: verify, open and run neoc bundles. numpy in, numpy out; the GIL is
released while the model runs, and one Model may be shared by threads."""
import os
from typing import Any, Dict, List, Literal, Mapping, Sequence, TypedDict, Union

import numpy as np
import numpy.typing as npt

__version__: str

class TensorInfo(TypedDict):
    name: str
    #: numpy's name: "float32", "int64", …; "object" for strings (arrays of str)
    dtype: str
    #: ints, and the names of sizes chosen per call (e.g. "N")
    shape: List[Union[int, str]]

class SelfTest(TypedDict):
    cases: int
    max_abs_error: float

class NeorunError(Exception):
    """Every error neorun raises."""

class BundleRefused(NeorunError):
    """The bundle did not pass its checks (signature, digests, format, target, runtime version)."""

class BadInput(NeorunError):
    """The inputs do not fit the model: names, dtypes or shapes."""

class ModelError(NeorunError):
    """The model failed on valid inputs, or its self-test failed."""

_Path = Union[str, "os.PathLike[str]"]

class Model:
    def __init__(
        self,
        path: _Path,
        trusted_key: Union[_Path, Sequence[_Path], None] = None,
        *,
        allow_unsigned: bool = False,
        threads: Union[int, None] = None,
        kernels: Literal["own", "tract"] = "own",
    ) -> None:
        """Verifies the bundle at `path` (signature first, then every digest) and opens it.
        Raises BundleRefused, or NeorunError when no key is given or a key cannot be read."""
    @property
    def inputs(self) -> List[TensorInfo]: ...
    @property
    def outputs(self) -> List[TensorInfo]: ...
    @property
    def manifest(self) -> Dict[str, Any]: ...
    @property
    def digest(self) -> str:
        """The digest of the signed manifest: "sha256:HEX"."""
    @property
    def running(self) -> str:
        """What runs it: engine, kernels, threads, a fallback taken."""
    def predict(
        self, x: Union[npt.ArrayLike, Mapping[str, npt.ArrayLike]]
    ) -> Dict[str, np.ndarray]:
        """Runs the model on one array (a one-input model) or a dict of input name → array;
        gives output name → array. Same-kind dtypes are converted (float64 → float32);
        string inputs take str arrays or lists, string outputs are object arrays of str."""
    def self_test(self) -> SelfTest:
        """Runs the bundle's own test vectors against their expected outputs."""
