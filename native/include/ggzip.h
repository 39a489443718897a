/*
 * ggzip.h -- the one public header of the ggzip codec library.
 *
 * ggzip codes the bytes of a tensor with a 32-way interleaved rANS coder.
 * A tensor becomes one self-describing *frame*: header, frequency tables (one
 * set per tensor, shared by its chunks), a chunk index with a CRC32C per chunk,
 * then the chunks.  Chunks hold whole rows and decode independently, so a
 * tensor decodes on many threads and a single chunk can be decoded alone.
 * The byte layout is specified in docs/FORMAT.md; the constants below are
 * the only C copy of it (python/ggzip/constants.py mirrors them, and
 * tests/test_codec.py compiles this header to check that the two, and the
 * binding's declarations, agree).
 *
 * Conventions (after zstd): functions that produce data take (dst, dstCapacity)
 * and return a size_t that is either a byte count or an error code; test it
 * with ggz_is_error() and name it with ggz_error_name().
 */
#ifndef GGZIP_H
#define GGZIP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GGZ_VERSION_MAJOR 0
#define GGZ_VERSION_MINOR 8
#define GGZ_VERSION_PATCH 0
#define GGZ_VERSION_NUMBER (GGZ_VERSION_MAJOR * 10000 + GGZ_VERSION_MINOR * 100 + GGZ_VERSION_PATCH)

/* ---- format constants (FORMAT.md) ------------------------------------ */
#define GGZ_FRAME_MAGIC      0x315A4747u /* "GGZ1" little endian */
#define GGZ_FORMAT_VERSION   1
#define GGZ_FORMAT_VERSION_TRELLIS 2  /* frames with trellis-coded Q8_0 symbols; readers take both */
#define GGZ_FORMAT_VERSION_ROWS 3     /* Q8_0 frames whose scales are one step a row (either symbols) */
#define GGZ_FLAG_SCALE_DELTA 1u       /* header flags: Q8_0 scales coded as row differences */
#define GGZ_FLAG_TRELLIS     2u       /* Q8_0 symbols coded by trellis state (version 2 or 3) */
#define GGZ_LANES            32          /* interleaved rANS states, part of the format */
#define GGZ_PROB_BITS        12          /* frequencies sum to 1 << GGZ_PROB_BITS */
#define GGZ_RANS_L           (1u << 16)  /* lower bound of a state; renormalise by 16 bits */
#define GGZ_FRAME_HEADER_SIZE 32
#define GGZ_DEFAULT_CHUNK    (256u * 1024u)
#define GGZ_MAX_STREAMS      2

/* How the bytes of a tensor are split into streams (FORMAT.md, "layouts"). */
typedef enum {
    GGZ_LAYOUT_BYTES   = 0, /* one stream, one table                                      */
    GGZ_LAYOUT_Q8_0    = 1, /* 34-byte blocks: int8 symbols (1 table) + f16 scales (2)    */
    GGZ_LAYOUT_PLANE16 = 2, /* 16-bit words (F16, BF16): low and high byte, a table each  */
    GGZ_LAYOUT_PLANE32 = 3, /* 32-bit words (F32): four byte planes, a table each         */
    GGZ_LAYOUT_COUNT
} ggz_layout;

/* ---- errors ------------------------------------------------------------ */
typedef enum {
    GGZ_OK = 0,
    GGZ_ERR_GENERIC,
    GGZ_ERR_DST_TOO_SMALL,   /* dstCapacity too small                               */
    GGZ_ERR_SRC_TRUNCATED,   /* the frame ends before its declared end              */
    GGZ_ERR_BAD_MAGIC,       /* not a ggzip frame                                   */
    GGZ_ERR_VERSION,         /* frame from a newer format version                   */
    GGZ_ERR_HEADER,          /* header or tables inconsistent (bad sizes, counts)   */
    GGZ_ERR_CHECKSUM,        /* a CRC32C did not match                              */
    GGZ_ERR_CORRUPT,         /* rANS stream inconsistent (final state, overrun)     */
    GGZ_ERR_PARAM,           /* invalid argument                                    */
    GGZ_ERR_ALLOC,           /* out of memory                                       */
    GGZ_ERR_KERNEL,          /* unknown or unavailable kernel name                  */
    GGZ_ERR_THREAD,          /* reserved: never returned (see "Threads" below)      */
    GGZ_ERR_MAX
} ggz_error;

/*! ggz_is_error() : @return 1 if `code` (a size_t result) is an error code, else 0 */
int ggz_is_error(size_t code);
/*! ggz_error_code() : @return the ggz_error of an error result, GGZ_OK for a size */
ggz_error ggz_error_code(size_t code);
/*! ggz_error_name() : @return a static readable string for an error result */
const char * ggz_error_name(size_t code);

