# cython: language_level=3, boundscheck=False, wraparound=False
"""The thin binding over the C engine: argument conversion, GIL release, errors to exceptions.

Everything user-facing (validation messages, defaults, numpy conveniences) lives in model.py.
"""
from libc.stdint cimport int32_t, int64_t, uint8_t
from cpython.exc cimport PyErr_CheckSignals
from libc.stdlib cimport calloc, free


cdef extern from "rwkv.h":
    ctypedef enum rwkv_status:
        RWKV_OK, RWKV_ERR_IO, RWKV_ERR_FORMAT, RWKV_ERR_UNSUPPORTED, RWKV_ERR_ARGS, RWKV_ERR_ALLOC,
        RWKV_ERR_CANCELLED, RWKV_ERR_NONFINITE
    ctypedef int rwkv_arch
    ctypedef struct rwkv_model:
        pass
    ctypedef struct rwkv_model_info:
        rwkv_arch arch
        int32_t n_vocab, n_embed, n_layer, n_head, head_size, n_ffn, data_type, file_version
        size_t state_len, file_size
        int32_t n_threads
    ctypedef int (*rwkv_progress_fn)(void *user, int done, int total, const char *name) noexcept

    enum: RWKV_LOAD_NO_MMAP
    rwkv_status rwkv_load_ex(const char *path, int n_threads, int flags, rwkv_model **out, char *err,
                             size_t err_len) nogil
    void rwkv_free(rwkv_model *model) nogil
    void rwkv_get_info(const rwkv_model *model, rwkv_model_info *info) nogil
    void rwkv_init_state(const rwkv_model *model, float *state) nogil
    rwkv_status rwkv_eval(rwkv_model *model, const int32_t *tokens, size_t n_tokens, float *state,
                          float *logits, int all_logits, char *err, size_t err_len) nogil
    rwkv_status rwkv_eval_embedding(rwkv_model *model, const int32_t *tokens, size_t n_tokens, float *state,
                                    float *embedding, char *err, size_t err_len) nogil
    ctypedef struct rwkv_sequence:
        const int32_t *tokens
        size_t n_tokens
        const float *state_in
        float *state_out
        float *logits
        int all_logits
        float *embedding
    rwkv_status rwkv_eval_batch(rwkv_model *model, const rwkv_sequence *seqs, size_t n_seqs, char *err,
                                size_t err_len) nogil
    rwkv_status rwkv_quantize_file(const char *src, const char *dst, int type_id, int quantize_head,
                                   rwkv_progress_fn progress, void *user, char *err, size_t err_len) nogil
    ctypedef void (*rwkv_verify_fn)(void *user, const char *name, int64_t n_bad, int64_t first_bad) noexcept
    rwkv_status rwkv_verify_file(const char *path, rwkv_verify_fn report, void *user, char *err,
                                 size_t err_len) nogil
    const char *rwkv_type_name(int type_id)
    const char *rwkv_kernel_level()
    const char *rwkv_cpu_features()
    const char *rwkv_arch_name(rwkv_arch arch)
    double rwkv_read_bandwidth(int n_threads, size_t n_bytes) nogil
    double rwkv_fma_peak(int n_threads) nogil


cdef extern from "rwkv_testing.h":
    size_t rwkv_type_row_size(int type_id, int64_t n)
    rwkv_status rwkv_quantize_row(int type_id, const float *src, void *dst, int64_t n) nogil
    rwkv_status rwkv_dequantize_row(int type_id, const void *src, float *dst, int64_t n) nogil
    rwkv_status rwkv_matvec(int type_id, const void *w, int64_t rows, int64_t cols, const float *x,
                            float *y) nogil
    rwkv_status rwkv_matmul_rows(int type_id, const void *w, int64_t rows, int64_t cols, const float *x,
                                 int64_t T, float *y) nogil
    rwkv_status rwkv_matmul_f32(const float *w, int64_t rows, int64_t cols, const float *x, int64_t T,
                                float *y) nogil
    rwkv_status rwkv_set_kernel_level(const char *name)


class RWKVError(Exception):
    """Base class of the engine's errors."""


