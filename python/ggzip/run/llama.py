"""Open a ggzip GGUF with llama-cpp-python.

A ggzip GGUF loads only in a llama.cpp carrying the ggzip patches (patches/): the
stock one refuses it ("tensor '...' has wrong shape").  Build and install the
patched llama-cpp-python with

    scripts/build_llama.sh --python

or point an installed llama-cpp-python 0.3.36 at patched shared libraries with
LLAMA_CPP_LIB_PATH=<dir holding libllama.so>.  Then

    from ggzip.run import Llama
    llm = Llama("model.ggzip.gguf", n_ctx=512)
    print(llm("The capital of France is", max_tokens=8)["choices"][0]["text"])

`Llama` is llama_cpp.Llama after a check that the loaded library has the ggzip
patches (the symbol llama_ggzip_version, added by patch 0001).
"""
from __future__ import annotations

from ..constants import Keys
from ..errors import GGZipError

BUILD_HINT = "run scripts/build_llama.sh --python (or set LLAMA_CPP_LIB_PATH to a patched build's lib dir)"


def check_patched_llama_cpp():
    """Import llama_cpp and check that its library decodes ggzip GGUFs.
    @return (llama_cpp module, ggzip version string of the library)"""
    try:
        import llama_cpp
    except ImportError as e:
        raise GGZipError(f"llama-cpp-python is not installed ({e}); {BUILD_HINT}") from None
    lib = llama_cpp.llama_cpp._lib
    try:
        fn = lib.llama_ggzip_version
    except AttributeError:
        raise GGZipError(f"llama-cpp-python {llama_cpp.__version__} at {llama_cpp.__file__} was built without the "
                         f"ggzip patches (no llama_ggzip_version in its libllama); {BUILD_HINT}") from None
    import ctypes
    fn.restype = ctypes.c_char_p
    fn.argtypes = []
    return llama_cpp, fn().decode()


def ggzip_version() -> str:
    """@return the ggzip version string of the loaded libllama, e.g. 'ggzip 1 (codec 100, kernel avx2)'"""
    return check_patched_llama_cpp()[1]


def Llama(model_path, *args, memory=None, **kwargs):
    """llama_cpp.Llama(model_path, ...) after checking for the ggzip patches.
    n_threads, when given, is also the number of threads that decode the frames
    at load (the model kv override ggzip.load_threads, unless kv_overrides sets
    it); without it they decode on the CPUs this process may run on.
    memory=SIZE (bytes or '300M', '0.5G'): plan the tensors kept compressed in RAM
    for that peak RSS with `n_threads` (default: all cores, prompt included) and
    `n_ctx` (ggzip.plan; calibrates once per file and device, then cached) and load
    with that SPEC as the ggzip.keep override; the plan is the result's ggzip_plan.
    A model that fails to load (a damaged frame, a missing file) raises GGZipError
    with llama.cpp's reason when it was logged (verbose=True prints it)."""
    llama_cpp, _ = check_patched_llama_cpp()
    plan = None
    if memory is not None:
        import os
        from ..plan.plan import plan as make_plan
        if Keys.KEEP in (kwargs.get("kv_overrides") or {}):
            raise GGZipError(f"give memory= or kv_overrides['{Keys.KEEP}'], not both")
        # run as calibrated: the same threads for generation and prompt, the same context
        kwargs["n_threads"] = kwargs.get("n_threads") or os.cpu_count() or 1
        kwargs.setdefault("n_threads_batch", kwargs["n_threads"])
        kwargs.setdefault("n_ctx", 512)   # llama_cpp.Llama's default
        plan = make_plan(model_path, memory, threads=kwargs["n_threads"], ctx=kwargs["n_ctx"])
        kwargs["kv_overrides"] = {**(kwargs.get("kv_overrides") or {}), Keys.KEEP: plan.spec}
    if kwargs.get("n_threads") is not None:
        overrides = dict(kwargs.get("kv_overrides") or {})
        overrides.setdefault(Keys.LOAD_THREADS, int(kwargs["n_threads"]))
        kwargs["kv_overrides"] = overrides
    try:
        llm = llama_cpp.Llama(str(model_path), *args, **kwargs)
        llm.ggzip_plan = plan
        return llm
    except ValueError as e:
        # llama.cpp's reason went to its log, which is off unless verbose: for a
        # ggzip file, find the damaged tensor ourselves (only on this failure path)
        raise GGZipError(f"{model_path}: llama.cpp could not load the model: "
                         f"{_damage(model_path) or e}") from None


def _damage(model_path):
    """What is wrong with a ggzip GGUF that failed to load, or None."""
    from ..container import is_ggzip, verify_file
    try:
        if is_ggzip(model_path):
            verify_file(model_path, progress=False)
    except GGZipError as err:
        return str(err)
    return None