/*! ggz_version_number() : @return GGZ_VERSION_NUMBER of the compiled library
 *  (bindings compare it with the version they were built for) */
unsigned ggz_version_number(void);

/* ---- kernels ------------------------------------------------------------ */
/* A kernel is one implementation of the rANS decode loop: "scalar", "avx2",
 * "avx512" (F, BW, VL), "avx512vbmi" (the same with VBMI), "neon".  All
 * accept the same bytes.  There is one encoder, the scalar one.  The best kernel the CPU and OS support
 * is chosen on first use; GGZIP_KERNEL=<name> in the environment forces one
 * (an unavailable forced kernel falls back to the best and
 * ggz_kernel_forced_error() says why). */

/*! ggz_kernel_name() : @return the name of the decode kernel in use */
const char * ggz_kernel_name(void);
/*! ggz_encoder_kernel_name() : @return the name of the encoder, "scalar" */
const char * ggz_encoder_kernel_name(void);
/*! ggz_kernel_count() : @return number of kernels compiled into this library */
int ggz_kernel_count(void);
/*! ggz_kernel_info() : name of compiled kernel `i`; *available set to 1 if the
 *  host can run it; *has_encoder to 1 if it has an encoder (only "scalar").
 *  @return NULL if i is out of range */
const char * ggz_kernel_info(int i, int * available, int * has_encoder);
/*! ggz_set_kernel() : decode with kernel `name` (encoding always uses the
 *  scalar encoder).  Not thread-safe against running codecs.
 *  @return 0, or an error code (GGZ_ERR_KERNEL) */
size_t ggz_set_kernel(const char * name);
/*! ggz_kernel_forced_error() : @return NULL, or why GGZIP_KERNEL was ignored */
const char * ggz_kernel_forced_error(void);

/* ---- tensor frames ----------------------------------------------------- */
/* Threads: n_threads is how many threads may share the work, the calling
 * thread always one of them.  If the OS refuses to start one, the others do
 * its share: the result is the same, only later, so no call fails for it (a
 * model that loads slower beats one that does not load).  GGZ_ERR_THREAD is
 * therefore never returned by this version; it keeps its number. */

typedef struct {
    int      layout;       /* ggz_layout                                                  */
    size_t   row_size;     /* bytes of one row; chunks hold whole rows (0 = whole tensor) */
    size_t   chunk_size;   /* target raw bytes per chunk (0 = GGZ_DEFAULT_CHUNK)          */
    int      n_threads;    /* encoder threads (<=0: 1)                                     */
    int      trellis;      /* Q8_0 only: code the symbols by trellis state (ggz_tcq_quantize's
                              levels; any levels decode right, these cost a bit less each) */
} ggz_params;

/*! ggz_frame_bound() : @return the largest frame ggz_encode_tensor() can produce
 *  for `raw_size` bytes with these params (use it to size dst) */
size_t ggz_frame_bound(size_t raw_size, const ggz_params * params);
/*! ggz_rows_per_chunk() : the rows per chunk ggz_encode_tensor() gives
 *  `raw_size` bytes with these params (a trellis quantizer restarts its lanes
 *  on them).  @return the rows, or an error code */
size_t ggz_rows_per_chunk(size_t raw_size, const ggz_params * params);

/*! ggz_encode_tensor() : code `src` (raw_size bytes) into one frame in dst.
 *  raw_size must be a multiple of row_size, row_size a multiple of the layout's
 *  unit (34 for Q8_0, 2 for PLANE16, 4 for PLANE32).
 *  @return frame size, or an error code */
size_t ggz_encode_tensor(void * dst, size_t dstCapacity,
                         const void * src, size_t raw_size,
                         const ggz_params * params);

typedef struct {
    int      version;
    int      layout;
    uint64_t raw_size;        /* decoded bytes                    */
    uint64_t frame_size;      /* bytes of the whole frame         */
    uint32_t row_size;
    uint32_t rows_per_chunk;
    uint32_t n_chunks;
    uint32_t n_streams;
    uint64_t chunk_raw_size;  /* raw bytes of every chunk but the last */
    uint32_t flags;           /* GGZ_FLAG_* */
} ggz_frame_info;

/*! ggz_frame_info_get() : parse and check header, tables and index (header CRC).
 *  @return frame size, or an error code (GGZ_ERR_SRC_TRUNCATED if srcSize is
 *  shorter than the header says) */
