"""Tensor-core intrinsics and the tensor-core matmul schedule for the CUDA backend.

TVM 0.27 registers wmma (and mma.sync/ldmatrix) intrinsics for float16, int8 and float8 operands but none for
bfloat16, and dlight's tensor-core rule (`MatmulTensorization`) is hard-wired to float16. CUDA's `nvcuda::wmma` has
`__nv_bfloat16` fragments for m16n16k16 with float32 sums on sm_80 and newer (PTX `wmma.mma.sync...bf16.bf16.f32`),
and TVM's CUDA codegen prints `nv_bfloat16` fragments, so TVM's own intrinsic generators, given "bfloat16", make
working bf16 intrinsics: `register_tensor_intrinsics` registers them under our own names, and `tensorize_matmul` is
dlight's tensor-core schedule with the operand dtype as a parameter.
"""

from __future__ import annotations

import sys

# the smallest SM version whose tensor cores multiply each operand dtype (wmma m16n16k16, float32 sums)
TENSOR_CORE_SM = {"float16": 70, "bfloat16": 80}

BF16_WMMA = {
    "load_a": "tensorforge_wmma_load_16x16x16_bf16_a_shared_dyn",
    "load_b": "tensorforge_wmma_load_16x16x16_bf16_b_trans_shared_dyn",
    "compute": "tensorforge_wmma_sync_16x16x16_bf16bf16f32_trans",
}


def _stack_without_source(context: int = 1):
    import inspect

    frames, f = [], sys._getframe(1)
    while f is not None:
        frames.append(inspect.FrameInfo(f, f.f_code.co_filename, f.f_lineno, f.f_code.co_name, None, None))
        f = f.f_back
    return frames


def _without_source_lookup(fn):
    """Run `fn` with `inspect.stack` returning frames without source context.

    Each `T.prim_func` calls `inspect.stack()`, which looks up the module of every frame; during an import the stack
    holds importlib's frozen frames, whose lookup scans all of sys.modules (~2000 with torch): importing TVM's ~250
    CUDA intrinsics took 35-40 s. The parser uses the stack only to see whether the function sits in an
    `@I.ir_module` class (none do here), so frames without source context serve."""
    import inspect

    original = inspect.stack
    inspect.stack = _stack_without_source
    try:
        return fn()
    finally:
        inspect.stack = original


def load_tensor_intrinsics() -> None:
    """Register TVM's CUDA tensor-core intrinsics (wmma/mma) and our bfloat16 wmma intrinsics, once, fast."""
    if "tvm.s_tir.tensor_intrin.cuda" not in sys.modules:
        import importlib

        _without_source_lookup(lambda: importlib.import_module("tvm.s_tir.tensor_intrin.cuda"))
    _register_bf16()


def _register_bf16() -> None:
    from tvm.s_tir import TensorIntrin

    if TensorIntrin.get(BF16_WMMA["compute"], allow_missing=True) is not None:
        return
    from tvm.s_tir.tensor_intrin import cuda as tc

    def register():
        TensorIntrin.register(BF16_WMMA["load_a"],
                              *tc.get_wmma_load_intrin(16, 16, 16, "bfloat16", "shared.dyn", False, False))
        TensorIntrin.register(BF16_WMMA["load_b"],
                              *tc.get_wmma_load_intrin(16, 16, 16, "bfloat16", "shared.dyn", True, True))
        TensorIntrin.register(BF16_WMMA["compute"],
                              *tc.get_wmma_sync_intrin(16, 16, 16, "bfloat16", "float32", True))

    _without_source_lookup(register)


def wmma_intrin_group(in_dtype: str, out_dtype: str) -> dict[str, str] | None:
    """The wmma intrinsics (init, load_a, load_b, compute, store) for operands `in_dtype` and sums `out_dtype`, with
    operands staged in dynamic shared memory and B read transposed (C[i, j] += A[i, k] * B[j, k]); None where the
    tensor cores have no such product (bfloat16 with float16 sums)."""
    from tvm.s_tir.tensor_intrin.cuda import get_wmma_intrin_group

    if in_dtype == "float16":
        return get_wmma_intrin_group("shared.dyn", "shared.dyn", "float16", out_dtype, trans_b=True)
    if in_dtype == "bfloat16" and out_dtype == "float32":
        # fill and store act on the float32 accumulator: TVM's own serve
        group = get_wmma_intrin_group("shared.dyn", "shared.dyn", "float16", "float32", trans_b=True)
        return {**group, **BF16_WMMA}
    return None