class ModelFileError(RWKVError, ValueError):
    """The model file is damaged, or not a model file this engine can run."""


class ModelIOError(RWKVError, OSError):
    """The file cannot be opened, read or written."""


class ArgumentError(RWKVError, ValueError):
    """A bad argument: token id, state length, type name..."""


class NonFiniteError(RWKVError, ValueError):
    """An evaluation gave NaN or infinite logits: the model's weights or the state are bad."""


cdef enum:
    ERR_LEN = 1024


cdef raise_status(rwkv_status status, const char *err, str fallback=""):
    message = err.decode("utf-8", "replace") if err[0] else fallback
    if status == RWKV_ERR_IO:
        raise ModelIOError(message)
    if status == RWKV_ERR_ALLOC:
        raise MemoryError(message)
    if status == RWKV_ERR_ARGS:
        raise ArgumentError(message)
    if status == RWKV_ERR_NONFINITE:
        raise NonFiniteError(message)
    raise ModelFileError(message)


cdef bytes fs_path(path):
    import os
    p = os.fsencode(path)
    if b"\0" in p:
        raise ArgumentError(f"{os.fsdecode(p)!r}: a file path cannot contain a NUL character")
    return p


cdef class Engine:
    """One loaded model. Evaluation calls are serialised in C; the GIL is released meanwhile.

    ``close()`` frees the model (weights mapping, thread pool, buffers). A call still running in
    another thread keeps it alive: the last one to finish frees it. Calls after ``close()`` raise.
    """

    cdef rwkv_model *ptr
    cdef rwkv_model_info c_info
    cdef int users  # calls between acquire() and release(); changed with the GIL held
    cdef bint closed

    def __cinit__(self, path, int n_threads=0, bint mmap=True):
        cdef bytes p = fs_path(path)
        cdef const char *cp = p
        cdef char err[ERR_LEN]
        cdef rwkv_status status
        cdef int flags = 0 if mmap else RWKV_LOAD_NO_MMAP
        err[0] = 0
        with nogil:
            status = rwkv_load_ex(cp, n_threads, flags, &self.ptr, err, ERR_LEN)
        if status != RWKV_OK:
            raise_status(status, err)
        rwkv_get_info(self.ptr, &self.c_info)

    def __dealloc__(self):
        if self.ptr is not NULL:
            rwkv_free(self.ptr)
            self.ptr = NULL

    cdef rwkv_model *acquire(self) except NULL:
        if self.closed:
            raise RWKVError("the model is closed")
        self.users += 1
        return self.ptr

    cdef void release(self) noexcept:
        self.users -= 1
        if self.closed and self.users == 0:
            self.free()

    cdef void free(self) noexcept:
        cdef rwkv_model *ptr = self.ptr
        self.ptr = NULL
        if ptr is not NULL:
            with nogil:
                rwkv_free(ptr)

    def close(self):
        """Frees the model now, or when the calls running in other threads have finished."""
        if not self.closed:
            self.closed = True
            if self.users == 0:
                self.free()

    @property
    def is_closed(self):
        return bool(self.closed)

    def info(self):
        i = self.c_info
        return dict(arch=rwkv_arch_name(i.arch).decode(), n_vocab=i.n_vocab, n_embed=i.n_embed,
                    n_layer=i.n_layer, n_head=i.n_head, head_size=i.head_size, n_ffn=i.n_ffn,
                    data_type=i.data_type, file_version=i.file_version, state_len=i.state_len,
                    file_size=i.file_size, n_threads=i.n_threads)

    def init_state(self, float[::1] out not None):
        if <size_t>out.shape[0] != self.c_info.state_len:
            raise ArgumentError(f"state buffer has {out.shape[0]} floats; the model needs {self.c_info.state_len}")
        cdef rwkv_model *ptr = self.acquire()
        rwkv_init_state(ptr, &out[0])
        self.release()

    def eval(self, const int32_t[::1] tokens not None, float[::1] state not None, float[::1] logits,
             bint all_logits):
        """Evaluates tokens, updating `state` in place and writing `logits` (None: skip the head)."""
        cdef size_t n = tokens.shape[0]
        cdef size_t need = (n if all_logits else 1) * <size_t>self.c_info.n_vocab
        cdef float *lp = NULL
        cdef char err[ERR_LEN]
        cdef rwkv_status status
        cdef rwkv_model *ptr
        err[0] = 0
        if <size_t>state.shape[0] != self.c_info.state_len:
            raise ArgumentError(f"state has {state.shape[0]} floats; the model needs {self.c_info.state_len}")
        if logits is not None:
            if <size_t>logits.shape[0] < need:
                raise ArgumentError(f"logits buffer has {logits.shape[0]} floats; {need} are needed")
            lp = &logits[0]
        if n == 0:
            raise ArgumentError("no tokens to evaluate")
        ptr = self.acquire()
        with nogil:
            status = rwkv_eval(ptr, &tokens[0], n, &state[0], lp, all_logits, err, ERR_LEN)
        self.release()
        if status != RWKV_OK:
            raise_status(status, err)

    def eval_embedding(self, const int32_t[::1] tokens not None, float[::1] state not None,
                       float[::1] out not None):
        cdef size_t n = tokens.shape[0]
        cdef char err[ERR_LEN]
        cdef rwkv_status status
        cdef rwkv_model *ptr
        err[0] = 0
        if <size_t>state.shape[0] != self.c_info.state_len:
            raise ArgumentError(f"state has {state.shape[0]} floats; the model needs {self.c_info.state_len}")
        if out.shape[0] != self.c_info.n_embed:
            raise ArgumentError(f"embedding buffer has {out.shape[0]} floats; {self.c_info.n_embed} are needed")
        if n == 0:
            raise ArgumentError("no tokens to evaluate")
        ptr = self.acquire()
        with nogil:
            status = rwkv_eval_embedding(ptr, &tokens[0], n, &state[0], &out[0], err, ERR_LEN)
        self.release()
        if status != RWKV_OK:
            raise_status(status, err)


    def eval_batch(self, list tokens not None, list states_in not None, list states_out not None,
                   list logits not None, list embeddings not None, bint all_logits):
        """Evaluates several sequences in one pass over the weights. Lists of one entry per sequence:
        tokens (int32 arrays), states_in (float32 arrays, or None for the initial state), states_out
        (float32 arrays, each may be its states_in), logits and embeddings (float32 arrays, or None
        for none)."""
        cdef size_t n = len(tokens), i, need
        cdef size_t V = <size_t>self.c_info.n_vocab, S = self.c_info.state_len
        cdef const int32_t[::1] tv
        cdef const float[::1] sv
        cdef float[::1] ov
        cdef char err[ERR_LEN]
        cdef rwkv_status status
        cdef rwkv_model *ptr
        err[0] = 0
        if not (len(states_in) == len(states_out) == len(logits) == len(embeddings) == n):
            raise ArgumentError("eval_batch: the lists must have one entry per sequence")
        if n == 0:
            raise ArgumentError("no sequences to evaluate")
        cdef rwkv_sequence *seqs = <rwkv_sequence *>calloc(n, sizeof(rwkv_sequence))
        if seqs == NULL:
            raise MemoryError("out of memory for the sequences")
        views = []  # the buffers stay exported until the call returns
        try:
            for i in range(n):
                tv = tokens[i]
                if tv.shape[0] == 0:
                    raise ArgumentError(f"sequence {i}: no tokens to evaluate")
                seqs[i].tokens = &tv[0]
                seqs[i].n_tokens = tv.shape[0]
                views.append(tv)
                if states_in[i] is not None:
                    sv = states_in[i]
                    if <size_t>sv.shape[0] != S:
                        raise ArgumentError(f"sequence {i}: state has {sv.shape[0]} floats; the model needs {S}")
                    seqs[i].state_in = &sv[0]
                    views.append(sv)
                ov = states_out[i]
                if <size_t>ov.shape[0] != S:
                    raise ArgumentError(f"sequence {i}: state_out has {ov.shape[0]} floats; the model needs {S}")
                seqs[i].state_out = &ov[0]
                views.append(ov)
                seqs[i].all_logits = all_logits
                if logits[i] is not None:
                    ov = logits[i]
                    need = (seqs[i].n_tokens if all_logits else 1) * V
                    if <size_t>ov.shape[0] < need:
                        raise ArgumentError(f"sequence {i}: logits buffer has {ov.shape[0]} floats; {need} are needed")
                    seqs[i].logits = &ov[0]
                    views.append(ov)
                if embeddings[i] is not None:
                    ov = embeddings[i]
                    if ov.shape[0] != self.c_info.n_embed:
                        raise ArgumentError(f"sequence {i}: embedding buffer has {ov.shape[0]} floats; "
                                            f"{self.c_info.n_embed} are needed")
                    seqs[i].embedding = &ov[0]
                    views.append(ov)
            ptr = self.acquire()
            with nogil:
                status = rwkv_eval_batch(ptr, seqs, n, err, ERR_LEN)
            self.release()
        finally:
            free(seqs)
        if status != RWKV_OK:
            raise_status(status, err)