size_t ggz_frame_info_get(const void * src, size_t srcSize, ggz_frame_info * info);

/*! ggz_decode_tensor() : decode a whole frame into dst (dstCapacity >= raw_size),
 *  chunks spread over n_threads threads (<=1: the calling thread only).
 *  Every chunk's CRC32C is checked as the chunk is decoded (the x86 kernels in
 *  their decode loop); a mismatch gives GGZ_ERR_CHECKSUM even where the decoder
 *  met damage first, and the bytes of a failed chunk in dst are undefined.
 *  @return raw_size, or an error code; *bad_chunk (if not NULL) gets the index
 *  of the failing chunk, or -1 */
size_t ggz_decode_tensor(void * dst, size_t dstCapacity,
                         const void * src, size_t srcSize,
                         int n_threads, int64_t * bad_chunk);

/* One frame of a batch (ggz_decode_batch). */
typedef struct {
    void *       dst;          /* receives the decoded tensor                              */
    size_t       dstCapacity;  /* >= its raw_size                                          */
    const void * src;          /* the frame                                                */
    size_t       srcSize;
    size_t       result;       /* out: raw_size, or an error code (GGZ_ERR_GENERIC: not
                                  decoded because another frame of the batch failed)      */
    int64_t      bad_chunk;    /* out: the failing chunk of this frame, or -1              */
} ggz_batch_item;

/* Called once per decoded frame, as soon as its last chunk is written (to release
 * the frame's pages, say); from a worker thread, never two calls at once. */
typedef void (*ggz_frame_done_fn)(void * opaque, size_t index);

/*! ggz_decode_batch() : decode n frames with one pool of n_threads threads (<=1:
 *  the calling thread only).  Frames are opened in array order and the chunks of
 *  all of them are shared by all threads, so many small frames keep every core
 *  busy, and frames mapped from a file are read in order (decode follows the
 *  readahead).  CRCs are checked as in ggz_decode_tensor; the batch stops at the
 *  first error.  done may be NULL.
 *  @return n, or the first error code (items[i].result says which frame) */
size_t ggz_decode_batch(ggz_batch_item * items, size_t n, int n_threads,
                        ggz_frame_done_fn done, void * opaque);

/* A batch decoding in the background (ggz_batch_start). */
typedef struct ggz_batch ggz_batch;

/*! ggz_batch_start() : as ggz_decode_batch, but returns at once while n_threads
 *  background threads (0: none) decode; the caller goes on with other work and
 *  later joins in with ggz_batch_finish.  On Linux the background threads run
 *  at a nice value 10 above the caller's, so that its work keeps its core while
 *  they take what the other cores leave.  items, their buffers and opaque must
 *  stay valid until then.  Fewer threads than asked, none even, may start
 *  (see "Threads"): ggz_batch_finish then does their share.
 *  @return the batch, or NULL (items NULL, out of memory): decode synchronously */
ggz_batch * ggz_batch_start(ggz_batch_item * items, size_t n, int n_threads,
                            ggz_frame_done_fn done, void * opaque);

/*! ggz_batch_finish() : the calling thread decodes what is left along with the
 *  background threads, waits for them and frees the batch.
 *  @return as ggz_decode_batch */
size_t ggz_batch_finish(ggz_batch * batch);

/*! ggz_batch_cancel() : stop handing out chunks, wait for the chunks in flight and
 *  free the batch; frames not finished keep result GGZ_ERR_GENERIC.  NULL is a no-op. */
void ggz_batch_cancel(ggz_batch * batch);

/*! ggz_decode_chunk() : decode chunk `index` alone into dst, which receives the
 *  raw bytes [index * chunk_raw_size, ...) of the tensor.
 *  @return the chunk's raw size, or an error code */
size_t ggz_decode_chunk(void * dst, size_t dstCapacity,
                        const void * src, size_t srcSize, uint32_t index);

/*! ggz_verify_tensor() : check header, every CRC and decode every chunk into a
 *  scratch buffer of one chunk (no full-size output needed).
 *  @return raw_size, or an error code */
size_t ggz_verify_tensor(const void * src, size_t srcSize, int64_t * bad_chunk);

/* ---- random access: a frame opened once, chunks decoded on demand ------- */
/* For tensors kept coded in memory and decoded inside the computation that
 * reads them (the patched llama.cpp's matrix products): the header, tables
 * and chunk offsets are parsed once, then any chunk decodes alone, from any
 * number of threads at once, into the caller's buffers (no allocation). */
typedef struct ggz_reader ggz_reader;

/*! ggz_reader_open() : parse src[0, srcSize) (header, tables, index, header
 *  CRC) and build its decode tables.  src must stay valid and unchanged while
 *  the reader lives.  @return the frame size, or an error code (*out NULL) */
