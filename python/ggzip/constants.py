"""Format constants of ggzip, the one Python copy (docs/FORMAT.md).
The C copy is native/include/ggzip.h; tests/test_constants.py checks that the two
agree.  Values are never renumbered."""

# ---- frame (native codec) ------------------------------------------------
FRAME_MAGIC = 0x315A4747          # b"GGZ1"
FORMAT_VERSION = 1
FORMAT_VERSION_TRELLIS = 2   # frames with trellis-coded Q8_0 symbols (ggz_params.trellis)
FORMAT_VERSION_ROWS = 3      # Q8_0 frames whose scales are one step a row (either symbols)
FLAG_SCALE_DELTA = 1         # frame header flags
FLAG_TRELLIS = 2
LANES = 32                        # interleaved rANS states
PROB_BITS = 12                    # frequencies sum to 1 << PROB_BITS
RANS_L = 1 << 16                  # lower bound of a state
FRAME_HEADER_SIZE = 32
DEFAULT_CHUNK = 256 * 1024
MAX_STREAMS = 2
# trellis-coded Q8_0 symbols (FORMAT.md section 2): 4 states, next state by
# bit 1 of the symbol, class = state >> 1 picks the table (11-bit tables)
TCQ_STATES = 4
TCQ_NEXT = ((0, 2), (2, 0), (1, 3), (3, 1))
TCQ_PROB_BITS = 11


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
    # what `ggzip decompress` needs to give back the original file byte for byte
    # (written by compress_file; absent in files made by `ggzip convert`)
    ORIGINAL_SIZE = "ggzip.original.size"                # u64 bytes of the original file
    ORIGINAL_SHA256 = "ggzip.original.sha256"            # str hex sha256 of the original file
    ORIGINAL_TENSOR_INFO = "ggzip.original.tensor_info"  # [u8] its tensor-info section, verbatim
    ORIGINAL_HEADER = "ggzip.original.header"            # [u8] its bytes [0, data start), only
                                                         #      when rebuilding them would differ
    ORIGINAL_PADDING = "ggzip.original.padding"          # [u8] its non-tensor bytes after the
                                                         #      data start, only if not all zero
    # parameters of `ggzip convert` (kept by compress and decompress like any key)
    CONVERT_ALPHA = "ggzip.convert.alpha"      # f32 rescaling exponent
    CONVERT_PRUNE = "ggzip.convert.prune"      # f32 fraction of each row zeroed
    CONVERT_RATE = "ggzip.convert.rate"        # str "target-bpw=B [(split)]" or "step=S"
    CONVERT_STATS = "ggzip.convert.stats"      # str "imatrix:<file>", "weight-proxy ...", ...
    CONVERT_SOURCE = "ggzip.convert.source"    # str "float" or "dequantized from <types>"
    CONVERT_ROWS = "ggzip.convert.rows"        # str: where the row weights came from (--fisher)
    # folds of 1/s that are exact for the logits only (quantize/fold.py): true when done
    FOLD_OUTPUT_NORM = "ggzip.fold.output_norm"  # bool: final hidden state is h / s
    FOLD_ATTN_V = "ggzip.fold.attn_v"            # bool: V (and its cache) holds V / s
    # a model kv override, never stored: threads that decode the frames at load (patch 0006)
    LOAD_THREADS = "ggzip.load_threads"          # int
    # which frames stay compressed in RAM, decoded inside the matmuls: comma-separated
    # fnmatch globs over tensor names, "all" or "none" (a kv override, < 128 bytes, or
    # GGZIP_KEEP, or this key stored in the file; `ggzip plan` writes the SPEC)
    KEEP = "ggzip.keep"                          # str
    # activation sparsity (CHESS; quantize/sparsity.py), each written only when its P > 0
    SPARSE_FFN = "ggzip.sparse.ffn"                # f32 P of the FFN thresholds
    SPARSE_ATTN = "ggzip.sparse.attn"              # f32 P of the attn_q / attn_output thresholds
    SPARSE_TRANSPOSED = "ggzip.sparse.transposed"  # [str] weights stored transposed


# keys that describe the container itself: decompress drops them, every other key
# (ggzip.convert.* included) belongs to the model
CONTAINER_KEYS = frozenset({
    Keys.FORMAT_VERSION, Keys.TENSOR_NAMES, Keys.TENSOR_TYPES, Keys.TENSOR_SHAPES,
    Keys.ORIGINAL_SIZE, Keys.ORIGINAL_SHA256, Keys.ORIGINAL_TENSOR_INFO, Keys.ORIGINAL_HEADER,
    Keys.ORIGINAL_PADDING})


# ---- activation sparsity (CHESS) --------------------------------------------
# A weight named in Keys.SPARSE_TRANSPOSED is stored transposed: ne = [n_out, n_in]
# (numpy (n_in, n_out)), row k = column k of the usual W, Q8_0 blocks along the
# outputs, so that y = sum_k x_k row_k skips the rows of zero inputs.  Which:
SPARSE_TRANSPOSED_FFN = ("ffn_down",)                 # when Keys.SPARSE_FFN is written
SPARSE_TRANSPOSED_ATTN = ("attn_q", "attn_output")    # when Keys.SPARSE_ATTN is written
# F32 1-D thresholds "blk.N.<weight>" + SPARSE_THR_SUFFIX:
#   ffn_up      [n_ff]: act(gate)_i is zeroed where |act(gate)_i| < t_i
#   attn_q, attn_output [n_in]: input channel j (file coordinates) is skipped where |x_j| < t_j
SPARSE_THR_SUFFIX = ".sparse_thr"