def tensorize_matmul(func, in_dtype: str):
    """dlight's `MatmulTensorization` (TVM 0.27, s_tir/dlight/gpu/matmul.py) with the operand dtype as a parameter:
    the matmul normalized to C[S, I, J] += A[S, I, K] * B[S, J, K], padded to whole tiles, 128x128 block tiles of
    16x16x16 wmma fragments over 4x2 warps, operands staged in shared memory (double-buffered, software-pipelined),
    float32 sums (float16 sums where the kernel's output is float16 and in_dtype is float16). Returns a Schedule, or
    None where the function is not such a matmul."""
    from tvm import s_tir
    from tvm.s_tir.dlight.analysis import get_root_block
    from tvm.s_tir.dlight.gpu.matmul import (auto_inline_consumer_chain, auto_inline_producers, get_index_map,
                                              get_reduction_blocks)

    load_tensor_intrinsics()
    sch = s_tir.Schedule(func)
    if "dlight.do_not_tensorize" in func.attrs.keys():
        return None
    reduction_blocks = get_reduction_blocks(sch, sch.get_child_blocks(get_root_block(sch)))
    if reduction_blocks is None:
        return None

    micro_size_x = micro_size_y = micro_size_k = 16
    warp_size, vector_size = 32, 4
    i_factors, j_factors, k_factors = [None, 1, 4, 2], [1, None, 4, 2], [None, 4]
    num_ty = i_factors[2] * j_factors[2]
    x_pad_factor = i_factors[2] * i_factors[3]
    y_pad_factor = j_factors[2] * j_factors[3]
    k_pad_factor = k_factors[1]

    # Step 1. Normalize the generic matmul to C[S, I, J] += A[S, I, K] * B[S, J, K]
    main_block = reduction_blocks[0]
    reindex_a = sch.reindex(main_block, ("read", 0))
    reindex_b = sch.reindex(main_block, ("read", 1))
    reindex_c = sch.reindex(main_block, ("write", 0))
    index_maps = get_index_map(sch.get(main_block))
    if index_maps is None:
        return None
    matmul_index_map, a_index_map, b_index_map, c_index_map = index_maps
    sch.transform_layout(reindex_a, ("write", 0), a_index_map)
    sch.transform_layout(reindex_b, ("write", 0), b_index_map)
    sch.transform_layout(reindex_c, ("read", 0), c_index_map)
    sch.transform_block_layout(main_block, matmul_index_map)

    # Step 2. Pad to whole tiles
    sch.pad_einsum(main_block, [1, micro_size_x * x_pad_factor, micro_size_y * y_pad_factor,
                                micro_size_k * k_pad_factor])

    # Step 3. Tile for the tensor cores
    block = main_block
    batch, i, j, k = sch.get_loops(block)
    i, i_inner = sch.split(i, factors=[None, micro_size_x])
    j, j_inner = sch.split(j, factors=[None, micro_size_y])
    k, k_inner = sch.split(k, factors=[None, micro_size_k])
    sch.reorder(i, j, k, i_inner, j_inner, k_inner)
    block_inner = block
    block_outer = sch.blockize(i_inner)

    i0, i1, i2, i3 = sch.split(i, factors=i_factors)
    j0, j1, j2, j3 = sch.split(j, factors=j_factors)
    k0, k1 = sch.split(k, k_factors)
    sch.annotate(k0, "software_pipeline_order", [0, 3, 1, 4, 5, 2, 6])
    sch.annotate(k0, "software_pipeline_stage", [0, 0, 0, 0, 0, 1, 1])
    sch.annotate(k1, "software_pipeline_order", [0, 1, 2])
    sch.annotate(k1, "software_pipeline_stage", [0, 0, 1])
    sch.reorder(i0, j0, i1, j1, j2, i2, k0, k1, i3, j3)

    block_idx = sch.fuse(i0, j0)
    block_idy = sch.fuse(i1, j1)
    thread_idy = sch.fuse(j2, i2)
    sch.bind(batch, "blockIdx.z")
    sch.bind(block_idx, "blockIdx.x")
    sch.bind(block_idy, "blockIdx.y")
    sch.bind(thread_idy, "threadIdx.y")

    def fetch_to_shared(block, idx, ndim):
        block_read = sch.cache_read(block, idx, "shared.dyn")
        sch.compute_at(block_read, k0)
        fused = sch.fuse(*sch.get_loops(block_read)[-ndim:])
        _, f_1, f_2, f_3 = sch.split(fused, factors=[None, num_ty, warp_size, vector_size])
        sch.bind(f_2, "threadIdx.x")
        sch.bind(f_1, "threadIdx.y")
        sch.vectorize(f_3)
        sch.storage_align(block_read, 0, axis=-2, factor=16, offset=8)
        sch.annotate(block_read, "tirx.manifest_shared_memory_local_stage", 1)
        sch.annotate(block_read, "double_buffer_scope", 0)
        return block_read

    a_g2s = fetch_to_shared(block_outer, 0, 2)
    b_g2s = fetch_to_shared(block_outer, 1, 2)
    auto_inline_producers(sch, a_g2s)  # the operands' prologues (casts, padding, transposes) load into shared
    auto_inline_producers(sch, b_g2s)

    a_mat = sch.cache_read(block_outer, 0, "wmma.matrix_a")
    b_mat = sch.cache_read(block_outer, 1, "wmma.matrix_b")
    sch.compute_at(a_mat, k1)
    sch.compute_at(b_mat, k1)
    accumulator_shared_to_global = sch.cache_write(block_outer, 0, "shared.dyn")
    sch.storage_align(accumulator_shared_to_global, 0, -2, 16, 4)
    store = sch.cache_write(block_outer, 0, "wmma.accumulator")
    sch.reverse_compute_at(store, thread_idy)
    sch.reverse_compute_at(accumulator_shared_to_global, thread_idy)
    i, j = sch.get_loops(store)[-2:]
    i0, i1 = sch.split(i, factors=[None, 16])
    j0, j1 = sch.split(j, factors=[None, 16])
    sch.reorder(i0, j0, i1, j1)
    block_init_c = sch.decompose_reduction(block_outer, k0)
    block_init_c_inner = sch.get_child_blocks(block_init_c)[0]

    # Step 4. Tensorize: operand loads, then init/store/compute with float32 sums (float16 sums as a fallback)
    group = wmma_intrin_group(in_dtype, "float32")
    try:
        for mat, intrin in ((a_mat, group["load_a"]), (b_mat, group["load_b"])):
            i, j = sch.get_loops(mat)[-2:]
            i0, i1 = sch.split(i, factors=[None, 16])
            j0, j1 = sch.split(j, factors=[None, 16])
            sch.reorder(i0, j0, i1, j1)
            sch.unroll(i0)
            sch.unroll(j0)
            sch.tensorize(i1, intrin)
    except Exception:  # e.g. the operand's dtype is not in_dtype
        return None

    def tensorize_init_store_compute(group):
        sch.tensorize(sch.get_loops(block_init_c_inner)[-2], group["init"])
        sch.tensorize(sch.get_loops(store)[-2], group["store"])
        sch.tensorize(sch.get_loops(block_inner)[-3], group["compute"])

    try:
        tensorize_init_store_compute(group)
    except Exception:
        group = wmma_intrin_group(in_dtype, "float16")
        if group is None:
            return None
        try:
            tensorize_init_store_compute(group)
        except Exception:
            return None
    auto_inline_consumer_chain(sch, accumulator_shared_to_global)
    fused = sch.fuse(*sch.get_loops(accumulator_shared_to_global)[-2:])
    _, f1, f2 = sch.split(fused, factors=[None, warp_size, vector_size])
    sch.bind(f1, "threadIdx.x")
    sch.vectorize(f2)
    return sch