size_t ggz_reader_open(ggz_reader ** out, const void * src, size_t srcSize);
/*! ggz_reader_free() : NULL is a no-op */
void ggz_reader_free(ggz_reader * r);
/*! ggz_reader_info() : the frame's geometry, as ggz_frame_info_get() */
void ggz_reader_info(const ggz_reader * r, ggz_frame_info * info);
/*! ggz_reader_check() : the CRC32C of every chunk's stored bytes, without
 *  decoding (a kept frame is checked once when it is loaded).
 *  @return the frame's raw_size, or GGZ_ERR_CHECKSUM with *bad_chunk set */
size_t ggz_reader_check(const ggz_reader * r, int64_t * bad_chunk);
/*! ggz_reader_scratch_size() : bytes of scratch ggz_reader_decode_chunk() needs */
size_t ggz_reader_scratch_size(const ggz_reader * r);
/*! ggz_reader_decode_chunk() : chunk `index` into dst (dstCapacity >= its raw
 *  size, at most info.chunk_raw_size), CRC checked as it decodes; scratch of
 *  ggz_reader_scratch_size() bytes.  Thread-safe for distinct dst/scratch.
 *  @return the chunk's raw size, or an error code */
size_t ggz_reader_decode_chunk(const ggz_reader * r, uint32_t index, void * dst, size_t dstCapacity, void * scratch);
/*! ggz_reader_decode_pair() : chunks `index` and `index` + 1 into dst[0] and
 *  dst[1] (each of dstCapacity bytes, with scratch[0] and scratch[1] of
 *  ggz_reader_scratch_size() bytes), as two ggz_reader_decode_chunk() calls
 *  would, but their symbols decoded side by side where the kernel can (x86:
 *  one stream's lookups cannot keep the core busy; 10-15% faster).
 *  @return the two chunks' raw bytes together, or the first chunk's error,
 *  else the second's; *bad_chunk (if not NULL) is the chunk that failed or -1 */
size_t ggz_reader_decode_pair(const ggz_reader * r, uint32_t index, void * const dst[2], size_t dstCapacity,
                              void * const scratch[2], int64_t * bad_chunk);

/* ---- activation sparsity (CHESS) on Q8_0 weights ------------------------- */
/* Matrix-vector products that skip the inputs a threshold zeroes, for one
 * token, on Q8_0 matrices (blocks of 34 bytes: f16 scale, 32 int8).  Each call
 * does one range of outputs, so that threads split a product among them with
 * no reduction.  A matrix "stored transposed" has row k = input k: the product
 * adds x_k times row k for each input that passes, reading only those rows.
 * Kernels: AVX2 (with FMA and F16C), NEON, scalar; chosen once, like the
 * decoder's (ggz_sparse_kernel_name). */

/*! ggz_sparse_kernel_name() : @return the name of the sparse kernels in use */
const char * ggz_sparse_kernel_name(void);
/*! ggz_sparse_set_kernel() : use kernels `name` ("scalar", "avx2", "avx512", "neon");
 *  the environment's GGZIP_SPARSE_KERNEL chooses them at the first call
 *  @return 0, or GGZ_ERR_KERNEL if not built in or not runnable here */
size_t ggz_sparse_set_kernel(const char * name);

/*! ggz_sparse_qx_size() : bytes of an n-vector quantized by ggz_sparse_quantize
 *  (n a multiple of 32): n int8 followed by n/32 float scales */
size_t ggz_sparse_qx_size(int64_t n);
/*! ggz_sparse_quantize() : x (n floats) as Q8_0 quantizes an activation: per
 *  32 values d = absmax / 127 and q = round(x / d); into qx (4-byte aligned) */
void ggz_sparse_quantize(const float * x, int64_t n, void * qx);
/*! ggz_sparse_up() : rows [i0, i1) of the Q8_0 matrix w (rows of n_in inputs,
 *  row_bytes apart): h[i] = a[i] * (row i . x) where |a[i]| >= thr[i] and
 *  a[i] != 0, else h[i] = 0 and row i is not read.  qx: x quantized.  The
 *  gated FFN's up projection times act(gate) in one pass. */
void ggz_sparse_up(const void * w, size_t row_bytes, int64_t n_in, const void * qx,
                   const float * a, const float * thr, int64_t i0, int64_t i1, float * h);
/*! ggz_sparse_select() : the indices k, ascending, of the inputs that pass:
 *  x[k] != 0 and (thr NULL or |x[k]| >= thr[k]).  idx holds n.
 *  @return their count */
