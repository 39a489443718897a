"""Format constants of ggzip, the one Python copy (docs/FORMAT.md).
The C copy is native/include/ggzip.h; tests/test_constants.py checks that the two
agree.  Values are never renumbered."""

# ---- frame (native codec) ------------------------------------------------
FRAME_MAGIC = 0x315A4747          # b"GGZ1"
FORMAT_VERSION = 1
LANES = 32                        # interleaved rANS states
PROB_BITS = 12                    # frequencies sum to 1 << PROB_BITS
RANS_L = 1 << 16                  # lower bound of a state
FRAME_HEADER_SIZE = 32
DEFAULT_CHUNK = 256 * 1024
MAX_STREAMS = 2


class Layout:
    """How a tensor's bytes are split into streams (name -> id)."""
    BYTES = 0
    Q8_0 = 1
    PLANE16 = 2
    PLANE32 = 3


LAYOUT_IDS = {"bytes": Layout.BYTES, "q8_0": Layout.Q8_0,
              "plane16": Layout.PLANE16, "plane32": Layout.PLANE32}
LAYOUT_NAMES = {v: k for k, v in LAYOUT_IDS.items()}
# bytes a row size must be a multiple of, per layout
LAYOUT_UNIT = {Layout.BYTES: 1, Layout.Q8_0: 34, Layout.PLANE16: 2, Layout.PLANE32: 4}

# error codes of ggz_error (C enum order)
ERRORS = ["OK", "GENERIC", "DST_TOO_SMALL", "SRC_TRUNCATED", "BAD_MAGIC", "VERSION",
          "HEADER", "CHECKSUM", "CORRUPT", "PARAM", "ALLOC", "KERNEL", "THREAD"]


# ---- ggzip GGUF (container) ------------------------------------------------
class Keys:
    """Namespaced GGUF metadata keys of a ggzip GGUF."""
    FORMAT_VERSION = "ggzip.format_version"
    TENSOR_NAMES = "ggzip.tensor_names"    # [str] compressed tensors
    TENSOR_TYPES = "ggzip.tensor_types"    # [u32] original ggml type
    TENSOR_SHAPES = "ggzip.tensor_shapes"  # [u64] ne0..ne3 per tensor
