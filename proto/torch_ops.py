"""The ATen operators a daemon runs for the PyTorch shim, by name: what both ends agree on.

An entry is an operator packet of the ``aten`` namespace (``add``, ``mm``, ``_foreach_mul_``);
all of its overloads are allowed (``add.Tensor``, ``add.Scalar``, ``add.out``). These compute
on tensors and numbers only. Left out on purpose: whatever reads or writes files
(``from_file``, ``save``), takes or hands out raw addresses or storages (``set_``,
``from_blob``-like constructors, ``data_ptr``, ``_copy_from``, ``resize_``, ``as_strided``,
which could reach outside a tensor's memory), runs Python or scripts, and the views (the
client works those out itself: they move no data). The client sends an operator outside this
list to none: it runs it on the host (copying its tensors there and back) and says so in
``gpupool.torch`` stats; the daemon refuses a name outside it with ``cudaErrorNotSupported``.

No torch import here: the daemon's front and the client import this without it.
"""

from __future__ import annotations

ELEMENTWISE = """
    abs abs_ neg neg_ sign sgn reciprocal reciprocal_ add add_ sub sub_ rsub mul mul_ div div_
    remainder remainder_ fmod fmod_ pow pow_ floor_divide floor_divide_ exp exp_ exp2 expm1 log
    log_ log2 log10 log1p sqrt sqrt_ rsqrt rsqrt_ sin cos tan asin acos atan atan2 sinh cosh
    tanh tanh_ floor ceil round trunc frac clamp clamp_ clamp_min clamp_min_ clamp_max
    clamp_max_ maximum minimum lerp lerp_ addcmul addcmul_ addcdiv addcdiv_ erf erfinv square
    eq ne lt le gt ge logical_and logical_or logical_not logical_xor bitwise_and bitwise_or
    bitwise_xor bitwise_not where isnan isinf isfinite nan_to_num sigmoid sigmoid_ logit xlogy
    hypot copysign signbit masked_fill masked_fill_ fill fill_ zero_ copy clone _to_copy
    lift_fresh_copy nextafter heaviside
""".split()

ACTIVATIONS = """
    relu relu_ threshold threshold_backward gelu gelu_backward silu silu_ silu_backward
    hardtanh hardtanh_ hardtanh_backward leaky_relu leaky_relu_ leaky_relu_backward elu elu_
    elu_backward softplus softplus_backward mish mish_backward hardsigmoid hardsigmoid_backward
    hardswish hardswish_backward sigmoid_backward tanh_backward _softmax _safe_softmax
    _softmax_backward_data
    _log_softmax _log_softmax_backward_data glu glu_backward prelu _prelu_kernel
    _prelu_kernel_backward
""".split()

REDUCTIONS = """
    sum mean prod amax amin max min argmax argmin all any var var_mean std std_mean norm
    linalg_vector_norm logsumexp cumsum cumsum_ cumprod sort topk count_nonzero aminmax
    _foreach_norm
""".split()

LINEAR_ALGEBRA = """
    mm bmm addmm addmm_ addbmm baddbmm matmul mv dot addmv outer _addmm_activation tril tril_
    triu triu_
""".split()

NETWORKS = """
    convolution convolution_backward _convolution native_layer_norm native_layer_norm_backward
    native_batch_norm native_batch_norm_backward _native_batch_norm_legit
    _native_batch_norm_legit_no_training _native_batch_norm_legit_functional native_group_norm
    native_group_norm_backward _fused_rms_norm _fused_rms_norm_backward max_pool2d_with_indices
    max_pool2d_with_indices_backward avg_pool2d avg_pool2d_backward _adaptive_avg_pool2d
    _adaptive_avg_pool2d_backward embedding embedding_dense_backward nll_loss_forward
    nll_loss_backward nll_loss2d_forward nll_loss2d_backward mse_loss mse_loss_backward l1_loss
    smooth_l1_loss smooth_l1_loss_backward huber_loss huber_loss_backward binary_cross_entropy
    binary_cross_entropy_backward binary_cross_entropy_with_logits native_dropout
    native_dropout_backward _scaled_dot_product_flash_attention_for_cpu
    _scaled_dot_product_flash_attention_for_cpu_backward upsample_nearest2d
    upsample_nearest2d_backward constant_pad_nd reflection_pad2d reflection_pad2d_backward
    im2col col2im
""".split()

SHAPES = """
    cat stack _unsafe_index index index_select index_add index_add_ index_copy index_copy_
    index_fill index_fill_ index_put index_put_ _index_put_impl_ gather scatter scatter_
    scatter_add scatter_add_ scatter_reduce scatter_reduce_ repeat flip roll new_zeros new_ones
    new_full new_empty_strided masked_scatter masked_scatter_ select_backward slice_backward
    diagonal_backward unfold_backward slice_scatter select_scatter
    diagonal_scatter _unsafe_view one_hot
""".split()

FACTORIES = """
    arange full zeros ones zeros_like ones_like full_like eye linspace scalar_tensor rand randn
    randint randperm rand_like randn_like randint_like uniform_ normal_ normal bernoulli
    bernoulli_ exponential_ random_ multinomial
""".split()

_FOREACH_NAMES = """
    add sub mul div addcmul addcdiv lerp sqrt neg exp maximum minimum pow reciprocal sign abs
    zero copy clamp_min clamp_max
""".split()

FOREACH = [f"_foreach_{name}{suffix}" for name in _FOREACH_NAMES for suffix in ("", "_")]

# The shim's own operators (not aten's): the session's random generator.
GPUPOOL = frozenset({"manual_seed"})

ATEN: frozenset[str] = frozenset(
    ELEMENTWISE
    + ACTIVATIONS
    + REDUCTIONS
    + LINEAR_ALGEBRA
    + NETWORKS
    + SHAPES
    + FACTORIES
    + FOREACH
)