cdef class _Progress:
    """Calls the user's progress function; an exception in it (Ctrl-C) cancels the run and is
    raised again once the engine has cleaned up."""
    cdef object fn
    cdef object error

    def __init__(self, fn):
        self.fn = fn
        self.error = None


cdef int progress_trampoline(void *user, int done, int total, const char *name) noexcept with gil:
    cdef _Progress p = <_Progress>user
    try:
        PyErr_CheckSignals()  # Ctrl-C (or a SIGTERM handler that raises) cancels a run without progress too
        if p.fn is not None:
            p.fn(done, total, name.decode("utf-8", "replace"))
        return 0
    except BaseException as e:
        p.error = e
        return 1


def quantize_file(src, dst, int type_id, bint quantize_head=False, progress=None):
    cdef bytes s = fs_path(src), d = fs_path(dst)
    cdef const char *sp = s
    cdef const char *dp = d
    cdef char err[ERR_LEN]
    cdef rwkv_status status
    cdef _Progress tracker = _Progress(progress)
    cdef rwkv_progress_fn fn = progress_trampoline
    err[0] = 0
    with nogil:
        status = rwkv_quantize_file(sp, dp, type_id, quantize_head, fn, <void *>tracker, err, ERR_LEN)
    if tracker.error is not None:
        raise tracker.error
    if status != RWKV_OK:
        raise_status(status, err)