int64_t ggz_sparse_select(const float * x, const float * thr, int64_t n, int32_t * idx);
/*! ggz_sparse_axpy() : outputs [32*b0, 32*b1) of a Q8_0 matrix stored
 *  transposed (row k = input k, row_bytes apart):
 *  y[j] = sum over the nnz selected k of x[k] * row_k[j] (y indexed from 0 = output 32*b0) */
void ggz_sparse_axpy(const void * wt, size_t row_bytes, const int32_t * idx, int64_t nnz,
                     const float * x, int64_t b0, int64_t b1, float * y);
/*! ggz_sparse_tmm() : the same product, dense, for n_tok tokens (a prompt):
 *  Y[t][j] = sum over all n_in k of X[t][k] * row_k[j] for outputs j in
 *  [32*b0, 32*b1); X rows ldx floats apart, Y rows ldy floats apart, Y[t][0] =
 *  output 32*b0 */
void ggz_sparse_tmm(const void * wt, size_t row_bytes, int64_t n_in, const float * X, size_t ldx,
                    int64_t n_tok, int64_t b0, int64_t b1, float * Y, size_t ldy);

/* ---- trellis-coded quantization (encoder side) ------------------------ */
/* The state machine of a trellis-coded Q8_0 symbol stream (FORMAT.md): each
 * lane starts a chunk in state 0; states 0-1 (class 0) code even levels and
 * states 2-3 (class 1) odd ones, each class with its own table; after a level
 * L the lane goes to GGZ_TCQ_NEXT[state][(L >> 1) & 1]. */
#define GGZ_TCQ_STATES 4
/* their two tables are 11-bit (frequencies sum to 2048): both decode tables
 * then take 16 KiB, as one 12-bit table does, and stay in L1 */
#define GGZ_TCQ_PROB_BITS 11
#define GGZ_TCQ_NEXT { {0, 2}, {2, 0}, {1, 3}, {3, 1} }

/*! ggz_tcq_quantize() : the int8 levels q (rows x cols, row major) of the
 *  weights w on steps `steps` (one per Q8_0 block: rows x cols/32 floats)
 *  along the trellis path minimising sum (w/d - L)^2 + mu * bits[class][L]
 *  (bits: 2 x 256 floats indexed by the level's byte; may be NULL if mu = 0),
 *  each lane restarting in state 0 every rows_per_chunk rows (the frame's
 *  chunks).  counts (2 x 256, may be NULL) receives the histogram of the
 *  levels by class.  cols must be a multiple of 32; |w/d| <= 127 keeps every
 *  level within [-127, 127].  @return 0 or an error code */
size_t ggz_tcq_quantize(const float * w, size_t rows, size_t cols, const float * steps,
                        size_t rows_per_chunk, float mu, const float * bits,
                        int8_t * q, uint64_t * counts);

/*! ggz_tcq_feedback() : ggz_tcq_quantize's levels (mu = 0) with error feedback
 *  (GPTQ's, through the input covariance H of the weight), decided lane after
 *  lane: lane l's path through a chunk, then its errors pushed onto the later
 *  lanes' columns.  u (cols x cols, row major) is the upper triangular U with
 *  U^T U = H^-1 for the columns in lane order: index l * (cols/32) + b stands
 *  for column 32 b + l.  @return 0 or an error code */
size_t ggz_tcq_feedback(const float * w, size_t rows, size_t cols, const float * steps,
                        size_t rows_per_chunk, const float * u, int8_t * q, uint64_t * counts);

/* ---- helpers ------------------------------------------------------------ */
/*! ggz_crc32c() : CRC-32C (Castagnoli) of buf, continuing from crc (0 to start) */
uint32_t ggz_crc32c(uint32_t crc, const void * buf, size_t size);

/*! ggz_entropy_bound() : the order-0 entropy bound, in bytes, of `src` coded
 *  under `layout` with rows of `row_size` bytes (as ggz_params.row_size, 0 =
 *  the layout's unit): the sum over the layout's streams and tables of n * H0.
 *  For Q8_0: the int8 symbols, and the low and high bytes of the scales, each
 *  with its own histogram, the scales taken as stored, as differences along
 *  each row, or as row steps (theirs, plus the list of blocks that differ as
 *  stored), whichever is cheapest (the encoder's choice).  No frame of src is
 *  smaller.  @return the bound, or -1 if raw_size or row_size does not fit the
 *  layout */
double ggz_entropy_bound(const void * src, size_t raw_size, int layout, size_t row_size);

#ifdef __cplusplus
}
#endif
#endif /* GGZIP_H */