cdef void verify_report(void *user, const char *name, int64_t n_bad, int64_t first_bad) noexcept with gil:
    (<list>user).append((name.decode("utf-8", "replace"), n_bad, first_bad))


def verify_file(path):
    """[(tensor name, NaN/Inf values, index of the first)] for the tensors of a model file that hold any."""
    cdef bytes p = fs_path(path)
    cdef const char *cp = p
    cdef char err[ERR_LEN]
    cdef rwkv_status status
    cdef list problems = []
    err[0] = 0
    with nogil:
        status = rwkv_verify_file(cp, verify_report, <void *>problems, err, ERR_LEN)
    if status != RWKV_OK:
        raise_status(status, err)
    return problems


def type_name(int type_id):
    cdef const char *name = rwkv_type_name(type_id)
    return None if name is NULL else name.decode()


def row_size(int type_id, int64_t n):
    """Bytes of a row of n elements, or 0 when n is not a whole number of blocks."""
    return rwkv_type_row_size(type_id, n)


def quantize_row(int type_id, const float[::1] src not None, uint8_t[::1] dst not None):
    cdef int64_t n = src.shape[0]
    if rwkv_type_row_size(type_id, n) == 0 or <size_t>dst.shape[0] < rwkv_type_row_size(type_id, n):
        raise ArgumentError(f"cannot encode {n} values as type {type_id} into {dst.shape[0]} bytes")
    with nogil:
        rwkv_quantize_row(type_id, &src[0], &dst[0], n)


def dequantize_row(int type_id, const uint8_t[::1] src not None, float[::1] dst not None):
    cdef int64_t n = dst.shape[0]
    if rwkv_type_row_size(type_id, n) == 0 or <size_t>src.shape[0] < rwkv_type_row_size(type_id, n):
        raise ArgumentError(f"cannot decode {n} values of type {type_id} from {src.shape[0]} bytes")
    with nogil:
        rwkv_dequantize_row(type_id, &src[0], &dst[0], n)


def matvec(int type_id, const uint8_t[::1] w not None, int64_t rows, const float[::1] x not None,
           float[::1] y not None):
    """y = W x with the kernels in use; W is rows x len(x) in type_id's row encoding."""
    cdef int64_t cols = x.shape[0]
    if rwkv_type_row_size(type_id, cols) == 0 or <size_t>w.shape[0] < rwkv_type_row_size(type_id, cols) * rows \
            or y.shape[0] < rows:
        raise ArgumentError("matvec: buffer sizes do not match")
    cdef rwkv_status status
    with nogil:
        status = rwkv_matvec(type_id, &w[0], rows, cols, &x[0], &y[0])
    if status != RWKV_OK:
        raise_status(status, b"", "matvec failed")


def matmul_rows(int type_id, const uint8_t[::1] w not None, int64_t rows, const float[:, ::1] x not None,
                float[:, ::1] y not None):
    """y = x W^T through the row kernels (batched decoding's product) with the kernels in use; W is
    rows x cols in type_id's row encoding, x is T x cols."""
    cdef int64_t T = x.shape[0], cols = x.shape[1]
    if rwkv_type_row_size(type_id, cols) == 0 or <size_t>w.shape[0] < rwkv_type_row_size(type_id, cols) * rows \
            or y.shape[0] != T or y.shape[1] != rows or T == 0:
        raise ArgumentError("matmul_rows: buffer sizes do not match")
    cdef rwkv_status status
    with nogil:
        status = rwkv_matmul_rows(type_id, &w[0], rows, cols, &x[0, 0], T, &y[0, 0])
    if status != RWKV_OK:
        raise_status(status, b"", "matmul_rows failed")


def matmul_f32(const float[:, ::1] w not None, const float[:, ::1] x not None, float[:, ::1] y not None):
    """y = x W^T through sequence mode's product and the micro-GEMM in use; W is rows x cols, x is T x cols."""
    cdef int64_t rows = w.shape[0], cols = w.shape[1], T = x.shape[0]
    if x.shape[1] != cols or y.shape[0] != T or y.shape[1] != rows or rows * cols * T == 0:
        raise ArgumentError("matmul_f32: shapes do not match or are empty")
    cdef rwkv_status status
    with nogil:
        status = rwkv_matmul_f32(&w[0, 0], rows, cols, &x[0, 0], T, &y[0, 0])
    if status != RWKV_OK:
        raise_status(status, b"", "matmul_f32 failed")


def kernel_level():
    return rwkv_kernel_level().decode()


def set_kernel_level(str name):
    if rwkv_set_kernel_level(name.encode()) != RWKV_OK:
        raise ArgumentError(f"kernel level {name!r} is unknown or not supported by this CPU")


def cpu_features():
    return rwkv_cpu_features().decode()


def read_bandwidth(int n_threads=0, size_t n_bytes=1 << 30):
    """Memory read bandwidth in GB/s, measured with the engine's thread pool."""
    cdef double gbps
    with nogil:
        gbps = rwkv_read_bandwidth(n_threads, n_bytes)
    if gbps <= 0:
        raise MemoryError(f"cannot allocate {n_bytes} bytes to measure bandwidth")
    return gbps


def fma_peak(int n_threads=0):
    """Multiply-add peak in GFLOP/s of the kernels in use, measured with the engine's thread pool."""
    if n_threads < 0 or n_threads > 4096:
        raise ValueError(f"n_threads must be 0 (one per core) to 4096, not {n_threads}")
    cdef double gflops
    with nogil:
        gflops = rwkv_fma_peak(n_threads)
    if gflops <= 0:
        raise MemoryError("cannot start the threads or allocate the memory to measure the multiply-add peak")
    return gflops
